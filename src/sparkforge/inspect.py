"""``sparkforge inspect``: the CUDA code in a wheel or library and the target verdict.

Pure Python (no CUDA toolkit): the reader streams each ELF member of the wheel,
and CUDA's compatibility rules decide, per target arch, whether and how it runs.
Exit code 0 when it runs on every arch of the target, 1 when it will not.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .compat import AuditResult, audit
from .cudabin import scan_wheel
from .errors import ConfigError
from .targets import Target


def _code_cell(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counts.items()) or "—"


def inspect_command(path: Path, target: Target, *, as_json: bool, console: Console) -> int:
    if not path.exists():
        raise ConfigError(f"{path}: no such wheel or library")
    reports = scan_wheel(path)
    results: dict[str, AuditResult] = {a.name: audit(reports, a.sm) for a in target.cuda_archs}
    ok = all(result.ok for result in results.values())
    if as_json:
        print(
            json.dumps(
                {
                    "path": str(path),
                    "target": target.name,
                    "ok": ok,
                    "audits": {name: result.to_json() for name, result in results.items()},
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    for name, result in results.items():
        table = Table(title=f"{path.name} on {target.name} ({name})", title_justify="left")
        table.add_column("library", overflow="fold")
        table.add_column("device code (count)", overflow="fold")
        table.add_column("verdict", overflow="fold")
        for library in result.to_json()["libraries"]:
            if not library["code"]:
                continue
            verdict = f"{library['verdict']}: {library['explanation']}"
            for warning in library["warnings"]:
                verdict += f"\n[yellow]warning:[/] {warning}"
            table.add_row(library["path"], _code_cell(library["code"]), verdict)
        console.print(table)
        colour = "green" if result.ok else "red"
        console.print(f"[{colour}]{name}: {result.summary}[/]")
    return 0 if ok else 1
