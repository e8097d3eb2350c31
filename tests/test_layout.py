"""The tree reads as the data flow: no module imports a later stage.

Stages, in order: util → config → lock → sources → build → wheel → wheelhouse →
verify → team; the library API (``sparkforge.api``) and the command line
(``sparkforge.cli``) sit above them all. docs/pipeline.md maps the same folders.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sparkforge"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"
STAGES = (
    "util",
    "config",
    "locking",
    "sources",
    "building",
    "wheel",
    "wheelhouse",
    "verify",
    "team",
)
TOP = ("api", "pipeline", "cli")


def _rank(module: str) -> int:
    """The stage of ``sparkforge.<part>...``; the package root itself (its version) is 0."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] in STAGES:
        return STAGES.index(parts[1])
    if parts[1] in TOP:
        return len(STAGES)
    raise AssertionError(f"{module}: not in any stage folder")


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every sparkforge module ``path`` imports, top-level or inside a function."""
    found = []
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    )
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "sparkforge" or module.startswith("sparkforge."):
                names = [f"{module}.{a.name}" for a in node.names]
                found += [(node.lineno, n if (PACKAGE.parent / n.replace(".", "/")).exists()
                           or (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                           else module) for n in names]  # fmt: skip
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sparkforge")]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("sparkforge")
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_stage_folder() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__", *TOP)]
    assert loose == [], f"modules outside the stage folders: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted([*STAGES, "cli"])


def test_no_module_imports_a_later_stage() -> None:
    against = []
    for path in _modules():
        name = _module_name(path)
        # The package root re-exports the API lazily (on attribute access): it sits on top.
        mine = len(STAGES) if name == "sparkforge" else _rank(name)
        for line, imported in _imports(path):
            if _rank(imported) > mine:
                against.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert not against, "\n".join(against)


def test_the_checker_sees_an_import_against_the_flow(tmp_path: Path) -> None:
    """The check above can fail: a stage-1 module importing the wheelhouse is caught."""
    bad = PACKAGE / "config" / "_layout_probe.py"
    bad.write_text("def f():\n    from sparkforge.wheelhouse.store import Wheelhouse\n")
    try:
        with pytest.raises(AssertionError, match=r"config/_layout_probe\.py:2 imports"):
            test_no_module_imports_a_later_stage()
    finally:
        bad.unlink()


def test_docs_pipeline_names_every_module() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.name not in ("__init__.py", "__main__.py") and str(p.relative_to(PACKAGE)) not in text
    ]
    assert missing == [], f"docs/pipeline.md does not place: {missing}"


def test_cli_start_up_imports_no_stage_past_config() -> None:
    """`sparkforge --help` stays fast: the parser loads no pipeline stage beyond config."""
    code = (
        "import sys, sparkforge.cli.app as m; m.build_parser();"
        "print(' '.join(sorted(n for n in sys.modules if n.startswith('sparkforge.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    late = [
        n
        for n in loaded
        if re.match(r"sparkforge\.(locking|sources|building|wheel|wheelhouse|verify|team|api)\b", n)
    ]
    assert late == []
