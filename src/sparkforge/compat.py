"""CUDA's compatibility rules: will this device code run on the target GPU, and how?

The rules (CUDA programming guide, "Binary Compatibility" and "Feature
Availability"; family variants since CUDA 12.9):

- plain SASS ``sm_XY`` runs on compute capability X.Z for Z >= Y (same major);
- ``sm_XYa`` SASS runs only on X.Y;
- ``sm_XYf`` SASS runs on the same major from X.Y up;
- plain PTX ``compute_XY`` is JIT-compiled for any later arch, ``compute_XYf``
  only within the same major, ``compute_XYa`` only for X.Y itself.

The driver prefers SASS and JIT-compiles PTX only when no SASS fits, which
costs start-up time, so PTX-only coverage is reported as its own verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sparkforge.cudabin import CudaCode, LibraryReport


class Status(StrEnum):
    """How a library's code runs on the target, best first (see ``_RANK``)."""

    NATIVE = "native"
    COMPATIBLE = "compatible"
    FAMILY = "family"
    PTX_JIT = "ptx-jit"
    WILL_NOT_RUN = "will-not-run"
    NO_CUDA_CODE = "no-cuda-code"


# compatible and family are equally good (SASS, no JIT); family sorts after
# compatible only so that "best" and "worst" are deterministic.
_RANK = {
    status: rank
    for rank, status in enumerate(
        [Status.NATIVE, Status.COMPATIBLE, Status.FAMILY, Status.PTX_JIT, Status.WILL_NOT_RUN]
    )
}
_VARIANT_ORDER = {"": 0, "f": 1, "a": 2}
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


@dataclass(frozen=True)
class AuditResult:
    """The verdict for a whole wheel on one target arch."""

    target_sm: int
    status: Status
    libraries: tuple[LibraryAudit, ...]

    @property
    def ok(self) -> bool:
        """False only when some library has nothing the target can run."""
        return self.status is not Status.WILL_NOT_RUN

    @property
    def summary(self) -> str:
        """One line for the build log: the verdict and the library that decided it."""
        if self.status is Status.NO_CUDA_CODE:
            return f"{self.status}: no library has CUDA device code"
        decider = next(lib for lib in self.libraries if lib.verdict.status is self.status)
        warnings = sum(len(lib.warnings) for lib in self.libraries)
        noted = f"; {warnings} warning(s)" if warnings else ""
        return f"{self.status}: {decider.path_in_wheel}: {decider.verdict.explanation}{noted}"

    def to_json(self) -> dict[str, Any]:
        """A plain, stably keyed form for provenance and ``--json`` output."""
        return {
            "target": f"sm_{self.target_sm}",
            "verdict": str(self.status),
            "ok": self.ok,
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
            f"no SASS for {target}: the driver JIT-compiles {code.name} PTX at first load "
            "(slow start-up; needs a driver that knows this PTX version)"
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


def audit(reports: Sequence[LibraryReport], target_sm: int) -> AuditResult:
    """Judge every library; the wheel's status is the worst among those with code."""
    libraries = tuple(_audit_library(report, target_sm) for report in reports)
    judged = [lib.verdict.status for lib in libraries if lib.verdict.status in _RANK]
    status = max(judged, key=_RANK.__getitem__) if judged else Status.NO_CUDA_CODE
    return AuditResult(target_sm=target_sm, status=status, libraries=libraries)


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


def _audit_library(report: LibraryReport, target_sm: int) -> LibraryAudit:
    """Verdict for one library plus warnings about JIT and uncovered containers."""
    result = _library_verdict(report, target_sm)
    uncovered = [
        (codes, count)
        for codes, count in report.fatbins.items()
        if not any(classify(c, target_sm) for c in codes)
    ]
    missing = sum(count for _, count in uncovered)
    warnings: list[str] = []
    if result.status is Status.PTX_JIT:
        warnings.append(f"no SASS for sm_{target_sm}: every process pays PTX JIT at start-up")
    if missing and result.status is not Status.WILL_NOT_RUN:
        example = ", ".join(sorted({c.name for c in uncovered[0][0]}))
        warnings.append(
            f"{missing} of {report.fatbins.total()} fatbins have nothing for sm_{target_sm} "
            f"(e.g. only {example}): their kernels fail with 'no kernel image' if called"
        )
    return LibraryAudit(
        path_in_wheel=report.path_in_wheel,
        verdict=result,
        code=report.code,
        fatbins=report.fatbins.total(),
        fatbins_without_target_code=missing,
        warnings=tuple(warnings),
    )
