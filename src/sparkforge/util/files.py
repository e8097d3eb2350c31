"""Files written whole or not at all, written once for every stage: a temporary file
beside the target (same filesystem), fsync, then one rename (or a link, which never
replaces). A crash or an error leaves the old file, or none, never half of one.
And :func:`exclusive`, an advisory lock for a read-modify-write of a shared file."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_CHUNK = 1 << 20


@contextmanager
def temp_beside(target: Path) -> Iterator[Path]:
    """A temporary name in ``target``'s directory, removed afterwards unless renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(descriptor)
    temp = Path(name)
    try:
        temp.chmod(0o644)
        yield temp
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_output(target: Path) -> Iterator[IO[bytes]]:
    """A file to write that replaces ``target`` only if the body finishes without error."""
    with temp_beside(target) as temp:
        with temp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)


def write_atomic(target: Path, data: bytes) -> None:
    """``data`` into ``target``, whole or not at all."""
    with atomic_output(target) as handle:
        handle.write(data)


def copy_atomic(source: Path, target: Path) -> Path:
    with atomic_output(target) as handle, source.open("rb") as reader:
        shutil.copyfileobj(reader, handle, _CHUNK)
    return target


@contextmanager
def exclusive(path: Path, note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the block: one
    read-modify-write of a shared file at a time (lock.toml, for one). ``note`` hears
    once that another holder is being waited for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if note is not None:
                note(f"waiting for another run that holds {path} …")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
