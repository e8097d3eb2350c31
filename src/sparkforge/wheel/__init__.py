"""Stage 5, wheel: repair, normalize, read the CUDA code in, and audit a built wheel."""
