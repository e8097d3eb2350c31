"""sparkforge: reproducible source builds of GPU wheels for NVIDIA DGX Spark."""

__version__ = "0.1.0"
