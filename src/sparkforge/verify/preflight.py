"""Preflight: find in minutes what would otherwise fail after hours of compile.

``sparkforge build RECIPE --preflight`` runs the build's line up to and
including upstream's configure step, offline and in the chosen runner, and then
checks what configure produced:

1. sources, assets and patches, verified (as the build does);
2. the runner and the build environment (as the build does);
3. the build front-end's own dependency check (pypa/build's
   ``check_dependencies``), where the recipe builds through it;
4. the configure commands the recipe declares (``[preflight] configure``),
   with no network: the container runner runs them with ``--network none``, the
   host runner in a new network namespace where it can (``unshare -rn``) and
   always with every proxy variable pointing at a closed port;
5. the checks: code for each GPU of the target in the generated CUDA flags
   (CUDA's compatibility rules, as the audit applies them), every promised
   feature on (``[preflight] expect``), and nothing downloaded.

The first problem is one line; nothing is compiled and the wheelhouse is not touched.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from sparkforge.building.plan import BuildPlan, prepare
from sparkforge.building.runners import HostRunner
from sparkforge.config.recipes import CONFIGURE_OUTPUT
from sparkforge.util.errors import BuildError, ConfigError, telling_line
from sparkforge.util.progress import BuildLog
from sparkforge.wheel import compat
from sparkforge.wheel.cudabin import CudaCode
from sparkforge.wheelhouse.needs import needed_wheels

#: Environment that makes any HTTP(S)/FTP download fail at once (port 9 is "discard").
OFFLINE_ENV = {
    name: "http://127.0.0.1:9"
    for name in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY")
} | {"no_proxy": "", "NO_PROXY": "", "GIT_ALLOW_PROTOCOL": "file"}  # fmt: skip

# What a configure step prints when it fetches something, or fails to.
_DOWNLOAD = re.compile(
    r"Performing download step|Cloning into|file DOWNLOAD|Downloading https?://|"
    r"Could not resolve host|Failed to connect to|Network is unreachable|"
    r"unable to access 'https?://|ProxyError|Connection refused.*:9\b",
    re.IGNORECASE,
)
_GENCODE = re.compile(r"arch=compute_(\d+)([af]?),code=(\[[^\]]*\]|[A-Za-z0-9_,]+)")
_SHORT_ARCH = re.compile(r"(?:-arch[= ]|--gpu-architecture[= ])sm_(\d+)([af]?)\b")
_CODE = re.compile(r"(sm|compute)_(\d+)([af]?)")

FRONTEND_CHECK = """\
import sys
try:
    import build
except ImportError:
    print("sparkforge-frontend: pypa/build is not in the build environment")
    sys.exit(3)
builder = build.ProjectBuilder(sys.argv[1])
missing = builder.check_dependencies("wheel")
for chain in sorted(missing):
    print("sparkforge-unmet: " + " -> ".join(chain))
