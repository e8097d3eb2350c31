"""CUDA's compatibility rules: will this device code run on the target GPU, and how?

The rules (CUDA programming guide, "Binary Compatibility" and "Feature
Availability"; family variants since CUDA 12.9):

- plain SASS ``sm_XY`` runs on compute capability X.Z for Z >= Y (same major);
- ``sm_XYa`` SASS runs only on X.Y;
- ``sm_XYf`` SASS runs on the same major from X.Y up;
- plain PTX ``compute_XY`` is JIT-compiled for any later arch, ``compute_XYf``
  only within the same major, ``compute_XYa`` only for X.Y itself.

The driver prefers SASS and JIT-compiles PTX only when no SASS fits. It keeps
the result in its compute cache (``~/.nv/ComputeCache`` unless ``CUDA_CACHE_PATH``
says otherwise), so the compile is paid at the first load on a machine and again
only when the cache is disabled, evicted or invalidated by a driver update
(CUDA programming guide, "Just-in-Time Compilation"); PTX-only coverage is
reported as its own verdict.

A wheel's verdict is decided by what the package needs (see :func:`audit`):
host libraries built for generic archs, and standalone device code as one
body; a library built only for arch-specific or family targets (``sm_100f``,
``sm_90a``) is an optional per-GPU module that the package loads only where it
runs, so it is reported but decides nothing while other code does. A wheel
with no device code fails a GPU target, and host code for another CPU fails
every target.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sparkforge.wheel.cudabin import CudaCode, LibraryReport


class Status(StrEnum):
    """How a library's code runs on the target, best first (see ``_RANK``)."""

    NATIVE = "native"
    COMPATIBLE = "compatible"
    FAMILY = "family"
    PTX_JIT = "ptx-jit"
    WILL_NOT_RUN = "will-not-run"
    WRONG_PLATFORM = "wrong-platform"
    NO_CUDA_CODE = "no-cuda-code"


class Role(StrEnum):
    """What a file is to the package, which decides whether its verdict decides the wheel's."""

    CORE = "core"  # a host library with code for generic archs: the package needs it
    PER_ARCH = "per-arch"  # only arch-specific/family code: loaded by the package where it runs
    DEVICE_CODE = "device-code"  # standalone .cubin/.fatbin/.ptx files, judged as one body
    HOST = "host"  # no device code


# compatible and family are equally good (SASS, no JIT); family sorts after
# compatible only so that "best" and "worst" are deterministic.
_RANK = {
    status: rank
    for rank, status in enumerate(
        [
            Status.NATIVE,
            Status.COMPATIBLE,
            Status.FAMILY,
            Status.PTX_JIT,
            Status.WILL_NOT_RUN,
            Status.WRONG_PLATFORM,
        ]
    )
}
_VARIANT_ORDER = {"": 0, "f": 1, "a": 2}


def rank(status: Status) -> int:
    """How bad a status is (higher: worse); no device code ranks below every verdict."""
    return _RANK.get(status, -1)


_SHOWN_ARCHS = 6


@dataclass(frozen=True)
class Verdict:
    """The outcome for one body of code: its status, the code the GPU will use, and why."""

    status: Status
    runs: CudaCode | None
    explanation: str


@dataclass(frozen=True)
class LibraryAudit:
    """One library's verdict plus the containers that have nothing for the target.

    A container without usable code means some kernels (one translation unit's)
    fail with "no kernel image" even when the library as a whole runs. This is a
    warning, not a failure: arch-specific kernels (e.g. sm_90a-only Hopper
    paths) are legitimately absent elsewhere and guarded at run time.
    """

    path_in_wheel: str
    verdict: Verdict
    code: Mapping[CudaCode, int]
    fatbins: int
    fatbins_without_target_code: int
    warnings: tuple[str, ...]
    role: Role = Role.CORE
    decides: bool = True


