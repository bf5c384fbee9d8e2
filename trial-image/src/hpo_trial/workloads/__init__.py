"""Ready-made objectives a study can run without shipping code; ``digits`` is the default workload."""