sys.exit(1 if missing else 0)
"""


@dataclass
class PreflightResult:
    plan: BuildPlan
    passed: list[str] = field(default_factory=list)  # one line per check that passed
    durations: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    isolation: str = ""


def run(plan: BuildPlan, console: Console, *, upstream_needs: bool = False) -> PreflightResult:
    """Run the preflight of ``plan``; a problem is a BuildError with one line."""
    spec = plan.preflight
    if not spec.commands and spec.frontend is None:
        raise ConfigError(
            f"{plan.recipe.path}: recipe '{plan.recipe.name}' declares no [preflight] (configure "
            "commands or frontend); add upstream's configure step there"
        )
    log_path = plan.workspace.logs / f"preflight-{plan.log_path.name}"
    log = BuildLog(
        log_path, console, plan.workspace.expected_seconds(f"preflight:{plan.history_key}")
    )
    result = PreflightResult(plan)
    started = time.monotonic()
    label = f"{plan.recipe.name} {plan.version} preflight"
    try:
        prepare(plan, log, local_wheels=needed_wheels(plan, log if upstream_needs else None))
        env, wrap, result.isolation = _offline(plan)
        log.note(f"network: {result.isolation}")
        if spec.frontend is not None:
            with log.phase("front-end check"):
                result.passed.append(_frontend(plan, env, wrap, log, label))
        output: list[str] = []
        with log.phase("configure"):
            for argv in spec.commands:
                log.line(f"[sparkforge] $ {shlex.join(argv)}")

                def sink(line: str) -> None:
                    output.append(line)
                    log.line(line)

                code = plan.runner.run([*wrap, *argv], env=env, cwd=plan.source_dir, sink=sink)
                if code != 0:
                    fetched = _downloads(output)
                    why = (f"it tried to download ({fetched[0].strip()[:120]}); stage that input "
                           "as an asset" if fetched else _reason(output))  # fmt: skip
                    raise BuildError(
                        f"{label}: `{argv[0]} …` exited with {code}: {why}; log: {log_path}"
                    )
        with log.phase("inspect"):
            result.passed += _inspect(plan, output, label)
            for line in result.passed:
                log.note(f"ok: {line}")
    except BuildError:
        log.show_failure()
        raise
    finally:
        log.close()
    result.durations = dict(log.durations)
    result.seconds = time.monotonic() - started
    plan.workspace.record_durations(f"preflight:{plan.history_key}", log.durations)
    if not plan.options.keep_build_dir:
        shutil.rmtree(plan.build_dir, ignore_errors=True)
    return result


def _offline(plan: BuildPlan) -> tuple[dict[str, str], list[str], str]:
    """The environment and command prefix that keep configure offline, and how."""
    env = {**plan.env, **OFFLINE_ENV}
    if not isinstance(plan.runner, HostRunner):
        return env, [], "none (the container runs with --network none)"
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return env, [unshare, "-rn", "--"], "none (new network namespace: unshare -rn)"
    return env, [], "proxies point at a closed port (unshare -rn is not permitted here)"


def _frontend(plan: BuildPlan, env: dict[str, str], wrap: list[str], log: BuildLog,
              label: str) -> str:  # fmt: skip
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        log.line(line)

    directory = str(plan.preflight.frontend)
    argv = [*wrap, plan.preflight.python, "-c", FRONTEND_CHECK, directory]
    code = plan.runner.run(argv, env=env, cwd=plan.source_dir, sink=sink)
    unmet = [line.split(": ", 1)[1] for line in lines if line.startswith("sparkforge-unmet: ")]
    if code == 3:
        raise BuildError(
            f"{label}: the build environment has no pypa/build for the front-end check; add "
            f"build to build.requires in {plan.recipe.path}"
        )
    if unmet:
        raise BuildError(
            f"{label}: the build front-end (pypa/build) refuses the build environment, unmet: "
            f"{'; '.join(unmet)}; pin versions upstream accepts in {plan.recipe.path} "
            "build.requires (and re-lock)"
        )
    if code != 0:
        raise BuildError(f"{label}: the front-end check failed (exit {code}); see the log")
    return "the build front-end (pypa/build) finds every build requirement met"


def _inspect(plan: BuildPlan, output: list[str], label: str) -> list[str]:
    passed: list[str] = []
    fetched = _downloads(output)
    if fetched:
        raise BuildError(
            f"{label}: configure downloaded something ({fetched[0].strip()[:120]}); stage it as "
            f"an asset in {plan.recipe.path}"
        )
    passed.append("nothing was downloaded during configure")
    if plan.preflight.flags:
        files = [Path(p) for pattern in plan.preflight.flags for p in sorted(glob.glob(pattern))]
        if not files:
            raise BuildError(
                f"{label}: configure wrote none of {', '.join(plan.preflight.flags)}; check "
                f"[preflight] flags in {plan.recipe.path}"
            )
        codes = Counter[CudaCode]()
        for path in files:
            codes.update(cuda_codes(path.read_text(encoding="utf-8", errors="replace")))
        shown = ", ".join(sorted({c.name for c in codes})) or "no CUDA arch at all"
        for gpu in gpu_archs(plan):
            verdict = compat.verdict(codes, gpu)
            if verdict.status in (compat.Status.WILL_NOT_RUN, compat.Status.NO_CUDA_CODE):
                raise BuildError(
                    f"{label}: the generated CUDA flags ({', '.join(p.name for p in files)}) hold "
                    f"{shown}; nothing of it runs on sm_{gpu} ({plan.target.name}). Fix the arch "
                    f"list the recipe passes ({plan.recipe.path})"
                )
            passed.append(f"sm_{gpu}: {verdict.explanation} (generated flags: {shown})")
    for feature, file, pattern, absent in plan.preflight.expect:
        if file == CONFIGURE_OUTPUT:
            text, where = "\n".join(output), "the configure output"
        else:
            try:
                text, where = Path(file).read_text(encoding="utf-8", errors="replace"), file
            except OSError:
                raise BuildError(
                    f"{label}: configure wrote no {file}, where {feature} should be switched on"
                ) from None
        found = re.search(pattern, text, re.MULTILINE)
        if absent and found:
            raise BuildError(
                f"{label}: {feature} is off: {where} says {found[0].strip()[:120]!r}; the build "
                f"would silently lack it. Check what the builder provides ({plan.recipe.path})"
            )
        if not absent and not found:
            raise BuildError(
                f"{label}: {feature} is off: no line of {where} matches /{pattern}/; the build "
                f"would silently lack it. Check what the builder provides ({plan.recipe.path})"
            )
        shown = f"no /{pattern}/" if absent else f"/{pattern}/"
        passed.append(
            f"{feature} is on ({Path(where).name if file != CONFIGURE_OUTPUT else where}: {shown})"
        )
    return passed


def _reason(output: list[str]) -> str:
    """What a failed configure said: CMake's first error with its message, else the last
    line naming an error, else its last line."""
    lines = [line.strip() for line in output if line.strip()]
    for number, line in enumerate(lines):
        if line.startswith("CMake Error"):
            detail = lines[number + 1] if number + 1 < len(lines) else ""
            return f"{line} {detail}".strip()[:300]
    return telling_line(lines)[:300]


def _downloads(lines: list[str]) -> list[str]:
    return [line for line in lines if _DOWNLOAD.search(line)]


def gpu_archs(plan: BuildPlan) -> list[int]:
    """The GPUs the wheel must run on: the target's archs and those asked with --cuda-arch."""
    return sorted({a.sm for a in (*plan.target.cuda_archs, *plan.options.extra_archs)})


def cuda_codes(text: str) -> Counter[CudaCode]:
    """The device code nvcc flags in ``text`` embed: ``-gencode arch=…,code=…``,
    CMake's ``--generate-code=arch=…,code=[…]`` and ``-arch=sm_XY`` (SASS + PTX)."""
    found = Counter[CudaCode]()
    for match in _GENCODE.finditer(text):
        for kind, sm, variant in _CODE.findall(match[3]):
            found[CudaCode("sass" if kind == "sm" else "ptx", int(sm), variant)] += 1
    for match in _SHORT_ARCH.finditer(text):
        sm, variant = int(match[1]), match[2]
        found[CudaCode("sass", sm, variant)] += 1  # type: ignore[arg-type]
        found[CudaCode("ptx", sm, variant)] += 1  # type: ignore[arg-type]
    return found
