"""The catalogue of bad inputs: each gives one clear line on stderr, a non-zero
exit and leaves the wheelhouse exactly as it was."""

from __future__ import annotations

import http.server
import re
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import CliRunner, snapshot

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once

Edit = Callable[[Path], None]


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _recipe(project: Path) -> Path:
    return project / "recipes" / "tiny" / "recipe.toml"


def _add_patch(project: Path, body: str, name: str = "0001-fix.patch") -> None:
    series = project / "patches" / "tiny" / "1.0.0"
    series.mkdir(parents=True, exist_ok=True)
    (series / name).write_text(body)
    (series / "series").write_text(name + "\n")


BAD_HUNK = """\
Why: test a patch that no longer applies.
Drop-when: never.

--- a/sf_tiny/__init__.py
+++ b/sf_tiny/__init__.py
@@ -1,2 +1,2 @@
 \"\"\"something else\"\"\"
-VALUE = 41
+VALUE = 40
"""

NO_HEADER = """\
--- a/sf_tiny/__init__.py
+++ b/sf_tiny/__init__.py
@@ -1,2 +1,2 @@
 \"\"\"tiny\"\"\"
-VALUE = 42
+VALUE = 40
"""

CASES: dict[str, tuple[Edit, list[str], str]] = {
    "malformed recipe TOML": (
        lambda p: _recipe(p).write_text(_recipe(p).read_text() + "\n[build\n"),
        ["build", "tiny"],
        r"recipes/tiny/recipe\.toml: malformed TOML",
    ),
    "unknown recipe key": (
        lambda p: _replace(_recipe(p), "[build]\n", "[build]\ncomand = []\n"),
        ["build", "tiny"],
        r"recipe\.toml: key 'build\.comand': unknown key; remove it or check its spelling",
    ),
    "wrong type": (
        lambda p: _replace(_recipe(p), "memory_per_job_gb = 0.5", 'memory_per_job_gb = "lots"'),
        ["build", "tiny"],
        r"recipe\.toml: key 'memory_per_job_gb': input should be a valid number",
    ),
    "missing field": (
        lambda p: _replace(_recipe(p), 'dist = "sf-tiny"\n', ""),
        ["build", "tiny"],
        r"recipe\.toml: key 'dist': missing required key",
    ),
    "bad template variable": (
        lambda p: _replace(_recipe(p), "{python} -m pip", "{pyhton} -m pip"),
        ["build", "tiny"],
        r"key 'build\.command': unknown template variable '\{pyhton\}'; known: ",
    ),
    "missing lock entry": (
        lambda p: (p / "lock.toml").write_text("format = 1\n"),
        ["build", "tiny"],
        r"lock\.toml: no lock entry for tiny 1\.0\.0; run `nox -s lock -- tiny`",
    ),
    "stale lock (requirements changed)": (
        lambda p: _replace(_recipe(p), "flit_core==3.12.0", "flit_core==3.11.0"),
        ["build", "tiny"],
        r"lock entry for tiny 1\.0\.0 is stale .*; run `nox -s lock -- tiny`",
    ),
    "stale lock (source tree changed)": (
        lambda p: (p / "tiny-src" / "CHANGES.txt").write_text("edited\n"),
        ["build", "tiny"],
        r"lock entry for tiny 1\.0\.0 is stale \(.*tiny-src changed",
    ),
    "lock names a branch, not a commit": (
        lambda p: _replace(
            p / "lock.toml",
            'kind = "path"',
            'kind = "git"\ngit = "https://example.invalid/x"\ncommit = "main"',
        ),
        ["build", "tiny"],
        r"lock\.toml: key '.*source': commit 'main' is not a 40-hex commit SHA",
    ),
    "patch without why/drop-when header": (
        lambda p: _add_patch(p, NO_HEADER),
        ["build", "tiny"],
        r"0001-fix\.patch: header lacks 'Why:' and 'Drop-When:'",
    ),
    "patch not listed in the series": (
        lambda p: (
            _add_patch(p, BAD_HUNK),
            (p / "patches/tiny/1.0.0/0002-extra.patch").write_text(BAD_HUNK),
        ),
        ["build", "tiny"],
        r"series: 0002-extra\.patch is in .* but not in the series",
    ),
    "patch changed since it was locked": (
        lambda p: _add_patch(p, BAD_HUNK),
        ["build", "tiny"],
        r"0001-fix\.patch: sha256 [0-9a-f]{12}… differs from .*lock\.toml",
    ),
    "no nvcc": (
        lambda p: (p / "targets" / "nocuda.toml").write_text(
            (p / "targets" / "hopper.toml")
            .read_text()
            .replace('"hopper"', '"nocuda"')
            .replace('cuda_home = "/usr/local/cuda"', 'cuda_home = "/opt/no-cuda-here"')
        ),
        ["build", "tiny", "--target", "nocuda"],
        r"nocuda\.toml: key 'cuda_home': no nvcc at /opt/no-cuda-here/bin/nvcc",
    ),
    "nvcc of another CUDA version": (
        lambda p: (p / "targets" / "cuda12.toml").write_text(
            (p / "targets" / "hopper.toml")
            .read_text()
            .replace('"hopper"', '"cuda12"')
            .replace('cuda_version = "13.0"', 'cuda_version = "12.8"')
        ),
        ["build", "tiny", "--target", "cuda12"],
        r"key 'cuda_version': target needs CUDA 12\.8 but .*nvcc is 13\.0",
    ),
    "host cannot build the target": (
        lambda p: None,
        ["build", "tiny", "--target", "dgx-spark"],
        r"--target dgx-spark: the host runner on this x86_64 machine cannot build linux_aarch64 wheels",
    ),
    "unknown target": (
        lambda p: None,
        ["build", "tiny", "--target", "gb300"],
        r"no target 'gb300'.*known targets: dgx-spark, hopper",
    ),
    "unknown recipe": (
        lambda p: None,
        ["build", "pytorch"],
        r"no recipe 'pytorch'.*known recipes: sm121-probe, tiny",
    ),
    "unknown version": (
        lambda p: None,
        ["build", "tiny", "--version", "9.9"],
        r"recipe 'tiny' has no version '9\.9'; known: 1\.0\.0",
    ),
    "bad --cuda-arch": (
        lambda p: None,
        ["build", "tiny", "--cuda-arch", "sm_12x"],
        r"--cuda-arch: 'sm_12x' is not a CUDA architecture",
    ),
    "unknown option": (
        lambda p: None,
        ["build", "tiny", "--turbo"],
        r"unrecognized arguments: --turbo",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input(case: str, cli: CliRunner, tiny: Path, shared_workspace: Path) -> None:
    edit, argv, message = CASES[case]
    before = snapshot(tiny / "wheelhouse")
    edit(tiny)
    target = [] if "--target" in argv else ["--target", "hopper"]
    result = cli(*argv, *target, "--project", tiny, "--workspace", shared_workspace)
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.out + result.err
    assert snapshot(tiny / "wheelhouse") == before


def test_patch_that_does_not_apply_names_file_and_hunk(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    _add_patch(tiny, BAD_HUNK)
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    result = cli(
        "build", "tiny", "--target", "hopper", "--project", tiny, "--workspace", shared_workspace
    )
    assert result.code == 2
    line = result.err.strip()
    assert re.search(
        r"0001-fix\.patch: hunk '-1,2 \+1,2' in sf_tiny/__init__\.py does not apply to tiny 1\.0\.0",
        line,
    ), line
    assert not (tiny / "wheelhouse").exists()


def test_name_clash_in_wheelhouse_is_refused(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    common = ["--target", "hopper", "--project", tiny, "--workspace", shared_workspace]
    assert cli("build", "tiny", *common).code == 0
    before = snapshot(tiny / "wheelhouse")
    _replace(tiny / "tiny-src" / "sf_tiny" / "__init__.py", "VALUE = 42", "VALUE = 43")
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    result = cli("build", "tiny", *common)
    assert result.code != 0
    assert re.search(
        r"sf_tiny-1\.0\.0-py3-none-any\.whl already exists with different content", result.err
    ), result.err
    assert snapshot(tiny / "wheelhouse") == before


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def _tar(source: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz") as archive:
        archive.add(source, arcname="sf-tiny-1.0.0")


def test_archive_sha256_mismatch_is_refused(
    cli: CliRunner,
    tiny: Path,
    tmp_path: Path,
    archive_server: tuple[str, Path],
    shared_workspace: Path,
) -> None:
    url, served = archive_server
    _tar(tiny / "tiny-src", served / "sf-tiny-1.0.0.tar.gz")
    _replace(_recipe(tiny), 'path = "tiny-src"', f'url = "{url}/sf-tiny-{{version}}.tar.gz"')
    workspace = tmp_path / "ws"
    assert cli("lock", "tiny", "--project", tiny, "--workspace", workspace).code == 0
    common = ["--target", "hopper", "--project", tiny, "--workspace", workspace]
    built = cli("build", "tiny", *common)
    assert built.code == 0, built.err
    before = snapshot(tiny / "wheelhouse")

    (tiny / "tiny-src" / "CHANGES.txt").write_text("tampered\n")
    _tar(tiny / "tiny-src", served / "sf-tiny-1.0.0.tar.gz")
    shutil.rmtree(workspace / "downloads")
    result = cli("build", "tiny", *common, "--force")
    assert result.code == 2
    assert re.search(
        r"sha256 mismatch for http://127\.0\.0\.1:\d+/sf-tiny-1\.0\.0\.tar\.gz: lock says [0-9a-f]{64}, got [0-9a-f]{64}",
        result.err,
    ), result.err
    assert snapshot(tiny / "wheelhouse") == before
    assert not list((workspace / "downloads").rglob("*.tar.gz")), "the bad download is not kept"
