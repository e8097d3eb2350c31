"""Stage 2, lock: the lock file and the procedure that pins every input by content."""
