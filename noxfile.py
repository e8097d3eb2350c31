"""nox front door: thin sessions that call the sparkforge CLI.

``build-<recipe>`` and ``smoke-<recipe>`` exist for every directory in recipes/.
Arguments after ``--`` go to the CLI, e.g.
``nox -s build-sm121-probe -- --target hopper --cuda-arch 121 --dry-run``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).parent
RECIPES = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/recipe.toml"))

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]


SKIPPED = 77  # sparkforge smoke's exit status when there is no CUDA device


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("-e", f".{extras}")


def _make_recipe_sessions(recipe: str) -> None:
    @nox.session(name=f"build-{recipe}")
    def build(session: nox.Session) -> None:
        _install(session)
        session.run("sparkforge", "build", recipe, *session.posargs)

    @nox.session(name=f"smoke-{recipe}")
    def smoke(session: nox.Session) -> None:
        """Fresh venv, install by name from the wheelhouse, run smoke.py (no CUDA device: skipped)."""
        _install(session)
        command = [str(Path(session.bin) / "sparkforge"), "smoke", recipe, *session.posargs]
        session.log(" ".join(command[1:]))
        code = subprocess.call(command)
        if code == SKIPPED:
            session.skip(f"smoke of {recipe} skipped: no CUDA device (--require-gpu fails instead)")
        if code != 0:
            session.error(f"smoke of {recipe} failed (exit {code})")


for _recipe in RECIPES:
    _make_recipe_sessions(_recipe)


# Thin sessions: `nox -s NAME -- ARGS` runs `sparkforge NAME ARGS` (the docstring is what
# `nox -l` shows).
CLI_SESSIONS = {
    "build-all": "Every recipe in dependency order, then a table of results.",
    "verify-repro": "Rebuild a recipe from the lock in a fresh workspace and compare:"
    " `nox -s verify-repro -- RECIPE [build options]`.",
    "lock": "(Re)resolve lock.toml: `nox -s lock -- [RECIPE ...] [--upgrade RECIPE]`.",
    "bundle": "One plan's verified inputs in one file: `nox -s bundle -- RECIPE [build options] -o FILE`;"
    " build from it with no network: `nox -s build-RECIPE -- --from-bundle FILE`.",
    "check-install": "Do the wheelhouse's wheels install on the target? `nox -s check-install -- [--target T]`.",
    "index": "Regenerate the wheelhouse index and list what it holds.",
    "list": "What the wheelhouse holds: `nox -s list -- [PROJECT ...] [--json]`.",
    "clean": "Old build trees, venvs, verdicts: `nox -s clean -- [--what W] [--older-than D] [--dry-run]`.",
    "export": "Hash-pinned requirements for the wheelhouse: `nox -s export -- [-o F] [PROJECT ...]`.",
    "graph": "The recipes in build order: `nox -s graph -- [RECIPE ...] [--json]`.",
    "outdated": "Locked versions against upstream's newest, and whether upstream's own wheel"
    " runs on the target: `nox -s outdated -- [RECIPE ...] [--target T] [--json] [--lock-moved]`.",
    "inspect": "The CUDA code in a wheel or file and the verdict: `nox -s inspect -- PATH [--target T]`.",
    "doctor": "Check this host before a build: `nox -s doctor -- [--target T] [RECIPE ...] [--json]`.",
    "serve-index": "Serve wheelhouse/ for pip and uv, read-only, 127.0.0.1:8000 by default:"
    " `nox -s serve-index -- [--host H] [--port P]` (docs/index-hosting.md).",
}


CLI_COMMANDS = {"serve-index": "serve"}  # where the session is not named like the command


def _make_cli_session(name: str, doc: str) -> None:
    def run(session: nox.Session) -> None:
        _install(session)
        session.run("sparkforge", CLI_COMMANDS.get(name, name), *session.posargs)

    run.__doc__ = doc
    nox.session(name=name)(run)


for _name, _doc in CLI_SESSIONS.items():
    _make_cli_session(_name, _doc)


@nox.session(name="check-patches")
def check_patches(session: nox.Session) -> None:
    """Apply every patch series to its locked source (fetches sources):
    `nox -s check-patches -- [--prove] [RECIPE ...]`; --prove runs each patch's proof
    without and with it (the vLLM proof evaluates vLLM's CMake, so cmake comes along)."""
    _install(session)
    session.install("cmake>=3.26")
    session.run("sparkforge", "check-patches", *session.posargs)


@nox.session(name="e2e-aarch64")
def e2e_aarch64(session: nox.Session) -> None:
    """The probe for dgx-spark in an emulated arm64 builder container (podman + qemu).

    Builds the arm64 stand-in base (Debian + CUDA 13 from PyPI; no registry
    needed), Dockerfile.builder on it, then the probe inside, and checks the
    wheel with auditwheel and sparkforge inspect. Python is the stand-in's 3.11.
    """
    _install(session)
    base = session.run("python", "tools/standin_base.py", "--arch", "arm64", silent=True)
    image = str(base).strip().splitlines()[-1]
    wheelhouse = ".e2e-aarch64/wheelhouse"
    session.run(
        "sparkforge", "build", "sm121-probe", "--target", "dgx-spark", "--python", "3.11",
        "--runner", "container", "--engine", "podman", "--engines", "ci/engines.toml",
        "--base-image", image, "--allow-unpinned-base",
        "--wheelhouse", wheelhouse, *session.posargs,
    )  # fmt: skip
    wheels = sorted(Path(wheelhouse, "files").glob("sm121_probe-*manylinux_2_*_aarch64.whl"))
    if not wheels:
        session.error(f"no manylinux aarch64 probe wheel in {wheelhouse}/files")
    session.run("auditwheel", "show", str(wheels[-1]))
    session.run("sparkforge", "inspect", str(wheels[-1]), "--target", "dgx-spark")


@nox.session
def publish(session: nox.Session) -> None:
    """Push the wheelhouse to a team index: `nox -s publish -- --to URL [PROJECT ...]`.

    Upload URLs go through twine (the `publish` extra); credentials come from
    TWINE_USERNAME/TWINE_PASSWORD or keyring, which nox passes through. See
    docs/publishing.md.
    """
    _install(session, "[publish]")
    session.run("sparkforge", "publish", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (GPU tests skip without a CUDA device).

    Two workers by default, a test file each at a time (`--dist loadfile`: a file's
    fixtures stay in one process): much of the suite waits on downloads, container
    image layers and apt, not on the CPU. Arguments replace these defaults.
    """
    _install(session, "[test]")
    default = ["-n", "2", "--dist", "loadfile", "--durations", "15"]
    session.run("pytest", *(session.posargs or default))


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, "[lint]")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "benchmarks")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "benchmarks")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Pipeline overhead, inspect vs cuobjdump and start-up, preflight vs build, ccache
    rebuild vs cold build (docs/benchmarks.md)."""
    _install(session, "[test]")
    session.run("python", "benchmarks/bench_probe.py", *session.posargs)
    session.run("python", "benchmarks/bench_inspect.py")
    session.run("python", "benchmarks/bench_metadata.py")
    session.run("python", "benchmarks/bench_preflight.py")
    session.run("python", "benchmarks/bench_ccache.py")
