"""Fault injection for crash-safety tests.

Setting ``SPARKFORGE_FAULT_INJECT=<point>`` makes the process kill itself with
SIGKILL when it reaches that point, exactly as ``kill -9`` would. Points:
``phase:<name>`` at the start of each build phase, ``download:partial`` after
the first block of a download, ``env:partial`` after a build venv is created
and before its requirements are installed, ``store:copying`` after the first MiB
of a wheel is copied into the wheelhouse (its temporary file), ``publish:stored`` after
a wheel is stored and before the index is regenerated, ``index:written`` after a new index
generation is written and before it is swapped in, ``publish:sent-<N>`` after
``sparkforge publish`` sent and verified its Nth wheel. Unset, this costs one
environment lookup per point.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "SPARKFORGE_FAULT_INJECT"


def point(name: str) -> None:
    """Die here, as by ``kill -9``, if the fault-injection variable names this point."""
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
