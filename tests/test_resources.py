"""Resource faults: a full disk, a compiler killed by the out-of-memory killer, a
build past its time limit. Each is one line that names the knob to turn."""

from __future__ import annotations

import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from conftest import CliRunner, one_error_line, snapshot

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once


def _command(tiny: Path, python_code: str) -> None:
    """Make the tiny recipe run ``python_code`` before its real build command."""
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    data = tomllib.loads(recipe.read_text())
    data["build"]["command"].insert(0, '{python} -c "' + python_code + '"')
    recipe.write_text(tomli_w.dumps(data))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs: the workspace lives there and fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_the_build(cli: CliRunner, tiny: Path, small_disk: Path) -> None:
    _command(tiny, "open('fill.bin', 'wb').write(bytes(200 * 2**20))")
    before = snapshot(tiny / "wheelhouse")
    result = cli(
        "build", "tiny", "--target", "hopper", "--project", tiny, "--workspace", small_disk / "ws"
    )
    one_error_line(
        result,
        r"tiny 1\.0\.0: `.*python …` ran out of disk space \([\d.]+ GB free in .*\); free space or point --workspace at a larger disk .*key 'disk_gb'",
        code=1,
    )
    assert snapshot(tiny / "wheelhouse") == before


def test_compiler_killed_by_the_oom_killer(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    _command(
        tiny,
        "import os, signal; print('c++: fatal error: Killed signal terminated program cc1plus', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
    )
    result = cli(
        "build", "tiny", "--target", "hopper", "--project", tiny, "--workspace", shared_workspace
    )
    one_error_line(
        result,
        r"was killed \(signal 9\), most likely by the out-of-memory killer with \d+ jobs; raise 'memory_per_job_gb' in .*recipe\.toml \(now 0\.5\) or pass --jobs \d+",
        code=1,
    )
    assert not (tiny / "wheelhouse").exists()


def test_build_past_its_time_limit(
    cli: CliRunner, tiny: Path, shared_workspace: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "grandchild-alive"
    _command(
        tiny,
        f"import subprocess, time; subprocess.Popen(['sh', '-c', 'sleep 4; touch {marker}']); time.sleep(120)",
    )
    started = time.monotonic()
    result = cli("build", "tiny", "--target", "hopper", "--project", tiny, "--workspace", shared_workspace,
                 "--time-limit", "3")  # fmt: skip
    one_error_line(
        result,
        r"tiny 1\.0\.0: the build exceeded its time limit of 3 s and was stopped; raise --time-limit",
        code=1,
    )
    assert time.monotonic() - started < 60
    time.sleep(5)
    assert not marker.exists(), "the whole process group was stopped, grandchildren too"
