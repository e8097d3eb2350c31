"""Crash safety: the pipeline killed with SIGKILL at each point of a build leaves
the wheelhouse and its index valid, and the next run finishes. Also: two runs on
one workspace never interleave."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from conftest import hrefs

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once

KILL_POINTS = [
    "phase:sources", "phase:patches", "env:partial", "phase:build", "phase:repair",
    "phase:normalize", "phase:audit", "phase:publish", "publish:stored", "index:written",
]  # fmt: skip


def check_wheelhouse(root: Path) -> list[str]:
    """Everything wrong with a wheelhouse: [] when it is valid for pip."""
    problems: list[str] = []
    files = root / "files"
    for wheel in files.glob("*.whl") if files.is_dir() else []:
        try:
            with zipfile.ZipFile(wheel) as archive:
                if archive.testzip() is not None:
                    problems.append(f"corrupt member in {wheel.name}")
        except zipfile.BadZipFile:
            problems.append(f"partial or corrupt wheel visible: {wheel.name}")
    simple = root / "simple"
    if not simple.exists():
        return problems + (
            [f"wheels but no index in {root}"]
            if files.is_dir() and any(files.glob("*.whl"))
            else []
        )
    listed: set[str] = set()
    for page in simple.glob("*/index.html"):
        for href in hrefs(page.read_text()):
            path, _, fragment = href.partition("#")
            url = urljoin((simple / page.parent.name).as_uri() + "/", path)
            target = Path(unquote(urlparse(url).path))
            listed.add(target.name)
            if not target.is_file():
                problems.append(f"{page}: lists {target.name}, which does not exist")
            elif fragment != "sha256=" + hashlib.sha256(target.read_bytes()).hexdigest():
                problems.append(f"{page}: hash of {target.name} does not match")
        json.loads((page.parent / "index.json").read_text())
    return problems


def _build(tiny: Path, workspace: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparkforge.cli", "build", "tiny", "--target", "hopper",
         "--project", str(tiny), "--workspace", str(workspace)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_each_point_leaves_a_valid_wheelhouse(
    tiny: Path, tmp_path: Path, point: str
) -> None:
    workspace = tmp_path / "ws"
    # A wheel from an earlier build is already there, so an index exists to be damaged.
    assert _build(tiny, workspace, dict(os.environ)).returncode == 0
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("[build]", '[build]\nlocal_version = "k1"'))
    shutil.rmtree(workspace / "envs")  # so the build venv is made again (env:partial)
    killed = _build(tiny, workspace, {**os.environ, "SPARKFORGE_FAULT_INJECT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert check_wheelhouse(tiny / "wheelhouse") == []
    rerun = _build(tiny, workspace, dict(os.environ))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert check_wheelhouse(tiny / "wheelhouse") == []
    assert (tiny / "wheelhouse" / "files" / "sf_tiny-1.0.0+k1-py3-none-any.whl").is_file()


def test_kill_during_a_download_keeps_no_partial_file(tiny: Path, tmp_path: Path) -> None:
    import http.server
    import tarfile
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (tiny / "tiny-src" / "padding.bin").write_bytes(os.urandom(1 << 20))  # more than one block
    with tarfile.open(served / "sf-tiny-1.0.0.tar.gz", "w:gz") as archive:
        archive.add(tiny / "tiny-src", arcname="sf-tiny-1.0.0")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        recipe = tiny / "recipes" / "tiny" / "recipe.toml"
        url = f"http://127.0.0.1:{server.server_address[1]}/sf-tiny-{{version}}.tar.gz"
        recipe.write_text(recipe.read_text().replace('path = "tiny-src"', f'url = "{url}"'))
        workspace = tmp_path / "ws"
        lock = subprocess.run([sys.executable, "-m", "sparkforge.cli", "lock", "tiny", "--project", str(tiny),
                               "--workspace", str(workspace)], capture_output=True, text=True)  # fmt: skip
        assert lock.returncode == 0, lock.stderr
        shutil.rmtree(workspace / "downloads")
        killed = _build(
            tiny, workspace, {**os.environ, "SPARKFORGE_FAULT_INJECT": "download:partial"}
        )
        assert killed.returncode == -signal.SIGKILL
        assert not list((workspace / "downloads").rglob("*.tar.gz")), (
            "no partial archive under its real name"
        )
        assert _build(tiny, workspace, dict(os.environ)).returncode == 0
    finally:
        server.shutdown()


def test_second_run_on_the_same_workspace_waits_or_fails(tiny: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    import fcntl

    with (workspace / ".lock").open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("sparkforge pid 4242")
        handle.flush()
        args = [sys.executable, "-m", "sparkforge.cli", "build", "tiny", "--target", "hopper",
                "--project", str(tiny), "--workspace", str(workspace)]  # fmt: skip
        refused = subprocess.run([*args, "--no-wait"], capture_output=True, text=True)
        assert refused.returncode == 2
        assert re.search(
            r"workspace in use by sparkforge pid 4242; wait for it to finish", refused.stderr
        )
        waiting = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        # Release the workspace only once the second run says it waits (however long its
        # start-up takes on a loaded machine): the order is observed, not assumed.
        assert waiting.stdout is not None
        seen: list[str] = []
        for line in waiting.stdout:
            seen.append(line)
            if "waiting for sparkforge pid 4242 to finish" in line:
                break
        assert waiting.poll() is None, "it waits while the workspace is held: " + "".join(seen)
        fcntl.flock(handle, fcntl.LOCK_UN)
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, "".join(seen) + out
    assert any("waiting for sparkforge pid 4242 to finish" in line for line in seen)
