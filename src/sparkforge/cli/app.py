"""The ``sparkforge`` command line: parses arguments and hands each command over.

The commands live in :mod:`commands` and are imported only when one is chosen;
``--help``, a usage error and ``inspect`` start without pydantic, rich or git
(start-up time: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from sparkforge import __version__
from sparkforge.config.targets import DEFAULT_TARGET
from sparkforge.util.errors import ConfigError, SparkforgeError

Command = Callable[[argparse.Namespace], int]


def _lazy(name: str) -> Command:
    """The command ``name`` of :mod:`commands`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from sparkforge.cli import commands

        command: Command = getattr(commands, name)
        return command(args)

    run.__name__ = name
    return run


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(
            f"{self.prog}: {message}{_did_you_mean(message)}; see `{self.prog} --help`"
        )


def _did_you_mean(message: str) -> str:
    """argparse's "invalid choice: 'biuld' (choose from …)": the nearest choice, if any."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return ""
    choices = re.findall(r"'?([\w-]+)'?", found[2])
    close = difflib.get_close_matches(found[1], choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, with a suggestion for a misspelled option of the chosen command."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = subparsers.choices[args.command]
    known = [flag for action in command._actions for flag in action.option_strings]
    hints = []
    for word in extra:
        flag = word.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
        if close:
            hints.append(f"did you mean '{close[0]}' for '{flag}'?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ConfigError(f"{command.prog}: unrecognized arguments: {' '.join(extra)}{hint}; "
                      f"see `{command.prog} --help`")  # fmt: skip


def _no_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="fail instead of waiting when another run holds the workspace")  # fmt: skip


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", type=Path, default=Path.cwd(), help="project directory (default: .)"
    )
    parser.add_argument(
        "--workspace", type=Path, help="cache/scratch directory (default: ~/.cache/sparkforge)"
    )
    parser.add_argument(
        "--wheelhouse", type=Path, help="wheelhouse directory (default: <project>/wheelhouse)"
    )


def _jobs(text: str) -> int:
    """``--jobs``: 0 or -3 would otherwise be quietly read as 1."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {jobs}")
    return jobs


def _python_version(text: str) -> str:
    """``--python``: "X.Y", as a target's ``python`` is written, not an interpreter path."""
    if not re.fullmatch(r"3\.[0-9]+", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a Python version; write X.Y, e.g. 3.12")
    return text


def _number(text: str, *, what: str, zero: bool) -> float:
    """A finite number for an option: positive, or also 0 when ``zero``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 if zero else value > 0) or not value < math.inf:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
    return value


def _seconds(text: str) -> float:
    """``--time-limit``: a positive, finite number of seconds."""
    return _number(text, what="a positive number of seconds", zero=False)


def _megabytes(text: str) -> float:
    return _number(text, what="a size in MB", zero=True)


def _days(text: str) -> float:
    """``--older-than``: a number of days, 0 or more."""
    return _number(text, what="a number of days (0 or more)", zero=True)


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    """What decides one recipe's build: shared by build and verify-repro."""
    parser.add_argument("recipe")
    parser.add_argument(
        "--version", dest="version", help="recipe version (default: the recipe's default)"
    )
    _build_settings(parser)


def _manylinux(text: str) -> str:
    if not re.fullmatch(r"manylinux_2_\d+_(x86_64|aarch64)", text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a manylinux policy; write e.g. manylinux_2_39_x86_64"
        )
    return text


def _build_settings(parser: argparse.ArgumentParser) -> None:
    """What decides any build: shared by build, verify-repro and build-all."""
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--cuda-arch", action="append", default=[],
                        help="extra arch, e.g. 121 or 121a (repeatable)")  # fmt: skip
    parser.add_argument("--jobs", type=_jobs,
                        help="compile jobs (default: min(cores, memory / recipe's memory per job))")  # fmt: skip
    parser.add_argument("--allow-arch-gaps", action="store_true",
                        help="publish even if the audit says it won't run")  # fmt: skip
    parser.add_argument("--python", type=_python_version,
                        help="build for this Python (X.Y) instead of the target's")  # fmt: skip
    parser.add_argument("--manylinux", type=_manylinux, metavar="POLICY",
                        help="repair to this manylinux policy instead of the target's "
                             "(e.g. manylinux_2_39_x86_64 on a glibc 2.39 host)")  # fmt: skip
    parser.add_argument("--installed-need", action="append", default=[], metavar="RECIPE",
                        help="satisfy this needed recipe with the distribution the build "
                             "interpreter has installed, not this wheelhouse (host runner; "
                             "recorded as unreviewed)")  # fmt: skip
    parser.add_argument("--time-limit", type=_seconds, metavar="SECONDS",
                        help="stop the build commands after this long (default: no limit)")  # fmt: skip
    _runner_options(parser)


