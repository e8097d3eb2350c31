"""Pinned installs from the wheelhouse (``sparkforge export``).

Writes a requirements file in which every wheel of the wheelhouse (or of the
named projects) is pinned as ``name==version --hash=sha256:…``, one hash per
file of that version (every platform's), so pip in hash-checking mode installs
those exact bytes or nothing. Their dependencies are resolved for a target by
uv (``uv pip compile --python-platform … --generate-hashes``, with the
wheelhouse's own files as direct requirements, so a dependency can never replace
one of them), from PyPI or ``--deps-index-url``, and pinned the same way; uv
judges environment markers for the target, wherever export runs.

It also writes the client configuration that keeps these packages on the team
index: a ``pip.conf`` with that index alone (pip merges every index it is given
and takes the highest version anywhere), and a ``uv.toml`` that lists the team
index before the default one under uv's ``first-index`` strategy (a package
found on the team index is never looked up elsewhere). docs/index-hosting.md
explains the choice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from packaging.metadata import parse_email
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from sparkforge.config.targets import Target, marker_environment, platform_tags
from sparkforge.util.errors import ConfigError, WheelhouseError
from sparkforge.verify.installcheck import uv_platform
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse


@dataclass(frozen=True)
class ExportOptions:
    """What ``sparkforge export`` writes and for where; ``target`` None means --no-deps."""

    index_url: str
    deps_index_url: str
    target: Target | None
    output: Path | None = None
    pip_conf: Path | None = None
    uv_toml: Path | None = None


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line with the sha256 of every file it may install."""

    name: str
    version: str
    hashes: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """The wheelhouse versions chosen, by project, and the requirements they leave open."""

    wheels: dict[str, list[StoredWheel]]
    open_requirements: list[str]  # "<requirement> (from <project> <version>)"


def export_command(house: Wheelhouse, requests: Sequence[str], options: ExportOptions) -> int:
    """``sparkforge export``: write the requirements file and the configurations asked for."""
    _check_url(options.index_url, "--index-url")
    _check_url(options.deps_index_url, "--deps-index-url")
    selection = select(house, requests, options.target)
    built = [_pin(wheels) for _, wheels in sorted(selection.wheels.items())]
    dependencies: list[Pin] = []
    if options.target is not None:
        chosen = [_for_target(wheels, options.target) for wheels in selection.wheels.values()]
        dependencies = resolve_dependencies(chosen, options.target, options.deps_index_url)
    text = render_requirements(built, dependencies, selection, options)
    _write(options.output, text)
    if options.pip_conf is not None:
        _write(options.pip_conf, render_pip_conf(options.index_url))
    if options.uv_toml is not None:
        _write(options.uv_toml, render_uv_toml(options.index_url, options.deps_index_url))
    files = sum(len(pin.hashes) for pin in built)
    where = options.output or "standard output"
    print(f"pinned {len(built)} project(s) ({files} files) from {house.root} and "
          f"{len(dependencies)} dependencies in {where}", file=sys.stderr)  # fmt: skip
    return 0


# --- choosing what to pin --------------------------------------------------------------------


def select(house: Wheelhouse, requests: Sequence[str], target: Target | None) -> Selection:
    """The newest version of each requested project (all by default), or the one named.

    With a target, wheelhouse projects that these require are added too (the
    team index is where they must come from), at the newest version that fits
    the requirement bringing them in; one that another requirement rejects is an
    error naming both, to be settled with PROJECT==VERSION. Other requirements
    are left for the resolver.
    """
    available: dict[str, list[StoredWheel]] = {}
    for wheel in house.wheels():
        available.setdefault(wheel.project, []).append(wheel)
    if not available:
        raise WheelhouseError(f"nothing to export: {house.root} has no wheels; build one first")
    wanted = [_parse_request(text, available) for text in requests] or [
        (project, None) for project in available
    ]
    chosen = {project: _version(available, project, version) for project, version in wanted}
    open_requirements: list[str] = []
    queue = list(chosen)
    while queue:
        project = queue.pop(0)
        for requirement in _requirements(chosen[project], target):
            name = canonicalize_name(requirement.name)
            origin = f"{project} {chosen[project][0].version}"
            if name not in available or target is None:
                open_requirements.append(f"{requirement} (from {origin})")
            elif name in chosen:
                _check_satisfies(chosen[name], requirement, origin)
            else:
                chosen[name] = _newest_satisfying(available[name], requirement, origin)
                queue.append(name)
    return Selection(chosen, open_requirements)


def _parse_request(
    text: str, available: Mapping[str, list[StoredWheel]]
) -> tuple[str, Version | None]:
    name, _, version = text.partition("==")
    project = canonicalize_name(name.strip())
    if project not in available:
        raise ConfigError(
            f"export: no project '{name.strip()}' in the wheelhouse; it has: {', '.join(available)}"
        )
    if not version:
        return project, None
    try:
        return project, Version(version.strip())
    except InvalidVersion as exc:
        raise ConfigError(f"export: '{text}' is not PROJECT or PROJECT==VERSION") from exc


