"""Stage 7, verify: smoke tests, reproducibility, install checks, preflight and doctor."""
