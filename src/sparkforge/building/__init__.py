"""Stage 4, build: the plan (what to build, its key) and the runners that run it."""
