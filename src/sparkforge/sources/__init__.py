"""Stage 3, sources: a verified source tree from the lock, with the patch series applied."""
