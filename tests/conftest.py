"""Shared fixtures: a scratch copy of the project, the CLI in-process, a tiny recipe."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sparkforge.cli import main
from sparkforge.wheel.cudabin import CudaCode

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run the sparkforge CLI in-process."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def copy_project(dest: Path) -> Path:
    """targets/, recipes/, patches/, probe/, lock.toml and the builder files of this repository."""
    for name in ("targets", "recipes", "probe", "patches"):
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "build")
        )
    for name in (
        "lock.toml",
        "Dockerfile.builder",
        "builder-tools.txt",
        "builder.toml",
        "engines.toml",
    ):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def shared_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the session, so build environments are created once."""
    return tmp_path_factory.mktemp("workspace")


TINY_RECIPE = """\
name = "tiny"
dist = "sf-tiny"
summary = "A pure-Python recipe that exercises the pipeline in seconds"
memory_per_job_gb = 0.5
cuda = false

[source]
path = "tiny-src"

[versions."1.0.0"]
default = true

[build]
requires = ["flit_core==3.12.0"]
command = ["{python} -m pip wheel --no-build-isolation --no-deps --wheel-dir {dist_dir} {source_dir}"]
wheel = "{dist_dir}/sf_tiny-*.whl"
"""

TINY_PYPROJECT = """\
[build-system]
requires = ["flit_core>=3.4"]
build-backend = "flit_core.buildapi"

[project]
name = "sf-tiny"
version = "1.0.0"
description = "tiny"
requires-python = ">=3.9"

[tool.flit.module]
name = "sf_tiny"
"""

TINY_SMOKE = """\
import sf_tiny
print("tiny says", sf_tiny.VALUE)
raise SystemExit(0 if sf_tiny.VALUE == 42 else 1)
"""


def write_tiny(project: Path) -> Path:
    """Add the pure-Python 'tiny' recipe and its source to ``project``."""
    recipe = project / "recipes" / "tiny"
    recipe.mkdir(parents=True)
    (recipe / "recipe.toml").write_text(TINY_RECIPE)
    (recipe / "smoke.py").write_text(TINY_SMOKE)
    src = project / "tiny-src"
    (src / "sf_tiny").mkdir(parents=True)
    (src / "pyproject.toml").write_text(TINY_PYPROJECT)
    (src / "sf_tiny" / "__init__.py").write_text('"""tiny"""\nVALUE = 42\n')
    (src / "CHANGES.txt").write_text("line one\nline two\nline three\n")
    return recipe


@pytest.fixture(scope="session")
def tiny_lock(tmp_path_factory: pytest.TempPathFactory, shared_workspace: Path) -> str:
    """lock.toml text with the tiny recipe resolved (resolving needs PyPI once)."""
    project = copy_project(tmp_path_factory.mktemp("tinylock"))
    write_tiny(project)
    assert (
        main(["lock", "tiny", "--project", str(project), "--workspace", str(shared_workspace)]) == 0
    )
    return (project / "lock.toml").read_text()


@pytest.fixture
def tiny(project: Path, tiny_lock: str) -> Path:
    """A project with the tiny recipe, locked."""
    write_tiny(project)
    (project / "lock.toml").write_text(tiny_lock)
    return project


def one_error_line(result: CliResult, pattern: str, code: int | None = None) -> str:
    """The result is a failure with exactly one ``error:`` line matching ``pattern``."""
    assert result.code != 0 if code is None else result.code == code, result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(str(dict(attrs)["href"]))


def hrefs(html: str) -> list[str]:
    """The link targets of an index page."""
    parser = _Hrefs()
    parser.feed(html)
    return parser.hrefs


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (symlinks by target)."""
    if not root.exists():
        return {}
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock file: one process fills a shared download or venv cache
    at a time (pytest-xdist workers share pytest's cache and the base temp directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f".{directory.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def build_with_runners(
    args: list[str], runners: dict[str, list[str]], wheelhouses: Path
) -> dict[str, Path]:
    """``sparkforge build *args`` once per runner (its extra options), each into its own
    wheelhouse under ``wheelhouses``; the wheel each produced."""
    wheels: dict[str, Path] = {}
    for runner, extra in runners.items():
        wheelhouse = wheelhouses / f"wheelhouse-{runner}"
        assert main(["build", *args, *extra, "--wheelhouse", str(wheelhouse)]) == 0, runner
        (wheels[runner],) = (wheelhouse / "files").glob("*.whl")
    return wheels


def git_repo(path: Path, files: dict[str, str]) -> str:
    """A new repository at ``path`` with ``files`` in one commit; returns the commit."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, *identity, "commit", "-q", "-m", "files")
    return git(path, "rev-parse", "HEAD")


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


# --- NVIDIA's cuobjdump (PyPI), the reference for the fatbin reader -----------------------

CUOBJDUMP = "nvidia-cuda-cuobjdump==13.5.37"
LISTING = re.compile(r"^(ELF|PTX) file\s+\d+: .*\.(sm_\d+[af]?)\.(?:cubin|ptx)$")


@pytest.fixture(scope="session")
def cuobjdump(request: pytest.FixtureRequest) -> Path:
    """cuobjdump from PyPI in a venv cached under pytest's cache directory."""
    venv = request.config.cache.mkdir("sparkforge-cuobjdump")
    with locked(venv):  # pytest-xdist workers share this cache
        found = sorted(venv.glob("lib/python*/site-packages/nvidia/*/bin/cuobjdump"))
        if not found:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", CUOBJDUMP], check=True
            )
            found = sorted(venv.glob("lib/python*/site-packages/nvidia/*/bin/cuobjdump"))
        return found[0]