@dataclass(frozen=True)
class AuditResult:
    """The verdict for a whole wheel on one target arch."""

    target_sm: int
    status: Status
    libraries: tuple[LibraryAudit, ...]
    reasoning: tuple[str, ...] = ()
    cuda_required: bool = True

    @property
    def ok(self) -> bool:
        """False when what the package needs has nothing the target can run, when the
        host code is for another CPU, or when a GPU package has no device code at all."""
        if self.status is Status.NO_CUDA_CODE:
            return not self.cuda_required
        return self.status not in (Status.WILL_NOT_RUN, Status.WRONG_PLATFORM)

    @property
    def summary(self) -> str:
        """One line for the build log: the verdict and the library that decided it."""
        if self.status is Status.NO_CUDA_CODE:
            return f"{self.status}: no library has CUDA device code"
        decider = next(
            lib for lib in self.libraries if lib.decides and lib.verdict.status is self.status
        )
        warnings = sum(len(lib.warnings) for lib in self.libraries)
        noted = f"; {warnings} warning(s)" if warnings else ""
        return f"{self.status}: {decider.path_in_wheel}: {decider.verdict.explanation}{noted}"

    def to_json(self) -> dict[str, Any]:
        """A plain, stably keyed form for provenance and ``--json`` output."""
        return {
            "target": f"sm_{self.target_sm}",
            "verdict": str(self.status),
            "ok": self.ok,
            "reasoning": list(self.reasoning),
            "libraries": [_library_json(library) for library in self.libraries],
        }


def _library_json(library: LibraryAudit) -> dict[str, Any]:
    """One library as JSON: code counts by name (compressed or not, added up)."""
    counts: dict[str, int] = {}
    for code, count in sorted(library.code.items()):
        counts[code.name] = counts.get(code.name, 0) + count
    runs = library.verdict.runs
    return {
        "path": library.path_in_wheel,
        "role": str(library.role),
        "decides": library.decides,
        "verdict": str(library.verdict.status),
        "runs": runs.name if runs else None,
        "explanation": library.verdict.explanation,
        "code": counts,  # in arch order (CudaCode sorts by kind, then SM number)
        "fatbins": library.fatbins,
        "fatbins_without_target_code": library.fatbins_without_target_code,
        "warnings": list(library.warnings),
    }


def classify(code: CudaCode, target_sm: int) -> Status | None:
    """How ``code`` runs on ``target_sm``, or None when it cannot run there."""
    same_major = code.sm // 10 == target_sm // 10
    if code.kind == "sass":
        if code.variant == "a" or code.sm == target_sm:
            return Status.NATIVE if code.sm == target_sm else None
        if not same_major or code.sm > target_sm:
            return None
        return Status.FAMILY if code.variant == "f" else Status.COMPATIBLE
    usable = {
        "": code.sm <= target_sm,
        "f": same_major and code.sm <= target_sm,
        "a": code.sm == target_sm,
    }[code.variant]
    return Status.PTX_JIT if usable else None


def verdict(code: Mapping[CudaCode, int], target_sm: int) -> Verdict:
    """Pick the code the driver would use on ``target_sm`` and say how it runs."""
    if not code:
        return Verdict(Status.NO_CUDA_CODE, None, "no CUDA device code")
    candidates = [(status, c) for c in code if (status := classify(c, target_sm)) is not None]
    if not candidates:
        return Verdict(Status.WILL_NOT_RUN, None, _explain_none(code, target_sm))
    status, best = min(
        candidates, key=lambda pair: (_RANK[pair[0]], -pair[1].sm, _VARIANT_ORDER[pair[1].variant])
    )
    return Verdict(status, best, _explain(status, best, target_sm))


def _explain(status: Status, code: CudaCode, target_sm: int) -> str:
    """One line saying which code runs on the target and why it may."""
    target = f"sm_{target_sm}"
    reasons = {
        Status.NATIVE: f"{target} runs {code.name} SASS (built for exactly this arch)",
        Status.COMPATIBLE: f"{target} runs {code.name} SASS (same major, older minor)",
        Status.FAMILY: f"{target} runs {code.name} SASS (family code for {code.sm // 10}.x)",
        Status.PTX_JIT: (
            f"no SASS for {target}: the driver JIT-compiles {code.name} PTX at the first load "
            "and caches the result (needs a driver that knows this PTX version)"
        ),
    }
    return reasons[status]


