"""Trial runtime: runs the user's objective for the trial the operator assigned."""
