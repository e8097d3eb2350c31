"""Dependency order: a recipe's needs are built (or found up to date) first, a
rebuilt need makes its dependents stale, and build-all reports a table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import CliRunner, one_error_line

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once


def _add_dependent(project: Path, name: str = "tiny2", needs: str = "tiny") -> None:
    """A second recipe, built from the same source, that needs ``needs``."""
    text = (project / "recipes" / "tiny" / "recipe.toml").read_text()
    text = text.replace('name = "tiny"', f'name = "{name}"').replace(
        "cuda = false", f'cuda = false\nneeds = ["{needs}"]'
    )
    # Same source, so another local label keeps the wheel names apart.
    text = text.replace("[build]\n", f'[build]\nlocal_version = "{name}"\n')
    assert f'local_version = "{name}"' in text
    (project / "recipes" / name).mkdir()
    (project / "recipes" / name / "recipe.toml").write_text(text)


def _lock(cli: CliRunner, project: Path, workspace: Path, *names: str) -> None:
    assert cli("lock", *names, "--project", project, "--workspace", workspace).code == 0


def test_needs_are_built_first_and_stale_dependents_rebuild(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    _add_dependent(tiny)
    _lock(cli, tiny, workspace, "tiny2")
    common = ["--target", "hopper", "--project", tiny, "--workspace", workspace]
    plan = json.loads(cli("build", "tiny2", *common, "--dry-run").out)
    assert list(plan["needs"]) == ["tiny"]
    first = cli("build", "tiny2", *common)
    assert first.code == 0, first.err
    assert first.out.index("building tiny 1.0.0") < first.out.index("building tiny2 1.0.0")
    assert "need tiny: built" in first.out
    again = cli("build", "tiny2", *common)
    assert "need tiny: up to date" in again.out and again.out.count("up to date:") == 2

    # A changed need (another build key) makes the recipe that builds against it stale.
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text("# touched\n" + recipe.read_text())
    third = cli("build", "tiny2", *common)
    assert "need tiny: built" in third.out and "building tiny2 1.0.0" in third.out


def test_build_all_reports_a_table_and_skips_what_needs_a_failure(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    _add_dependent(tiny)
    _lock(cli, tiny, workspace, "tiny2")
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text(
        recipe.read_text().replace(
            'command = ["', 'command = ["{python} -c \\"raise SystemExit(3)\\"", "'
        )
    )
    result = cli(
        "build-all",
        "tiny",
        "tiny2",
        "--target",
        "hopper",
        "--project",
        tiny,
        "--workspace",
        workspace,
    )
    assert result.code == 1
    assert re.search(r"tiny\s+│\s+1\.0\.0\s+│\s+failed", result.out), result.out
    assert re.search(
        r"tiny2\s+│\s+1\.0\.0\s+│\s+skipped.*needs tiny, which did not", result.out, re.S
    ), result.out


def test_a_cycle_of_needs_is_one_line(cli: CliRunner, tiny: Path, tmp_path: Path) -> None:
    _add_dependent(tiny, "tiny2", "tiny3")
    _add_dependent(tiny, "tiny3", "tiny2")
    result = cli(
        "build", "tiny2", "--target", "hopper", "--project", tiny, "--workspace", tmp_path / "ws"
    )
    one_error_line(
        result,
        r"recipes need each other in a cycle \(tiny\d -> tiny\d -> tiny\d\); remove one 'needs' entry",
    )


def test_build_all_runs_the_preflight_first_and_builds_nothing_it_fails(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    """A configure that fails stops that recipe (and what needs it) before any compile;
    --no-preflight skips the step."""
    workspace = tmp_path / "ws"
    _add_dependent(tiny)
    _lock(cli, tiny, workspace, "tiny2")
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text(recipe.read_text() + "\n[preflight]\nconfigure = [\"{python} -c "
                      "\\\"raise SystemExit('the Foo library was not found')\\\"\"]\n")  # fmt: skip
    common = ["--target", "hopper", "--project", tiny, "--workspace", workspace]
    result = cli("build-all", "tiny", "tiny2", *common)
    assert result.code == 1
    table = result.out[result.out.index("build-all for hopper") :]
    assert re.search(r"tiny\s+│\s+1\.0\.0\s+│\s+failed", table), table
    assert re.search(r"tiny2\s+│\s+1\.0\.0\s+│\s+skipped", table), table
    # The reason is upstream's own last words, not only "see the log".
    words = " ".join(w for w in table.split() if w != "│")
    assert "preflight:" in words and "the Foo library was not found" in words, table
    assert "building tiny 1.0.0" not in result.out
    assert not list((tiny / "wheelhouse").rglob("*.whl"))

    skipped = cli("build-all", "tiny", "tiny2", "--no-preflight", *common)
    assert skipped.code == 0, skipped.out + skipped.err
    assert "building tiny 1.0.0" in skipped.out and "building tiny2 1.0.0" in skipped.out