def _explain_none(code: Mapping[CudaCode, int], target_sm: int) -> str:
    """Say what was found instead (newest archs first, at most a few) and what would fix it."""
    names = sorted({c.name: c.sm for c in code}.items(), key=lambda item: (-item[1], item[0]))
    found = ", ".join(name for name, _ in names[:_SHOWN_ARCHS])
    if len(names) > _SHOWN_ARCHS:
        found += f" and {len(names) - _SHOWN_ARCHS} more"
    major = target_sm // 10
    older = f" (or sm_{major}0 / sm_{major}0f)" if target_sm % 10 else ""
    return f"nothing here runs on sm_{target_sm} (found {found}): add sm_{target_sm} SASS{older}"


def audit(
    reports: Sequence[LibraryReport],
    target_sm: int,
    *,
    machine: str | None = None,
    cuda_required: bool = True,
) -> AuditResult:
    """Judge every file, then the wheel by what the package needs.

    The wheel's status is the worst among the files that decide it: core host
    libraries and the standalone device code (one body, like a library whose
    containers are the files). Per-arch modules decide only when nothing else
    has code. ``machine`` is the target CPU: a host library for another CPU is
    ``wrong-platform`` whatever its device code.
    """
    libraries_in = [r for r in reports if r.kind == "library"]
    standalone = [r for r in reports if r.kind != "library"]
    judged = [_audit_library(report, target_sm, machine) for report in libraries_in]
    if standalone:
        judged.append(_audit_library(_device_code_body(standalone), target_sm, None))
    with_code = [lib for lib in judged if lib.role is not Role.HOST]
    # A per-GPU module decides when it is built for the target's generation (its code has
    # the target's major): it is then meant to run there, and a build that got it wrong
    # must not pass the gate.
    deciding = [
        lib for lib in with_code
        if lib.role is not Role.PER_ARCH or any(c.sm // 10 == target_sm // 10 for c in lib.code)
    ] or with_code  # fmt: skip
    wrong = [lib for lib in judged if lib.verdict.status is Status.WRONG_PLATFORM]
    reasoning: list[str] = []
    if wrong:
        deciding = wrong
        reasoning.append(
            f"{len(wrong)} librar{'y is' if len(wrong) == 1 else 'ies are'} built for another "
            f"CPU than the target's {machine} (e.g. {wrong[0].path_in_wheel})"
        )
    libraries = tuple(
        dataclasses.replace(lib, decides=any(lib is d for d in deciding)) for lib in judged
    )
    statuses = [lib.verdict.status for lib in libraries if lib.decides]
    status = max(statuses, key=_RANK.__getitem__) if statuses else Status.NO_CUDA_CODE
    if not wrong:
        reasoning.extend(_reasoning(libraries, status, target_sm, cuda_required))
    return AuditResult(
        target_sm=target_sm,
        status=status,
        libraries=libraries,
        reasoning=tuple(reasoning),
        cuda_required=cuda_required,
    )


def _reasoning(
    libraries: Sequence[LibraryAudit], status: Status, target_sm: int, cuda_required: bool
) -> list[str]:
    """Say which files decided the verdict and why the others did not."""
    deciding = [lib for lib in libraries if lib.decides]
    if not deciding:
        return [
            "no file holds CUDA device code: "
            + ("a CPU-only build, which does not use the GPU" if cuda_required
               else "none is expected (the package compiles its kernels at run time)")
        ]  # fmt: skip
    roles = Counter(str(lib.role) for lib in deciding)
    lines = [
        f"decided by {', '.join(f'{n} {role}' for role, n in sorted(roles.items()))} "
        f"file(s); the worst of them: {status}"
    ]
    optional = [lib for lib in libraries if lib.role is Role.PER_ARCH and not lib.decides]
    for lib in optional:
        archs = ", ".join(sorted({c.name for c in lib.code}))
        lines.append(
            f"not deciding: {lib.path_in_wheel} is a per-GPU module for other GPU generations "
            f"(only {archs}); the package loads it where it runs: {lib.verdict.status} on "
            f"sm_{target_sm}"
        )
    return lines


def _device_code_body(reports: Sequence[LibraryReport]) -> LibraryReport:
    """Standalone device-code files as one body: each file is one container."""
    kinds = Counter(posixpath.splitext(r.path_in_wheel)[1].lstrip(".") or r.kind
                    for r in reports)  # fmt: skip
    tops = {r.path_in_wheel.split("/", 1)[0] for r in reports if "/" in r.path_in_wheel}
    where = (
        f"{tops.pop()}/ " if len(tops) == 1 and all("/" in r.path_in_wheel for r in reports) else ""
    )
    described = ", ".join(f"{count} .{kind}" for kind, count in sorted(kinds.items()))
    code: Counter[CudaCode] = Counter()
    fatbins: Counter[frozenset[CudaCode]] = Counter()
    for report in reports:
        code.update(report.code)
        fatbins.update(report.fatbins)
    return LibraryReport(f"{where}({described} files)", code, fatbins, kind="cubin")


def _library_verdict(report: LibraryReport, target_sm: int) -> Verdict:
    """The worst verdict over the library's fatbin containers that have usable code.

    Each container is one translation unit, and the driver picks code per
    container: one sm_121a cubin among 475 containers that carry sm_120 does not
    make a library native. Containers with nothing usable are reported as
    warnings (arch-specific kernels, e.g. sm_90a-only, are missing elsewhere by
    design); only a library where no container is usable will not run.
    """
    if not report.fatbins:
        return verdict(report.code, target_sm)
    judged = [
        (verdict(dict.fromkeys(codes, 1), target_sm), count)
        for codes, count in sorted(report.fatbins.items(), key=lambda item: sorted(item[0]))
    ]
    usable = [(v, count) for v, count in judged if v.status is not Status.WILL_NOT_RUN]
    if not usable:
        return verdict(report.code, target_sm)
    worst = max((v for v, _ in usable), key=lambda v: _RANK[v.status])
    total = sum(count for _, count in usable)
    same = sum(count for v, count in usable if v == worst)
    if same == total:
        return worst
    others: Counter[str] = Counter()
    for v, count in usable:
        if v != worst and v.runs is not None:
            kind = "PTX" if v.runs.kind == "ptx" else "SASS"
            others[f"{v.runs.name} {kind}"] += count
    rest = ", ".join(f"{name} in {count}" for name, count in sorted(others.items()))
    return Verdict(
        worst.status, worst.runs, f"{worst.explanation} in {same} of {total} fatbins; {rest}"
    )


def _role(report: LibraryReport) -> Role:
    if not report.code:
        return Role.HOST  # nothing loadable (host code, or LTO IR only)
    if report.kind != "library":
        return Role.DEVICE_CODE
    if all(code.variant for code in report.code):
        return Role.PER_ARCH
    return Role.CORE


def _audit_library(report: LibraryReport, target_sm: int, machine: str | None) -> LibraryAudit:
    """Verdict for one library plus warnings about JIT and uncovered containers."""
    role = _role(report)
    if machine is not None and report.machine is not None and report.machine != machine:
        return LibraryAudit(
            path_in_wheel=report.path_in_wheel,
            verdict=Verdict(
                Status.WRONG_PLATFORM,
                None,
                f"host code for {report.machine} CPUs; the target runs {machine}",
            ),
            code=report.code,
            fatbins=report.fatbins.total(),
            fatbins_without_target_code=0,
            warnings=(),
            role=role,
        )
    result = _library_verdict(report, target_sm)
    uncovered = [
        (codes, count)
        for codes, count in report.fatbins.items()
        if not any(classify(c, target_sm) for c in codes)
    ]
    missing = sum(count for _, count in uncovered)
    unit = "fatbins" if report.kind == "library" else "files"
    warnings: list[str] = []
    if result.status is Status.PTX_JIT:
        warnings.append(
            f"no SASS for sm_{target_sm}: the first load on each machine JIT-compiles PTX (the "
            "driver caches it; a disabled or full cache, or a new driver, pays it again)"
        )
    if missing and result.status is not Status.WILL_NOT_RUN:
        example = ", ".join(sorted({c.name for c in uncovered[0][0]}))
        warnings.append(
            f"{missing} of {report.fatbins.total()} {unit} have nothing for sm_{target_sm} "
            f"(e.g. only {example}): their kernels fail with 'no kernel image' if called"
        )
    return LibraryAudit(
        path_in_wheel=report.path_in_wheel,
        verdict=result,
        code=report.code,
        fatbins=report.fatbins.total(),
        fatbins_without_target_code=missing,
        warnings=tuple(warnings),
        role=role,
    )
