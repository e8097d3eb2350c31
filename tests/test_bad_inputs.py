"""The catalogue of bad inputs: each gives one clear line on stderr, a non-zero
exit and leaves the wheelhouse exactly as it was."""

from __future__ import annotations

import http.server
import re
import shutil
import tarfile
import threading
import tomllib
import zipfile
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

WHY_IN_A_SENTENCE = """\
This explains why: nothing, since no line starts with the key.
Drop-when: never.

--- a/sf_tiny/__init__.py
+++ b/sf_tiny/__init__.py
@@ -1,2 +1,2 @@
 \"\"\"tiny\"\"\"
-VALUE = 42
+VALUE = 40
"""


def _target_variant(name: str, old: str = "", new: str = "") -> Edit:
    """``targets/<name>.toml``: hopper's file renamed to ``name``, ``old`` replaced by ``new``."""

    def edit(project: Path) -> None:
        text = (project / "targets" / "hopper.toml").read_text()
        text = text.replace('name = "hopper"', f'name = "{name}"')
        assert old in text, f"{old!r} not in hopper.toml"
        (project / "targets" / f"{name}.toml").write_text(text.replace(old, new, 1))

    return edit


def _series(project: Path, text: str | bytes) -> None:
    """A patch series for tiny 1.0.0 holding one good-header patch, listed as ``text`` says."""
    _add_patch(project, BAD_HUNK)
    series = project / "patches" / "tiny" / "1.0.0" / "series"
    series.write_bytes(text if isinstance(text, bytes) else text.encode())


def _tiny_lock_value(project: Path, key: str) -> str:
    """The value of ``key`` in tiny 1.0.0's locked source (it is unique in the lock)."""
    lock = tomllib.loads((project / "lock.toml").read_text())
    value: str = lock["recipes"]["tiny"]["1.0.0"]["source"][key]
    return value


