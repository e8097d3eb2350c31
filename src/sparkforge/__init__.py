"""sparkforge: reproducible source builds of GPU wheels for NVIDIA DGX Spark.

The library API (:mod:`sparkforge.api`) is loaded on first use, so that importing the
package (and ``sparkforge --help``) stays fast::

    import sparkforge
    outcome = sparkforge.build("sm121-probe", "hopper", cuda_archs=("121",))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sparkforge.api import Outcome, Run, Settings, build, build_all, inspect, lock, plan

__all__ = ["Outcome", "Run", "Settings", "__version__", "build", "build_all", "inspect", "lock",
           "plan"]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from sparkforge import api

        return getattr(api, name)
    raise AttributeError(f"module 'sparkforge' has no attribute {name!r}")