def _version(
    available: Mapping[str, list[StoredWheel]], project: str, version: Version | None
) -> list[StoredWheel]:
    """Every file of one version of ``project``: the newest, or ``version``."""
    versions = sorted({Version(wheel.version) for wheel in available[project]})
    pick = versions[-1] if version is None else version
    if pick not in versions:
        known = ", ".join(str(v) for v in versions)
        raise ConfigError(f"export: the wheelhouse has {project} {known}, not {version}")
    return [wheel for wheel in available[project] if Version(wheel.version) == pick]


def _requires_dist(wheels: Iterable[StoredWheel]) -> list[Requirement]:
    """Requires-Dist of every file of a version, read from the PEP 658 sidecars."""
    found: dict[str, Requirement] = {}
    for wheel in wheels:
        raw, _ = parse_email(wheel.metadata.read_bytes())
        for text in raw.get("requires_dist", []):
            try:
                found.setdefault(text, Requirement(text))
            except InvalidRequirement as exc:
                raise WheelhouseError(
                    f"{wheel.metadata}: Requires-Dist '{text}' is invalid ({exc}); rebuild the wheel"
                ) from exc
    return list(found.values())


def _requirements(wheels: Sequence[StoredWheel], target: Target | None) -> list[Requirement]:
    """The requirements that apply on the target (all of them without one)."""
    requirements = _requires_dist(wheels)
    if target is None:
        return requirements
    environment = marker_environment(target)
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def _check_satisfies(wheels: Sequence[StoredWheel], requirement: Requirement, origin: str) -> None:
    version = wheels[0].version
    if not requirement.specifier.contains(version, prereleases=True):
        raise WheelhouseError(
            f"{origin} requires {requirement}, but {wheels[0].project} {version} is the one "
            "being exported; export a version that fits (PROJECT==VERSION)"
        )


def _newest_satisfying(
    wheels: Sequence[StoredWheel], requirement: Requirement, origin: str
) -> list[StoredWheel]:
    fitting = [w for w in wheels if requirement.specifier.contains(w.version, prereleases=True)]
    if not fitting:
        known = ", ".join(sorted({w.version for w in wheels}, key=Version))
        raise WheelhouseError(
            f"{origin} requires {requirement}, and the wheelhouse has only {known}; "
            "build a version that fits"
        )
    newest = max(Version(w.version) for w in fitting)
    return [w for w in fitting if Version(w.version) == newest]


def _pin(wheels: Sequence[StoredWheel]) -> Pin:
    return Pin(wheels[0].project, wheels[0].version, tuple(sorted(w.sha256 for w in wheels)))


# --- dependencies ----------------------------------------------------------------------------


def supported_tags(target: Target) -> set[Tag]:
    """Wheel tags an interpreter of the target accepts."""
    version = tuple(int(part) for part in target.python.split("."))
    platforms = platform_tags(target.manylinux)
    interpreter = "cp" + target.python.replace(".", "")
    return {*cpython_tags(version, platforms=platforms),
            *compatible_tags(version, interpreter, platforms)}  # fmt: skip


def _for_target(wheels: Sequence[StoredWheel], target: Target) -> Path:
    """The file of this version that installs on the target (the resolver needs one)."""
    supported = supported_tags(target)
    for wheel in wheels:
        if parse_wheel_filename(wheel.filename)[3] & supported:
            return wheel.path
    raise WheelhouseError(
        f"no file of {wheels[0].project} {wheels[0].version} installs on target {target.name} "
        f"(Python {target.python}, {target.manylinux}); build it for that target, pass "
        "--target (--no-deps pins every platform's files without resolving for any target)"
    )


def resolve_dependencies(wheels: Sequence[Path], target: Target, index_url: str) -> list[Pin]:
    """Exact versions and sha256 of everything ``wheels`` need on the target, by uv.

    ``uv pip compile --python-platform --python-version --generate-hashes`` resolves for
    the target's platform and Python (markers included) wherever export runs, and reads
    PEP 658 metadata from the index, so nothing large is downloaded. The wheelhouse
    files are direct requirements (``name @ file://…``), so they stay fixed and only
    what they leave open is taken from ``index_url``.
    """
    uv = shutil.which("uv")
    if uv is None:
        raise ConfigError("export resolves dependencies with uv, which is not on PATH: "
                          "pip install uv (or pass --no-deps)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sparkforge-export-") as tmp:
        requirements = Path(tmp) / "requirements.in"
        requirements.write_text("".join(
            f"{parse_wheel_filename(wheel.name)[0]} @ {wheel.resolve().as_uri()}\n"
            for wheel in wheels))  # fmt: skip
        argv = [uv, "pip", "compile", "--quiet", "--no-config", "--no-header", "--no-annotate",
                "--generate-hashes", "--only-binary", ":all:", "--python-version", target.python,
                "--python-platform", uv_platform(target), "--index-url", index_url,
                str(requirements)]  # fmt: skip
        # Only the index given here: uv's own settings from the environment stay out.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise WheelhouseError(
            f"cannot resolve the dependencies for target {target.name} from {index_url}: "
            f"{_uv_error(result.stderr)}; check --deps-index-url, or pass --no-deps"
        )
    own = {wheel.resolve().as_uri() for wheel in wheels}
    return sorted(_compiled_pins(result.stdout, index_url, own), key=lambda pin: pin.name)