def _lock_without_tree_hash(project: Path) -> None:
    line = f'tree_sha256 = "{_tiny_lock_value(project, "tree_sha256")}"\n'
    _replace(project / "lock.toml", line, "")


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
        r"no recipe 'pytorch'.*known recipes: .*sm121-probe, tiny, torch",
    ),
    "unknown version": (
        lambda p: None,
        ["build", "tiny", "--version", "9.9"],
        r"recipe 'tiny' has no version '9\.9'; known: 1\.0\.0 \(its source is a path: only the "
        r"versions it lists exist\)",
    ),
    "bad --cuda-arch": (
        lambda p: None,
        ["build", "tiny", "--cuda-arch", "sm_12x"],
        r"--cuda-arch: 'sm_12x' is not a CUDA architecture",
    ),
    "--cuda-arch CUDA cannot build": (
        lambda p: None,
        ["build", "tiny", "--cuda-arch", "999", "--dry-run"],
        r"--cuda-arch: CUDA 13\.0 cannot build sm_999 \(it builds sm_75, .*sm_121; 'a' variants",
    ),
    "--cuda-arch variant nvcc refuses": (
        lambda p: None,
        ["build", "tiny", "--cuda-arch", "90f", "--dry-run"],
        r"--cuda-arch: CUDA 13\.0 cannot build sm_90f",
    ),
    "unknown option": (
        lambda p: None,
        ["build", "tiny", "--turbo"],
        r"unrecognized arguments: --turbo",
    ),
    # --- targets ---
    "target with an unknown key": (
        _target_variant("extra", "cuda_home =", 'colour = "red"\ncuda_home ='),
        ["build", "tiny", "--target", "extra"],
        r"targets/extra\.toml: key 'colour': unknown key; remove it or check its spelling",
    ),
    "manylinux policy for another platform": (
        _target_variant(
            "mixed", 'manylinux = "manylinux_2_35_x86_64"', 'manylinux = "manylinux_2_39_aarch64"'
        ),
        ["build", "tiny", "--target", "mixed"],
        r"targets/mixed\.toml: key '\(top level\)': manylinux policy manylinux_2_39_aarch64 is "
        r"not for platform linux_x86_64",
    ),
    "target named unlike its file": (
        lambda p: shutil.copy(p / "targets" / "hopper.toml", p / "targets" / "h100.toml"),
        ["build", "tiny", "--target", "h100"],
        r"targets/h100\.toml: key 'name': is 'hopper' but the file is named 'h100\.toml'",
    ),
    "relative cuda_home": (
        _target_variant("relcuda", 'cuda_home = "/usr/local/cuda"', 'cuda_home = "usr/local/cuda"'),
        ["build", "tiny", "--target", "relcuda"],
        r"relcuda\.toml: key 'cuda_home': 'usr/local/cuda' is not an absolute path; write e\.g\. "
        r"'/usr/local/cuda'",
    ),
    "target file not UTF-8": (
        lambda p: (p / "targets" / "latin.toml").write_bytes(
            'name = "latin"\ndescription = "Grüße"\n'.encode("latin-1")
        ),
        ["build", "tiny", "--target", "latin"],
        r"targets/latin\.toml: not UTF-8 text \(invalid start byte at byte 32\)",
    ),
    "target name that is a path": (
        lambda p: None,
        ["build", "tiny", "--target", "../targets/hopper"],
        r"--target: '\.\./targets/hopper' is not a valid target name",
    ),
    # --- recipes ---
    "source of two kinds": (
        lambda p: _replace(
            _recipe(p), 'path = "tiny-src"', 'path = "tiny-src"\ngit = "https://example.invalid/t"'
        ),
        ["build", "tiny"],
        r"recipe\.toml: key 'source': give exactly one of 'path', 'git', 'url' or 'pypi'",
    ),
    "git source without a ref": (
        lambda p: _replace(_recipe(p), 'path = "tiny-src"', 'git = "https://example.invalid/t"'),
        ["build", "tiny"],
        r"recipe\.toml: key '\(top level\)': git source: version '1\.0\.0' needs a 'ref' "
        r"\(tag or commit\)",
    ),
    "url source without {version}": (
        lambda p: _replace(
            _recipe(p), 'path = "tiny-src"', 'url = "https://example.invalid/tiny.tar.gz"'
        ),
        ["build", "tiny"],
        r"recipe\.toml: key 'source': a url source must contain '\{version\}'",
    ),
    "submodules on a path source": (
        lambda p: _replace(_recipe(p), 'path = "tiny-src"', 'path = "tiny-src"\nsubmodules = true'),
        ["build", "tiny"],
        r"recipe\.toml: key 'source': 'submodules' only applies to a git source",
    ),
    "bad requirement (packaging's message spans lines)": (
        lambda p: _replace(_recipe(p), "flit_core==3.12.0", "flit_core=3.12.0"),
        ["build", "tiny"],
        r"key 'build\.requires': 'flit_core=3\.12\.0' is not a valid requirement \(Expected "
        r"semicolon .* flit_core=3\.12\.0 \^\)$",
    ),
    "invalid environment variable name": (
        lambda p: _recipe(p).write_text(
            _recipe(p).read_text() + '\n[build.env]\n"MAX-JOBS" = "1"\n'
        ),
        ["build", "tiny"],
        r"recipe\.toml: key 'build\.env': 'MAX-JOBS' is not a valid environment variable name",
    ),
    "unknown template variable in the environment": (
        lambda p: _recipe(p).write_text(_recipe(p).read_text() + '\n[build.env]\nJOBS = "{job}"\n'),
        ["build", "tiny"],
        r"key 'build\.env': JOBS: unknown template variable '\{job\}'; known: ",
    ),
    "template with a conversion": (
        lambda p: _replace(_recipe(p), "{python} -m pip", "{python!r} -m pip"),
        ["build", "tiny"],
        r"key 'build\.command': '\{python!r\}' has a conversion or format spec; write a plain "
        r"'\{python\}'",
    ),
    "recipe cuda_archs garbage": (
        lambda p: _replace(_recipe(p), "[build]\n", '[build]\ncuda_archs = ["90", "sm_12x"]\n'),
        ["build", "tiny"],
        r"recipe\.toml: key 'build\.cuda_archs': 'sm_12x' is not a CUDA architecture",
    ),
    "several versions without a default": (
        lambda p: _replace(_recipe(p), "default = true\n", '\n[versions."1.1.0"]\n'),
        ["build", "tiny"],
        r"key '\(top level\)': with several versions, exactly one must have default = true",
    ),
    "needs a recipe that does not exist": (
        lambda p: _replace(_recipe(p), "cuda = false\n", 'cuda = false\nneeds = ["torchx"]\n'),
        ["build", "tiny"],
        r"recipe\.toml: key 'needs': no recipe 'torchx' in .*/recipes$",
    ),
    "recipe named unlike its directory": (
        lambda p: _replace(_recipe(p), 'name = "tiny"', 'name = "tiny2"'),
        ["build", "tiny"],
        r"recipe\.toml: key 'name': is 'tiny2' but the directory is 'tiny'",
    ),
    "memory per job too small to size jobs": (
        lambda p: _replace(_recipe(p), "memory_per_job_gb = 0.5", "memory_per_job_gb = 5e-324"),
        ["build", "tiny", "--dry-run"],
        r"key 'memory_per_job_gb': input should be greater than or equal to 0\.01",
    ),
    "recipe name too long for the file system": (
        lambda p: None,
        ["build", "x" * 300],
        r"no recipe 'x{300}' \(.* not found\); known recipes: .*sm121-probe, tiny",
    ),
    # --- the lock ---
    "malformed lock": (
        lambda p: (p / "lock.toml").write_text((p / "lock.toml").read_text() + "\n[recipes\n"),
        ["build", "tiny"],
        r"lock\.toml: malformed TOML \(.*\); run `nox -s lock` to rewrite it",
    ),
    "lock of another format": (
        lambda p: _replace(p / "lock.toml", "format = 1", "format = 2"),
        ["build", "tiny"],
        r"lock\.toml: key 'format': is 2, this sparkforge reads 1",
    ),
    "lock tree hash that is not hex": (
        lambda p: _replace(p / "lock.toml", _tiny_lock_value(p, "tree_sha256"), "not-a-sha256"),
        ["build", "tiny"],
        r"lock\.toml: key 'recipes\.tiny\.1\.0\.0\.source\.tree_sha256': string should match "
        r"pattern '\^\[0-9a-f\]\{64\}\$' \(got str 'not-a-sha256'\); run `nox -s lock`",
    ),
    "lock entry without its tree hash": (
        _lock_without_tree_hash,
        ["build", "tiny"],
        r"lock\.toml: key 'recipes\.tiny\.1\.0\.0\.source': a path source needs 'tree_sha256'",
    ),
    "lock not UTF-8": (
        lambda p: (p / "lock.toml").write_bytes(b"format = 1\n# \xff\n"),
        ["build", "tiny"],
        r"lock\.toml: not UTF-8 text \(invalid start byte at byte 13\); run `nox -s lock`",
    ),
    # --- patch series ---
    "series names a missing patch": (
        lambda p: _series(p, "0001-fix.patch\n0002-gone.patch\n"),
        ["build", "tiny"],
        r"patches/tiny/1\.0\.0/series:2: patch '0002-gone\.patch' not found in .*patches/tiny/1\.0\.0$",
    ),
    "series lists a patch twice": (
        lambda p: _series(p, "0001-fix.patch\n# again:\n0001-fix.patch  # really\n"),
        ["build", "tiny"],
        r"series:3: patch '0001-fix\.patch' is listed twice",
    ),
    "patch directory without a series": (
        lambda p: (_add_patch(p, BAD_HUNK), (p / "patches/tiny/1.0.0/series").unlink()),
        ["build", "tiny"],
        r"patches/tiny/1\.0\.0: patch directory without a 'series' file; list the patches",
    ),
    "Why: inside a sentence is no header line": (
        lambda p: _add_patch(p, WHY_IN_A_SENTENCE),
        ["build", "tiny"],
        r"0001-fix\.patch: header lacks 'Why:'; say why the patch exists",
    ),
    "series not UTF-8": (
        lambda p: _series(p, b"0001-fix.patch\n\xe9\n"),
        ["build", "tiny"],
        r"series: not UTF-8 text \(invalid continuation byte at byte 15\)",
    ),
    # --- command-line arguments ---
    "--jobs 0": (
        lambda p: None,
        ["build", "tiny", "--jobs", "0"],
        r"sparkforge build: argument --jobs: must be at least 1, got 0",
    ),
    "--python that is not X.Y": (
        lambda p: None,
        ["build", "tiny", "--python", "garbage"],
        r"argument --python: 'garbage' is not a Python version; write X\.Y, e\.g\. 3\.12",
    ),
    "--time-limit 0": (
        lambda p: None,
        ["build", "tiny", "--time-limit", "0"],
        r"argument --time-limit: '0' is not a positive number of seconds",
    ),
    "--build-arg without =": (
        lambda p: None,
        ["build", "tiny", "--runner", "container", "--build-arg", "NOEQUALS"],
        r"--build-arg: 'NOEQUALS' is not KEY=VALUE",
    ),
    "--engine that is not one": (
        lambda p: None,
        ["build", "tiny", "--runner", "container", "--engine", "lxc"],
        r"--engine: 'lxc' is not one of docker, podman",
    ),
    # --- wheels ---
    "smoke before any wheel was built": (
        lambda p: None,
        ["smoke", "tiny"],
        r"wheelhouse: no sf-tiny wheel in the wheelhouse; build it first",
    ),
    "inspect a file that does not exist": (
        lambda p: None,
        ["inspect", "/nonexistent/sf_tiny-1.0.0-py3-none-any.whl"],
        r"/nonexistent/sf_tiny-1\.0\.0-py3-none-any\.whl: no such wheel or file",
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


GARBAGE_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"garbage" * 10  # a header, then nonsense


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


WHEEL_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "text posing as a wheel": (
        lambda w: w.write_text("not a wheel\n"),
        r"sf_tiny-1\.0\.0-py3-none-any\.whl: neither a wheel \(zip\) nor an ELF, fatbin or PTX file",
    ),
    "truncated zip": (
        lambda w: w.write_bytes(b"PK\x03\x04 and then nothing"),
        r"sf_tiny-1\.0\.0-py3-none-any\.whl: neither a wheel \(zip\) nor an ELF, fatbin or PTX file",
    ),
    "library in the wheel with a corrupt ELF header": (
        lambda w: _zip(w, {"sf_tiny/_core.so": GARBAGE_ELF}),
        r"sf_tiny-1\.0\.0-py3-none-any\.whl: sf_tiny/_core\.so: unreadable ELF file: ",
    ),
    "a directory named like a wheel": (
        lambda w: w.mkdir(),
        r"sf_tiny-1\.0\.0-py3-none-any\.whl: cannot read it: \[Errno 21\] Is a directory",
    ),
}


@pytest.mark.parametrize("case", WHEEL_CASES, ids=list(WHEEL_CASES))
def test_inspect_refuses_what_is_not_a_wheel(
    case: str, cli: CliRunner, project: Path, tmp_path: Path
) -> None:
    make, message = WHEEL_CASES[case]
    wheel = tmp_path / "sf_tiny-1.0.0-py3-none-any.whl"
    make(wheel)
    result = cli("inspect", wheel, "--target", "hopper", "--project", project)
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.out + result.err


def test_index_refuses_a_simple_directory(cli: CliRunner, project: Path) -> None:
    """``simple`` must be the symlink that is swapped atomically; a real directory there
    (copied by hand, say) is named and left alone."""
    house = project / "wheelhouse"
    (house / "simple").mkdir(parents=True)
    (house / "simple" / "index.html").write_text("<html>served by hand</html>\n")
    before = snapshot(house)
    result = cli("index", "--project", project)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert re.search(
        r"wheelhouse/simple is not a symlink, so the index cannot be swapped atomically; "
        r"move it away and run the publish again",
        lines[0],
    ), lines[0]
    assert snapshot(house) == before
    assert not (house / ".index").exists() and not (house / "files").exists()
