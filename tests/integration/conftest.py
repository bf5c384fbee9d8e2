"""The study-loop harness (a real MariaDB, a fake API server) for every integration test of the loop."""

from tests.integration.test_study_loop import harness, settings  # noqa: F401 (fixtures)
