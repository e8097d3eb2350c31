"""check-install: each wheel's Requires-Dist resolves for the target platform against the
wheelhouse plus PyPI (real uv, real PyPI), and what this repository builds must come from
the wheelhouse, not the index."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CliRunner, copy_project
from test_wheels import make_wheel

pytestmark = pytest.mark.network


def _house(tmp_path: Path) -> Path:
    files = tmp_path / "wh" / "files"
    files.mkdir(parents=True)
    return files


def _check(cli: CliRunner, project: Path, tmp_path: Path, *projects: str):  # type: ignore[no-untyped-def]
    return cli("check-install", *projects, "--target", "dgx-spark", "--project", project,
               "--workspace", tmp_path / "ws", "--wheelhouse", tmp_path / "wh")  # fmt: skip


def test_requirements_that_resolve_for_the_spark_pass(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    make_wheel(_house(tmp_path), "demo_ok", "1.0", {"demo_ok/__init__.py": b""},
               requires=["packaging==25.0", "numpy==2.3.5"])  # fmt: skip
    result = _check(cli, project, tmp_path)
    assert result.code == 0, result.out + result.err
    assert "ok demo_ok-1.0-py3-none-any.whl: 3 packages resolve for aarch64-manylinux_2_39" in (
        result.out
    )


def test_a_requirement_nothing_provides_fails_naming_it(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    make_wheel(_house(tmp_path), "demo_broken", "1.0", {"demo_broken/__init__.py": b""},
               requires=["sparkforge-test-no-such-distribution==1.0"])  # fmt: skip
    result = _check(cli, project, tmp_path)
    assert result.code == 1
    assert "fails demo_broken-1.0-py3-none-any.whl: does not resolve for dgx-spark" in result.out
    assert "sparkforge-test-no-such-distribution" in result.out


def test_a_built_here_dependency_must_come_from_the_wheelhouse(
    cli: CliRunner, tmp_path: Path
) -> None:
    """A vLLM-like wheel needs torch==2.9.0: PyPI's aarch64 torch 2.9.0 has no CUDA, so
    resolving it from the index is a failure until this wheelhouse holds the built one."""
    project = copy_project(tmp_path / "project")
    files = _house(tmp_path)
    make_wheel(files, "demo_engine", "1.0", {"demo_engine/__init__.py": b""},
               requires=["torch==2.9.0"])  # fmt: skip
    result = _check(cli, project, tmp_path, "demo-engine")
    assert result.code == 1, result.out
    assert "would install torch==2.9.0 from the index, not this wheelhouse" in result.out
    assert "nox -s build-torch" in result.out

    make_wheel(files, "torch", "2.9.0+cu130", {"torch/__init__.py": b""},
               tag="cp312-cp312-manylinux_2_39_aarch64")  # fmt: skip
    result = _check(cli, project, tmp_path, "demo-engine")
    assert result.code == 0, result.out + result.err
    assert "from this wheelhouse: demo-engine, torch" in result.out


def test_a_project_not_in_the_wheelhouse_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    _house(tmp_path)
    result = _check(cli, project, tmp_path, "vllm")
    assert result.code == 2
    assert "no vllm wheel for dgx-spark (manylinux_2_39_aarch64)" in result.err
