"""sm121-probe: a tiny CUDA extension that proves the toolchain and GPU work.

Build it first on an NVIDIA DGX Spark (GB10, compute capability 12.1); then
run ``recipes/sm121-probe/smoke.py`` to check it on the GPU.
"""

from ._core import (
    built_archs,
    cuda_init_error,
    device_count,
    device_info,
    kernel_arch,
    saxpy,
    sum_squares,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "built_archs",
    "cuda_init_error",
    "device_count",
    "device_info",
    "kernel_arch",
    "saxpy",
    "sum_squares",
]
