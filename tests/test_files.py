"""Files written whole or not at all, and one lock.toml writer at a time."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from conftest import REPO
from sparkforge.locking.lockfile import read_lock, updating
from sparkforge.util.files import atomic_output, write_atomic


def test_an_error_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("stopped halfway")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _pin(lock_path: str, ref: str, hold: float) -> None:
    with updating(Path(lock_path)) as lock:
        time.sleep(hold)  # a slow resolve: the other writer must wait, not overwrite
        lock.builder[ref] = "sha256:" + ref[-1] * 64


def test_two_writers_at_once_keep_both_entries(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock.toml"
    lock_path.write_bytes((REPO / "lock.toml").read_bytes())
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_pin, args=(str(lock_path), f"localhost/base:{n}", 1.0))
               for n in (1, 2)]  # fmt: skip
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    assert set(read_lock(lock_path).builder) >= {"localhost/base:1", "localhost/base:2"}


def test_an_error_inside_writes_nothing(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock.toml"
    lock_path.write_bytes((REPO / "lock.toml").read_bytes())
    before = lock_path.read_bytes()
    with pytest.raises(KeyError), updating(lock_path) as lock:
        lock.builder["localhost/base:9"] = "sha256:" + "9" * 64
        raise KeyError("a recipe failed to lock")
    assert lock_path.read_bytes() == before