def _runner_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runner", choices=["host", "container"], default="host",
                        help="where steps run (default: host)")  # fmt: skip
    parser.add_argument(
        "--engine", help="container engine: docker or podman (default: docker, else podman)"
    )
    parser.add_argument("--engines", type=Path, help="engine settings file (default: engines.toml)")
    parser.add_argument(
        "--base-image", help="builder base image (default: the target's builder_image)"
    )
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Dockerfile.builder build argument")  # fmt: skip
    parser.add_argument("--allow-unpinned-base", action="store_true",
                        help="build the image from a base not pinned in lock.toml (recorded)")  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the wheelhouse (imports only the server: it is up in a fraction of a second)."""
    from sparkforge.team.serve import serve_wheelhouse
    from sparkforge.util.workspace import wheelhouse_dir

    return serve_wheelhouse(
        wheelhouse_dir(args.wheelhouse, args.project), args.host, args.port, quiet=args.quiet
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    from sparkforge.config.targets import load_target
    from sparkforge.wheel.inspect import inspect_command

    target = load_target(args.project.resolve(), args.target)
    archs = {arch.name: arch.sm for arch in target.cuda_archs}
    return inspect_command(Path(args.path), target.name, target.machine, archs, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparkforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sparkforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser(
        "check-patches", help="apply every patch series to its locked source (fetches sources)"
    )
    check.add_argument("recipes", nargs="*", help="recipes to check (default: all)")
    check.add_argument("--prove", action="store_true",
                       help="run each patch's Proof: command without and with the patch")  # fmt: skip
    _common(check)
    check.set_defaults(func=_lazy("cmd_check_patches"))

    build = sub.add_parser("build", help="build a recipe into the wheelhouse")
    _build_arguments(build)
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument("--dry-run", action="store_true", help="print the full plan and do nothing")
    build.add_argument("--preflight", action="store_true",
                       help="run up to upstream's configure step offline and check its results; "
                            "compile nothing")  # fmt: skip
    build.add_argument("--from-bundle", type=Path, metavar="FILE",
                       help="build from a bundle (sparkforge bundle): verified, no network, "
                            "a fresh workspace")  # fmt: skip
    build.add_argument("--keep-build-dir", action="store_true",
                       help="keep the build directory after a successful build")  # fmt: skip
    build.add_argument("--upstream-needs", action="store_true",
                       help="with --preflight: a need missing from the wheelhouse comes from "
                            "upstream's published wheel of the same version (said in the log)")  # fmt: skip
    _no_wait(build)
    _common(build)
    build.set_defaults(func=_lazy("cmd_build"))

    bundle = sub.add_parser(
        "bundle", help="write one plan's verified inputs into one file for an offline machine"
    )
    _build_arguments(bundle)
    bundle.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the bundle file (default: ./<recipe>-<version>-<target>-<key>.bundle.tar.xz)",
    )
    _no_wait(bundle)
    _common(bundle)
    bundle.set_defaults(func=_lazy("cmd_bundle"), dry_run=False)

    build_all = sub.add_parser(
        "build-all", help="build every recipe in dependency order; a table of results"
    )
    build_all.add_argument("recipes", nargs="*", help="only these (and what they need)")
    _build_settings(build_all)
    build_all.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    _no_wait(build_all)
    build_all.add_argument("--dry-run", action="store_true",
                           help="plan every recipe in order and print what would happen")  # fmt: skip
    build_all.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    build_all.add_argument("--no-preflight", action="store_true",
                           help="skip each recipe's preflight before its build")  # fmt: skip
    _common(build_all)
    build_all.set_defaults(func=_lazy("cmd_build_all"))

    repro = sub.add_parser(
        "verify-repro", help="rebuild from the lock elsewhere and compare with the wheelhouse"
    )
    _build_arguments(repro)
    _common(repro)
    repro.set_defaults(func=_lazy("cmd_verify_repro"))

    smoke = sub.add_parser(
        "smoke", help="install from the wheelhouse index into a fresh venv and run smoke.py"
    )
    smoke.add_argument("recipe")
    smoke.add_argument("--target", default=DEFAULT_TARGET)
    smoke.add_argument("--version", dest="version", help="exact wheel version to install")
    smoke.add_argument("--python", help="interpreter for the venv (default: the target's Python)")
    smoke.add_argument("--require-gpu", action="store_true", help="no CUDA device is a failure")
    _runner_options(smoke)
    _common(smoke)
    smoke.set_defaults(func=_lazy("cmd_smoke"))

    lock = sub.add_parser("lock", help="resolve recipes into lock.toml")
    lock.add_argument("recipes", nargs="*", help="recipes to (re)lock (default: all)")
    lock.add_argument(
        "--upgrade",
        action="append",
        default=[],
        metavar="RECIPE",
        help="move branch refs and requirements to their newest commit/version",
    )
    lock.add_argument("--version", action="append", default=[], metavar="VERSION",
                      help="also lock this upstream release, which the recipe does not list "
                           "(settings of the nearest listed one; unreviewed)")  # fmt: skip
    lock.add_argument("--builder", action="store_true",
                      help="pin the targets' builder base images (pulled when missing; only "
                           "lock.toml's [builder] table changes)")  # fmt: skip
    lock.add_argument("--base-image", action="append", default=[], dest="pin_base",
                      metavar="IMAGE", help="with --builder: pin this image (as given to "
                      "build --base-image) instead of the targets' own")  # fmt: skip
    lock.add_argument(
        "--target", action="append", default=[], help="with --builder: only these targets"
    )
    lock.add_argument("--engine", help="container engine for --builder")
    lock.add_argument("--engines", type=Path, help="engine settings file")
    _common(lock)
    lock.set_defaults(func=_lazy("cmd_lock"))

    index = sub.add_parser("index", help="regenerate the wheelhouse index and list its wheels")
    _common(index)
    index.set_defaults(func=_lazy("cmd_index"))

    inspect = sub.add_parser(
        "inspect", help="list the CUDA code in a wheel or library and judge it for a target"
    )
    inspect.add_argument("path")
    inspect.add_argument("--target", default=DEFAULT_TARGET)
    inspect.add_argument("--json", action="store_true")
    _common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    doctor = sub.add_parser("doctor", help="check this host before a build and say what to fix")
    doctor.add_argument(
        "recipes", nargs="*", help="recipes to size disk and memory for (default: all)"
    )
    doctor.add_argument("--target", default=DEFAULT_TARGET)
    doctor.add_argument("--json", action="store_true")
    _common(doctor)
    doctor.set_defaults(func=_lazy("cmd_doctor"))

    serve = sub.add_parser("serve", help="serve the wheelhouse index over HTTP (read-only)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port, 0 for any (default: 8000)")
    serve.add_argument("--quiet", action="store_true", help="no access log on stderr")
    _common(serve)
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser(
        "export", help="pin the wheelhouse's wheels (and dependencies) by sha256 for installs"
    )
    export.add_argument("projects", nargs="*", metavar="PROJECT[==VERSION]",
                        help="projects to pin (default: all, newest version of each)")  # fmt: skip
    export.add_argument("--index-url", default="http://127.0.0.1:8000/simple/",
                        help="the team index the configuration points at (default: sparkforge serve's)")  # fmt: skip
    export.add_argument("-o", "--output", type=Path,
                        help="requirements file to write (default: standard output)")  # fmt: skip
    export.add_argument("--pip-conf", type=Path, help="also write a pip.conf for the team index")
    export.add_argument("--uv-toml", type=Path, help="also write a uv.toml for the team index")
    export.add_argument("--no-deps", action="store_true",
                        help="pin only the wheelhouse's wheels, not their dependencies")  # fmt: skip
    export.add_argument("--target", default=DEFAULT_TARGET,
                        help="where the dependencies must install (default: dgx-spark)")  # fmt: skip
    export.add_argument("--deps-index-url", default="https://pypi.org/simple",
                        help="index the dependencies are resolved from (default: PyPI)")  # fmt: skip
    _common(export)
    export.set_defaults(func=_lazy("cmd_export"))

    publish = sub.add_parser(
        "publish", help="push the wheelhouse to a team index (upload API, directory or rsync)"
    )
    publish.add_argument("projects", nargs="*", metavar="PROJECT",
                         help="projects to publish (default: every wheel in the wheelhouse)")  # fmt: skip
    publish.add_argument("--to", required=True, metavar="URL",
                         help="http(s):// upload URL (credentials from TWINE_USERNAME/TWINE_PASSWORD "
                              "or keyring), a directory or file:// URL, rsync:// or [user@]host:/path")  # fmt: skip
    publish.add_argument("--simple-url", metavar="URL",
                         help="the index's PEP 503 simple API (default: <upload URL>/simple/)")  # fmt: skip
    _common(publish)
    publish.set_defaults(func=_lazy("cmd_publish"))

    install = sub.add_parser(
        "check-install",
        help="resolve each wheelhouse wheel's requirements for the target (wheelhouse + index)",
    )
    install.add_argument("projects", nargs="*", help="projects to check (default: all)")
    install.add_argument("--target", default=DEFAULT_TARGET)
    install.add_argument(
        "--index-url", help="the index besides the wheelhouse (default: uv's, PyPI)"
    )
    _common(install)
    install.set_defaults(func=_lazy("cmd_check_install"))

    outdated = sub.add_parser(
        "outdated",
        help="locked versions against upstream's newest, and whether upstream's wheel runs on the target",
    )
    outdated.add_argument("recipes", nargs="*", help="recipes to check (default: all)")
    outdated.add_argument("--target", default=DEFAULT_TARGET)
    outdated.add_argument("--json", action="store_true", help="rows as JSON (for CI)")
    outdated.add_argument("--no-audit", action="store_true",
                          help="do not download upstream's wheels to judge them")  # fmt: skip
    outdated.add_argument("--index-url", default=None, metavar="URL",
                          help="PyPI-style JSON API root (default: https://pypi.org/pypi)")  # fmt: skip
    outdated.add_argument("--lock-moved", action="store_true",
                          help="lock upstream's newest release where it is newer than every "
                               "listed one, on demand (unreviewed; writes lock.toml)")  # fmt: skip
    _common(outdated)
    outdated.set_defaults(func=_lazy("cmd_outdated"))

    listing = sub.add_parser(
        "list", help="what the wheelhouse holds: project, version, target, audit, build key"
    )
    listing.add_argument("projects", nargs="*", help="only these projects (default: all)")
    listing.add_argument("--json", action="store_true")
    _common(listing)
    listing.set_defaults(func=_lazy("cmd_list"))

    clean = sub.add_parser(
        "clean", help="remove old build trees, build venvs, cached verdicts or builder images"
    )
    clean.add_argument("--what", action="append",
                       choices=["scratch", "envs", "verdicts", "images"],
                       help="what to remove (repeatable; default: scratch); images: the "
                            "builder images the container runner made")  # fmt: skip
    clean.add_argument("--larger-than", type=_megabytes, default=0.0, metavar="MB",
                       help="only items of at least this many MB (default: 0)")  # fmt: skip
    clean.add_argument("--engine", help="container engine for --what images")
    clean.add_argument("--engines", type=Path, help="engine settings file")
    clean.add_argument("--older-than", type=_days, default=0.0, metavar="DAYS",
                       help="only what was last changed this many days ago or more (default: 0)")  # fmt: skip
    clean.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    _common(clean)
    clean.set_defaults(func=_lazy("cmd_clean"))

    graph = sub.add_parser(
        "graph", help="recipes in build order: levels whose recipes can build in parallel"
    )
    graph.add_argument("recipes", nargs="*", help="these and what they need (default: all)")
    graph.add_argument("--json", action="store_true", help="levels as JSON (for CI matrices)")
    _common(graph)
    graph.set_defaults(func=_lazy("cmd_graph"))
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stopped like Ctrl-C (the running command's whole process group
    first), with the signal's exit status."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _die_with_parent() -> None:
    """SIGTERM when the parent process dies (Linux ``PR_SET_PDEATHSIG``): a nox session
    killed with SIGTERM does not pass it on, and its sparkforge would otherwise go on
    building (or serving) as an orphan. The signal takes Ctrl-C's path, as above."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call: it is gone already
        os.kill(os.getpid(), signal.SIGTERM)


def entry() -> int:
    """The ``sparkforge`` command (and ``python -m sparkforge.cli``): :func:`main`, ended
    with the process that started it."""
    _die_with_parent()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM (a CI runner, `kill`, systemd) and SIGHUP (a closed terminal) take Ctrl-C's
    # path: the build's process group is stopped, nothing unfinished is published.
    handled = (signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _terminate) for sig in handled}
    try:
        args = _parse(build_parser(), argv)
        return int(args.func(args))
    except SparkforgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except Terminated as stop:
        name = signal.Signals(stop.signum).name
        print(f"terminated ({name}); the build's processes were stopped and the wheelhouse was "
              "not changed by the unfinished step", file=sys.stderr)  # fmt: skip
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted; the wheelhouse was not changed by the unfinished step", file=sys.stderr)
        return 130
    except OSError as exc:  # a bad environment (permissions, a full disk…): one line, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check that path, its permissions and the "
              "free space", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