def _compiled_pins(text: str, index_url: str, own: set[str]) -> list[Pin]:
    """The ``name==version --hash=…`` entries of uv's output. The wheelhouse's own
    ``name @ file://…`` lines (``own``) are pinned by export itself; any other direct
    URL cannot be pinned by hash here and is refused."""
    pins: list[Pin] = []
    for entry in text.replace("\\\n", " ").splitlines():
        words = entry.split()
        if not words or words[0].startswith("#"):
            continue
        if " @ " in entry:
            url = entry.split(" @ ", 1)[1].split()[0]
            if url in own:
                continue
            raise WheelhouseError(
                f"a dependency resolved to a direct URL ({entry.split()[0]} @ {url}), which "
                "export cannot pin by hash; pin it in the wheel's requirements or pass --no-deps"
            )
        requirement, _, version = words[0].partition("==")
        name = requirement.split("[", 1)[0]  # an extra does not change the file pinned
        hashes = tuple(sorted(w.removeprefix("--hash=sha256:") for w in words[1:]
                              if w.startswith("--hash=sha256:")))  # fmt: skip
        if not version or not hashes:
            raise WheelhouseError(
                f"{index_url} gives no sha256 for {words[0]}; it cannot be pinned, "
                "use an index that publishes hashes"
            )
        pins.append(Pin(canonicalize_name(name), version, hashes))
    return pins


_UV_DRAWING = " \u00d7\u2570\u2500\u25b6\u2502"  # the frame uv draws around its errors


def _uv_error(stderr: str) -> str:
    lines = [line.strip(_UV_DRAWING) for line in stderr.splitlines() if line.strip(_UV_DRAWING)]
    return " ".join(lines)[:400] or "uv failed without a message"


# --- output ----------------------------------------------------------------------------------


def render_requirements(
    built: Sequence[Pin],
    dependencies: Sequence[Pin],
    selection: Selection,
    options: ExportOptions,
) -> str:
    lines = [
        "# Written by `sparkforge export`. Each file is pinned by its sha256: pip installs",
        "# these exact bytes or nothing.",
        "#   pip install --require-hashes -r requirements.txt",
        f"# with pip configured for the team index only ({options.index_url}); see",
        "# docs/index-hosting.md for why no second index is configured.",
        "",
        f"# Built by sparkforge, from the team index {options.index_url}",
        *[line for pin in built for line in _pin_lines(pin)],
    ]
    if options.target is not None and dependencies:
        target = options.target
        lines += [
            "",
            f"# Dependencies, resolved by uv from {options.deps_index_url} for target "
            f"{target.name} (Python {target.python}, {target.manylinux}).",
            "# Mirror these files into the team index, or install them from there with",
            "# --require-hashes (the hashes decide which files can be installed).",
            *[line for pin in dependencies for line in _pin_lines(pin)],
        ]
    if options.target is None and selection.open_requirements:
        lines += ["", "# Not pinned (--no-deps):"]
        lines += [f"#   {text}" for text in selection.open_requirements]
    return "\n".join(lines) + "\n"


def _pin_lines(pin: Pin) -> list[str]:
    hashes = [f"    --hash=sha256:{digest}" for digest in pin.hashes]
    return [f"{pin.name}=={pin.version} \\", *[f"{h} \\" for h in hashes[:-1]], hashes[-1]]


def render_pip_conf(index_url: str) -> str:
    return (
        "# pip configuration for the sparkforge team index (written by `sparkforge export`).\n"
        "# One index and no extra-index-url: pip merges every index it is given and takes\n"
        "# the highest version found anywhere, so a second index could win for these\n"
        "# packages (docs/index-hosting.md). Dependencies must be mirrored into this index.\n"
        "[global]\n"
        f"index-url = {index_url}\n"
    )


def render_uv_toml(index_url: str, default_index_url: str) -> str:
    return (
        "# uv configuration for the sparkforge team index (written by `sparkforge export`).\n"
        '# "first-index": uv takes each package from the first index that has it, and the\n'
        "# team index comes first, so a package it serves is never taken from the default\n"
        "# index; everything else (nvidia-* and other dependencies) comes from there. It is\n"
        "# uv's default strategy, written out so nobody relaxes it by accident\n"
        "# (docs/index-hosting.md). Applies to `uv pip` and to projects.\n"
        'index-strategy = "first-index"\n'
        "\n"
        "[[index]]\n"
        'name = "sparkforge"\n'
        f"url = {json.dumps(index_url)}\n"
        "\n"
        "[[index]]\n"
        'name = "default"\n'
        f"url = {json.dumps(default_index_url)}\n"
        "default = true\n"
    )


def _write(path: Path | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from exc


def _check_url(url: str, option: str) -> None:
    if urlsplit(url).scheme not in ("http", "https", "file"):
        raise ConfigError(f"{option}: '{url}' is not an http(s):// or file:// index URL")
