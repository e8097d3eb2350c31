"""``sparkforge inspect``: the CUDA code in a wheel or file and the target verdict.

Pure Python (no CUDA toolkit): the reader walks each file that can hold device
code, and CUDA's compatibility rules decide, per target arch, whether and how
it runs (:mod:`compat`). The wheel's platform tag is checked against the
target's CPU first. Exit code 0 when it runs on every arch of the target, 1
when it will not.

Imports stay light (no rich, no pydantic): the command is meant to answer in
about the time a CUDA tool takes to start (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sparkforge.util.errors import ConfigError
from sparkforge.wheel.compat import AuditResult, Status, audit, rank
from sparkforge.wheel.cudabin import LibraryReport, scan_wheel


@dataclass(frozen=True)
class Judgement:
    """A wheel (or file) judged for one target: the platform check and one audit per arch."""

    path: Path
    target: str
    machine: str
    platform_problem: str | None
    audits: dict[str, AuditResult]

    @property
    def ok(self) -> bool:
        return self.platform_problem is None and all(a.ok for a in self.audits.values())

    @property
    def worst_audit(self) -> AuditResult | None:
        """The arch whose verdict is worst: failing before passing, then by rank."""
        return max(self.audits.values(), key=lambda a: (not a.ok, rank(a.status)), default=None)

    @property
    def verdict(self) -> str:
        """One word for tables: the worst arch's status (wrong-platform first)."""
        if self.platform_problem is not None:
            return str(Status.WRONG_PLATFORM)
        worst = self.worst_audit
        return str(worst.status) if worst else str(Status.NO_CUDA_CODE)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "target": self.target,
            "ok": self.ok,
            "platform_problem": self.platform_problem,
            "audits": {name: result.to_json() for name, result in self.audits.items()},
        }


def wheel_platforms(name: str) -> list[str]:
    """The platform tags in a wheel's file name (``manylinux_2_28_aarch64``, ``any``)."""
    parts = name.removesuffix(".whl").split("-")
    return parts[-1].split(".") if name.endswith(".whl") and len(parts) >= 5 else []


def platform_problem(name: str, machine: str) -> str | None:
    """Why a wheel cannot install on the target's CPU, or None when one tag fits."""
    platforms = wheel_platforms(name)
    if not platforms or any(p == "any" or p.endswith(f"_{machine}") for p in platforms):
        return None
    return f"its platform tag {'.'.join(platforms)} is not for {machine}: pip will not install it"


def judge(
    path: Path,
    target_name: str,
    machine: str,
    archs: dict[str, int],
    *,
    cuda_required: bool = True,
    reports: list[LibraryReport] | None = None,
) -> Judgement:
    """Read ``path`` (unless ``reports`` are given) and judge it for each of ``archs``."""
    if reports is None:
        reports = scan_wheel(path)
    audits = {
        name: audit(reports, sm, machine=machine, cuda_required=cuda_required)
        for name, sm in archs.items()
    }
    return Judgement(path, target_name, machine, platform_problem(path.name, machine), audits)


def _code_cell(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counts.items()) or "-"


def render(judgement: Judgement, out: TextIO) -> None:
    """The human form: per arch, each file with code, its role and verdict, then the reasoning."""
    if judgement.platform_problem:
        out.write(f"{judgement.path.name}: wrong-platform: {judgement.platform_problem}\n")
    for name, result in judgement.audits.items():
        out.write(f"\n{judgement.path.name} on {judgement.target} ({name})\n")
        for library in result.to_json()["libraries"]:
            if not library["code"]:
                continue  # host-only libraries: counted in the reasoning when they decide
            mark = "*" if library["decides"] else " "
            out.write(f" {mark} {library['path']}  [{library['role']}]\n")
            out.write(f"     code: {_code_cell(library['code'])}\n")
            out.write(f"     {library['verdict']}: {library['explanation']}\n")
            for warning in library["warnings"]:
                out.write(f"     warning: {warning}\n")
        for line in result.reasoning:
            out.write(f"   {line}\n")
        out.write(f"{'ok' if result.ok else 'FAIL'} {name}: {result.summary}\n")
    out.write("(* marks the files that decide the verdict)\n")


def inspect_command(
    path: Path,
    target_name: str,
    machine: str,
    archs: dict[str, int],
    *,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout  # looked up now: tests and callers may have replaced it
    if not path.exists():
        raise ConfigError(f"{path}: no such wheel or file")
    judgement = judge(path, target_name, machine, archs)
    if as_json:
        out.write(json.dumps(judgement.to_json(), indent=2) + "\n")
    else:
        render(judgement, out)
    return 0 if judgement.ok else 1
