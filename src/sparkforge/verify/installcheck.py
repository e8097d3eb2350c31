"""Wheels that install: does each published wheel's Requires-Dist resolve for the target?

``sparkforge check-install`` resolves every wheel of the wheelhouse (the newest of each
project, or those named) for the target's platform and Python with ``uv pip compile``
against the wheelhouse plus the package index, exactly as a user's ``pip install`` on
the target would see them. It fails, one line per wheel, when the requirements do not
resolve, or when a project this repository builds (torch, triton, …) would come from
the index instead of the wheelhouse: upstream's wheel is what the recipe exists to
replace (no CUDA on aarch64, no sm_121 code, a ptxas that does not know sm_121a).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from sparkforge.config.targets import Target, target_tags
from sparkforge.util.errors import ConfigError
from sparkforge.wheelhouse.store import Wheelhouse

_PINNED = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)")


@dataclass(frozen=True)
class InstallCheck:
    wheel: str
    ok: bool
    line: str  # what resolved, or why not


def uv_platform(target: Target) -> str:
    """uv's name for the target platform: ``aarch64-manylinux_2_39``."""
    return f"{target.machine}-{target.manylinux.removesuffix('_' + target.machine)}"


def check(
    house: Wheelhouse,
    target: Target,
    projects: list[str],
    built_here: dict[str, str],
    index_url: str | None = None,
) -> list[InstallCheck]:
    """Resolve each chosen wheel; ``built_here`` maps distributions to their recipes."""
    uv = shutil.which("uv")
    if uv is None:
        raise ConfigError("check-install resolves with uv, which is not on PATH: pip install uv")
    wanted = {canonicalize_name(p) for p in projects}
    tags = target_tags(target)
    newest: dict[str, Path] = {}
    for wheel in sorted(house.files.glob("*.whl")):
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        if not wheel_tags & tags or (wanted and name not in wanted):
            continue
        if name not in newest or version > parse_wheel_filename(newest[name].name)[1]:
            newest[name] = wheel
    if wanted - set(newest):
        missing = sorted(wanted - set(newest))[0]
        raise ConfigError(
            f"{house.root}: no {missing} wheel for {target.name} ({target.manylinux})"
        )
    here = {
        (canonicalize_name(n), str(v))
        for n, v, _, _ in (parse_wheel_filename(w.name) for w in house.files.glob("*.whl"))
    }
    results = []
    for project, wheel in sorted(newest.items()):
        version = parse_wheel_filename(wheel.name)[1]
        argv = [uv, "pip", "compile", "-", "--quiet", "--no-header", "--no-annotate",
                "--python-platform", uv_platform(target), "--python-version", target.python,
                "--find-links", str(house.files)]  # fmt: skip
        if index_url:
            argv += ["--index-url", index_url]
        done = subprocess.run(argv, input=f"{project}=={version}\n", capture_output=True, text=True)
        if done.returncode != 0:
            reason = " ".join(done.stderr.split())[:400]
            results.append(
                InstallCheck(wheel.name, False, f"does not resolve for {target.name}: {reason}")
            )
            continue
        pins = [m.groups() for m in map(_PINNED.match, done.stdout.splitlines()) if m]
        from_index = [
            f"{n}=={v}" for n, v in pins
            if canonicalize_name(n) in built_here and (canonicalize_name(n), v) not in here
        ]  # fmt: skip
        if from_index:
            first = from_index[0].split("==")[0]
            results.append(InstallCheck(wheel.name, False,
                f"would install {', '.join(from_index)} from the index, not this wheelhouse; "
                f"build it first (nox -s build-{built_here[canonicalize_name(first)]} with that version)"))  # fmt: skip
            continue
        local = sorted(n for n, v in pins if (canonicalize_name(n), v) in here)
        results.append(InstallCheck(wheel.name, True,
            f"{len(pins)} packages resolve for {uv_platform(target)} / Python {target.python}; "
            f"from this wheelhouse: {', '.join(local)}"))  # fmt: skip
    return results
