"""The pipeline end to end on the pure-Python 'tiny' recipe (seconds, no nvcc):
lock, plan, patches, build, normalize, publish, index, provenance, no-op, smoke.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import CliRunner, git, git_repo, snapshot

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once

PATCH = """\
Why: exercise the patch series in tests.
Drop-when: never; this is a test fixture.

--- a/sf_tiny/__init__.py
+++ b/sf_tiny/__init__.py
@@ -1,2 +1,2 @@
 \"\"\"tiny\"\"\"
-VALUE = 42
+VALUE = 42  # patched
"""


def _build(cli: CliRunner, project: Path, workspace: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli(
        "build",
        "tiny",
        "--target",
        "hopper",
        "--project",
        project,
        "--workspace",
        workspace,
        *extra,
    )


def test_dry_run_prints_the_plan_and_does_nothing(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    result = _build(cli, tiny, shared_workspace, "--dry-run")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert plan["recipe"] == "tiny" and plan["version"] == "1.0.0" and plan["target"] == "hopper"
    assert plan["source"]["kind"] == "path" and len(plan["source"]["tree_sha256"]) == 64
    assert plan["environment"]["SOURCE_DATE_EPOCH"] == str(plan["source_date_epoch"])
    assert plan["environment"]["MAX_JOBS"] == str(plan["jobs"])
    assert plan["commands"][0].endswith(
        f"--wheel-dir {plan['build_dir']}/dist {plan['build_dir']}/src"
    )
    assert plan["build_requires"] == ["flit-core==3.12.0"]
    assert not (tiny / "wheelhouse").exists()


def test_build_publishes_indexes_and_is_then_a_noop(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    first = _build(cli, tiny, shared_workspace)
    assert first.code == 0, first.out + first.err
    files = sorted((tiny / "wheelhouse" / "files").iterdir())
    wheel = next(p for p in files if p.suffix == ".whl")
    assert wheel.name == "sf_tiny-1.0.0-py3-none-any.whl"
    provenance = json.loads((wheel.parent / (wheel.name + ".provenance.json")).read_text())
    assert (
        provenance["subject"][0]["digest"]["sha256"]
        == hashlib.sha256(wheel.read_bytes()).hexdigest()
    )
    assert provenance["predicateType"] == "https://slsa.dev/provenance/v1"
    page = (tiny / "wheelhouse" / "simple" / "sf-tiny" / "index.html").read_text()
    assert f"{wheel.name}#sha256=" in page and "data-core-metadata" in page

    before = snapshot(tiny / "wheelhouse")
    before_files = snapshot(tiny / "wheelhouse" / "files")
    second = _build(cli, tiny, shared_workspace)
    assert second.code == 0
    assert "up to date" in second.out and wheel.name in second.out
    assert snapshot(tiny / "wheelhouse") == before

    forced = _build(cli, tiny, shared_workspace, "--force")
    assert forced.code == 0, forced.err
    assert "published" in forced.out
    assert snapshot(tiny / "wheelhouse" / "files") == before_files, "same inputs, same bytes"


def test_patch_series_is_applied(cli: CliRunner, tiny: Path, shared_workspace: Path) -> None:
    series = tiny / "patches" / "tiny" / "1.0.0"
    series.mkdir(parents=True)
    (series / "0001-mark.patch").write_text(PATCH)
    (series / "series").write_text("0001-mark.patch\n")
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    plan = json.loads(_build(cli, tiny, shared_workspace, "--dry-run").out)
    assert plan["patches"][0]["name"] == "0001-mark.patch"
    assert plan["patches"][0]["why"] == "exercise the patch series in tests."
    result = _build(cli, tiny, shared_workspace)
    assert result.code == 0, result.err
    assert "applied 0001-mark.patch" in result.out
    wheel = next((tiny / "wheelhouse" / "files").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert b"VALUE = 42  # patched" in archive.read("sf_tiny/__init__.py")


def test_smoke_installs_from_the_index_by_name(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    assert _build(cli, tiny, shared_workspace).code == 0
    result = cli("smoke", "tiny", "--target", "hopper", "--project", tiny)
    assert result.code == 0, result.out + result.err
    assert "tiny says 42" in result.out and "smoke passed" in result.out


def test_lock_pins_git_sources_by_commit(
    cli: CliRunner, tiny: Path, shared_workspace: Path, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream"
    (upstream / "sf_tiny").mkdir(parents=True)
    for name in ("pyproject.toml", "sf_tiny/__init__.py", "CHANGES.txt"):
        (upstream / name).write_bytes((tiny / "tiny-src" / name).read_bytes())
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "add", ".")
    git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    first = git(upstream, "rev-parse", "HEAD")
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    text = recipe.read_text().replace('path = "tiny-src"', f'git = "{upstream}"')
    recipe.write_text(text.replace("default = true", 'default = true\nref = "main"'))
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    assert f'commit = "{first}"' in (tiny / "lock.toml").read_text()
    assert 'ref = "main"' in (tiny / "lock.toml").read_text()

    (upstream / "CHANGES.txt").write_text("moved on\n")
    git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two")
    second = git(upstream, "rev-parse", "HEAD")
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    assert f'commit = "{first}"' in (tiny / "lock.toml").read_text(), (
        "a plain lock keeps the pinned commit"
    )
    assert (
        cli("lock", "--upgrade", "tiny", "--project", tiny, "--workspace", shared_workspace).code
        == 0
    )
    assert f'commit = "{second}"' in (tiny / "lock.toml").read_text()

    result = _build(cli, tiny, shared_workspace)
    assert result.code == 0, result.err
    wheel = next((tiny / "wheelhouse" / "files").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "sf_tiny/__init__.py" in archive.namelist()


def test_installed_cli_entry_point_works(tiny: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sparkforge.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("sparkforge ")


def test_dry_run_plans_what_this_host_cannot_run(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    result = cli(
        "build",
        "tiny",
        "--target",
        "dgx-spark",
        "--dry-run",
        "--project",
        tiny,
        "--workspace",
        shared_workspace,
    )
    assert result.code == 0
    plan = json.loads(result.out)
    assert plan["platform"] == "linux_aarch64" and plan["manylinux"] == "manylinux_2_39_aarch64"
    assert "cannot build linux_aarch64 wheels" in plan["blocked_by"]
    assert result.err.startswith("note: this plan cannot run here: ")


def test_failed_build_shows_log_tail_and_keeps_wheelhouse(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text(
        recipe.read_text().replace(
            'command = ["',
            'command = ["{python} -c \\"import sys; print(\'compiler says no\'); sys.exit(3)\\"", "',
        )
    )
    result = _build(cli, tiny, shared_workspace)
    assert result.code == 1
    assert "compiler says no" in result.out and "full log: " in result.out
    log = Path(result.out.split("full log: ")[1].split()[0])
    assert "compiler says no" in log.read_text()
    assert result.err.strip().startswith("error: tiny 1.0.0: ")
    assert "exited with 3" in result.err
    assert not (tiny / "wheelhouse").exists()


def test_rebuild_shows_the_previous_duration(cli: CliRunner, tiny: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    assert _build(cli, tiny, workspace).code == 0
    again = _build(cli, tiny, workspace, "--force")
    assert again.code == 0
    assert re.search(r"✓ build [\d.]+ s \(last time 0:\d\d\)", again.out), again.out


def test_git_source_checks_out_submodules_recursively(
    cli: CliRunner,
    tiny: Path,
    shared_workspace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Local submodule URLs need file transport, which git disables for submodules by default.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "value.txt").write_text("from the submodule\n")
    git(data, "init", "-q", "-b", "main")
    git(data, "add", ".")
    git(data, *identity, "commit", "-q", "-m", "data")
    upstream = tmp_path / "upstream"
    (upstream / "sf_tiny").mkdir(parents=True)
    for name in ("pyproject.toml", "sf_tiny/__init__.py"):
        (upstream / name).write_bytes((tiny / "tiny-src" / name).read_bytes())
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "submodule", "--quiet", "add", str(data), "sf_tiny/data")
    git(upstream, "add", ".")
    git(upstream, *identity, "commit", "-q", "-m", "with submodule")
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    text = recipe.read_text().replace('path = "tiny-src"', f'git = "{upstream}"\nsubmodules = true')
    recipe.write_text(text.replace("default = true", 'default = true\nref = "main"'))
    assert cli("lock", "tiny", "--project", tiny, "--workspace", shared_workspace).code == 0
    result = _build(cli, tiny, shared_workspace)
    assert result.code == 0, result.err
    wheel = next((tiny / "wheelhouse" / "files").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("sf_tiny/data/value.txt") == b"from the submodule\n"


def test_a_new_build_key_with_the_same_bytes_is_then_a_noop(
    cli: CliRunner, tiny: Path, shared_workspace: Path
) -> None:
    assert _build(cli, tiny, shared_workspace).code == 0
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text("# a comment changes the build key, not the wheel\n" + recipe.read_text())
    again = _build(cli, tiny, shared_workspace)
    assert again.code == 0 and "published" in again.out, "new key: built and published (same bytes)"
    third = _build(cli, tiny, shared_workspace)
    assert "up to date" in third.out, "the new key now finds the stored wheel"


def test_checkout_takes_submodules_from_the_workspace_mirrors_and_skips_excluded_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each submodule comes from its own mirror at the recorded commit (a bundle's mirrors
    serve an offline machine); excluded paths are not checked out, and a submodule under
    one is never fetched."""
    from sparkforge.sources.materialize import _checkout
    from sparkforge.util.workspace import Workspace

    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    git_repo(tmp_path / "lib", {"include/lib.h": "int lib;\n", "docs/big.md": "docs\n"})
    git_repo(tmp_path / "rocm", {"rocm.h": "amd\n"})
    top = tmp_path / "top"
    git_repo(top, {"README": "top\n", "media/logo.txt": "logo\n"})
    git(top, "submodule", "--quiet", "add", str(tmp_path / "lib"), "csrc/lib")
    git(top, "submodule", "--quiet", "add", str(tmp_path / "rocm"), "csrc/rocm")
    git(top, *identity, "commit", "-q", "-m", "submodules")
    commit = git(top, "rev-parse", "HEAD")
    workspace = Workspace(tmp_path / "ws")
    dest = tmp_path / "out"
    _checkout(workspace, str(top), commit, dest, True, ["media", "csrc/rocm", "csrc/lib/docs"])
    assert (dest / "README").is_file() and (dest / "csrc/lib/include/lib.h").is_file()
    assert not (dest / "media").exists() and not (dest / "csrc/lib/docs").exists()
    assert not any((dest / "csrc/rocm").iterdir()), "an excluded submodule is not fetched"
    mirrors = sorted(p.name for p in workspace.git_mirrors.iterdir() if not p.name.startswith("."))
    assert len(mirrors) == 2, "top and lib came from mirrors; rocm was never mirrored"


def test_submodule_commit_missing_from_its_mirror_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparkforge.sources.materialize import _checkout
    from sparkforge.util.errors import SourceError
    from sparkforge.util.workspace import Workspace

    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    git_repo(tmp_path / "data", {"v.txt": "1\n"})
    top = tmp_path / "top"
    git_repo(top, {"README": "top\n"})
    git(top, "submodule", "--quiet", "add", str(tmp_path / "data"), "data")
    git(top, *identity, "commit", "-q", "-m", "pin data")
    commit = git(top, "rev-parse", "HEAD")
    # The submodule's history is rewritten: the recorded commit no longer exists upstream.
    shutil.rmtree(tmp_path / "data")
    git_repo(tmp_path / "data", {"v.txt": "other\n"})
    with pytest.raises(SourceError, match=r"commit [0-9a-f]{40} is not in .*data"):
        _checkout(Workspace(tmp_path / "ws"), str(top), commit, tmp_path / "out", True)