def cuobjdump_listing(cuobjdump: Path, library: Path) -> Counter[str]:
    """cuobjdump's ELF and PTX list as a multiset of 'ELF sm_90a' / 'PTX sm_120f'."""
    result = subprocess.run(
        [str(cuobjdump), "--list-elf", "--list-ptx", str(library)],
        capture_output=True,
        text=True,
        check=True,
    )
    matches = [LISTING.match(line) for line in result.stdout.splitlines() if line.strip()]
    assert all(matches), result.stdout
    return Counter(f"{m[1]} {m[2]}" for m in matches if m)


def as_cuobjdump(code: dict[CudaCode, int]) -> Counter[str]:
    """Our findings in cuobjdump's words: it names family cubins without the ``f``."""
    listed: Counter[str] = Counter()
    for c, count in code.items():
        if c.kind == "sass":
            listed[f"ELF sm_{c.sm}{c.variant.replace('f', '')}"] += count
        else:
            listed[f"PTX sm_{c.sm}{c.variant}"] += count
    return listed


# --- CUDA for configure steps that need more of the toolkit ----------------------------------

# This host's CUDA 13.0 (nvcc from PyPI's nvidia-* wheels) lacks cuBLAS, which llama.cpp's
# ggml-cuda links, and NVRTC, which torch's CMake config (vLLM's configure) looks up: NVIDIA's
# own PyPI wheels of both, pinned by sha256, with the unversioned names a toolkit has.
OVERLAY_WHEELS = (
    ("nvidia-cublas==13.0.0.19", "nvidia_cublas-13.0.0.19-*.whl",
     "f6723af2e8e2600a11dc384037d90d9bf93070e346c24ef2e8f9001658c99896",
     ("libcublas", "libcublasLt")),
    ("nvidia-cuda-nvrtc==13.0.48", "nvidia_cuda_nvrtc-13.0.48-*.whl",
     "87e13d186905a35e7c04ad553a2abded0fba22f93b43d02e5da6f6cf73fb4d0a",
     ("libnvrtc",)),
)  # fmt: skip


@pytest.fixture(scope="session")
def cuda_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An overlay of /usr/local/cuda plus cuBLAS and NVRTC from PyPI (sha256-pinned) and a
    libcuda stub: enough toolkit for the configure steps of llama.cpp and vLLM."""
    real = Path("/usr/local/cuda").resolve()
    if not (real / "bin" / "nvcc").exists():
        pytest.skip("no CUDA toolkit at /usr/local/cuda")
    cache = tmp_path_factory.getbasetemp().parent / "sparkforge-cuda-wheels"
    with locked(cache):  # pytest-xdist workers share this cache
        trees: list[Path] = []
        unversioned: list[str] = []
        for requirement, pattern, sha256, names in OVERLAY_WHEELS:
            wheel = next(iter(cache.glob(pattern)), None)
            if wheel is None:
                subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                "--only-binary=:all:", "--platform", "manylinux_2_27_x86_64",
                                "--platform", "manylinux_2_12_x86_64", "--python-version", "3.12", "-d", str(cache), requirement],
                               check=True)  # fmt: skip
                wheel = next(cache.glob(pattern))
            assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha256, wheel
            unpacked = cache / f"unpacked-{requirement}"
            if not unpacked.exists():
                shutil.unpack_archive(wheel, unpacked, "zip")
            trees.append(unpacked / "nvidia" / "cu13")
            unversioned += names
        overlay = tmp_path_factory.mktemp("cuda-overlay")
        for entry in real.iterdir():
            if entry.name not in ("bin", "include", "lib", "lib64", "targets"):
                (overlay / entry.name).symlink_to(entry)
        # nvcc finds its tree from where it runs (nvcc.profile: TOP = $(_HERE_)/..): copied, not linked.
        (overlay / "bin").mkdir()
        for entry in (real / "bin").iterdir():
            if entry.name in ("nvcc", "nvcc.profile"):
                shutil.copy2(entry, overlay / "bin" / entry.name)
            else:
                (overlay / "bin" / entry.name).symlink_to(entry)
        for name in ("include", "lib"):
            (overlay / name).mkdir()
            for source in (real / name, *(tree / name for tree in trees)):
                for entry in source.iterdir():
                    if not (overlay / name / entry.name).exists():
                        (overlay / name / entry.name).symlink_to(entry)
        (overlay / "lib64").symlink_to("lib")
        target = overlay / "targets" / f"{os.uname().machine}-linux"
        target.mkdir(parents=True)
        (target / "include").symlink_to("../../include")
        (target / "lib").symlink_to("../../lib")
        for name in unversioned:
            if not (overlay / "lib" / f"{name}.so").exists():
                (overlay / "lib" / f"{name}.so").symlink_to(f"{name}.so.13")
        # A full toolkit ships lib64/stubs/libcuda.so (cuda-driver-dev) for linking without a
        # driver; no PyPI wheel carries it. Configure only looks the file up (CUDA::cuda_driver),
        # so an empty shared library stands for it here; nothing is linked against it.
        stub = tmp_path_factory.mktemp("stub") / "stub.c"
        stub.write_text("void sparkforge_libcuda_stub(void) {}\n")
        (overlay / "lib" / "stubs").mkdir()
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                        str(overlay / "lib" / "stubs" / "libcuda.so"), str(stub)], check=True)  # fmt: skip
        return overlay
