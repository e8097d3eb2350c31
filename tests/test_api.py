"""The library API: the calls a script or CI job makes are the ones the CLI makes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import sparkforge
from conftest import CliRunner
from sparkforge.util.errors import ConfigError, SparkforgeError

pytestmark = pytest.mark.network  # the tiny recipe's lock resolves flit_core from PyPI once


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_the_api_plans_builds_and_finds_up_to_date(
    cli: CliRunner, tiny: Path, shared_workspace: Path, tmp_path: Path
) -> None:
    where = {"project": tiny, "workspace": shared_workspace, "wheelhouse": tmp_path / "house"}
    plan = sparkforge.plan("tiny", "hopper", **{k: str(v) for k, v in where.items()})  # strings too
    dry = cli("build", "tiny", "--target", "hopper", "--dry-run", "--project", tiny,
              "--workspace", shared_workspace, "--wheelhouse", tmp_path / "house")  # fmt: skip
    assert dry.code == 0, dry.err
    assert plan.build_key == json.loads(dry.out)["build_key"]  # the same settings, the same key

    console = _quiet()
    built = sparkforge.build("tiny", "hopper", console=console, **where)
    assert built.status == "built" and built.wheel is not None
    assert (tmp_path / "house" / "files" / built.detail).is_file()
    assert "published" in console.file.getvalue()  # type: ignore[attr-defined]
    again = sparkforge.build("tiny", "hopper", console=_quiet(), **where)
    assert again.status == "up to date" and again.detail == built.detail

    outcomes = sparkforge.build_all("hopper", ["tiny"], console=_quiet(), **where)
    assert [(o.recipe, o.status) for o in outcomes] == [("tiny", "up to date")]

    judgement = sparkforge.inspect(tmp_path / "house" / "files" / built.detail, "hopper",
                                   project=tiny)  # fmt: skip
    assert judgement.verdict == "no-cuda-code" and not judgement.ok


def test_api_errors_are_one_line_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no recipe 'tinny'.*did you mean 'tiny'"):
        sparkforge.plan("tinny", "hopper", project=tiny, workspace=tmp_path / "ws")
    with pytest.raises(SparkforgeError, match="--cuda-arch"):
        sparkforge.plan("tiny", "hopper", project=tiny, workspace=tmp_path / "ws",
                        cuda_archs=("999",))  # fmt: skip
    with pytest.raises(ConfigError, match="no such wheel"):
        sparkforge.inspect(tmp_path / "missing.whl", "hopper", project=tiny)
    with pytest.raises(TypeError):
        sparkforge.plan("tiny", "hopper", project=tiny, no_such_setting=1)
