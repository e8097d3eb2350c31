"""Staged assets, asset manifests and needed wheels: locked, staged, verified, used.

The build commands themselves check what they were given, so a test passes only
when the pipeline really staged each asset at the path its variable names and
installed the needed recipe's wheel in the build venv.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import CliRunner, one_error_line
from sparkforge.locking.lockfile import LockedAsset
from sparkforge.locking.manifests import onnxruntime_deps, triton_llvm
from sparkforge.sources.materialize import stage_assets
from sparkforge.util.errors import LockError, SourceError
from sparkforge.util.workspace import Workspace

# ------------------------------------------------------------------ manifests

DEPS_TXT = """\
# name;url;sha1
abseil_cpp;https://github.com/abseil/abseil-cpp/archive/refs/tags/20250814.0.zip;{sha1}
onnx;https://github.com/onnx/onnx/archive/refs/tags/v1.19.0.zip;{sha1}

"""


def test_onnxruntime_deps_become_mirror_paths() -> None:
    assets = onnxruntime_deps(lambda rel: DEPS_TXT.format(sha1="ab" * 20))
    assert [a.name for a in assets] == ["abseil_cpp", "onnx"]
    assert assets[1].dest == "onnxruntime-deps/github.com/onnx/onnx/archive/refs/tags/v1.19.0.zip"
    assert assets[0].sha1 == "ab" * 20 and assets[0].sha256 is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("onnx;https://x.org/a.zip\n", r"deps.txt:1: expected 'name;url;sha1'"),
        ("onnx;http://x.org/a.zip;" + "ab" * 20 + "\n", r"has no https URL"),
        ("onnx;https://x.org/a.zip;nothex\n", r"has no sha1"),
        ("# only a comment\n", r"lists no dependencies"),
    ],
)
def test_onnxruntime_deps_refuse_what_they_cannot_pin(text: str, message: str) -> None:
    with pytest.raises(LockError, match=message):
        onnxruntime_deps(lambda rel: text)


LLVM_INFO = {
    "llvm_hash": "4611156032e1ebac68b2b8f6107b1475a7c60800",
    "build_number": 1,
    "sha256sum": {"ubuntu-arm64": "7f" * 32, "ubuntu-x64": "38" * 32, "macos-arm64": "e2" * 32},
}


def test_triton_llvm_gives_one_archive_per_platform() -> None:
    """The archive name carries llvm-info.json's build_number, as triton's own
    python/build_helpers.py (get_llvm_package_info) names it: a build 2 of the same
    LLVM commit is another file with another sha256."""
    assets = triton_llvm(lambda rel: json.dumps(LLVM_INFO))
    by_platform = {a.platform: a for a in assets}
    arm = by_platform["linux_aarch64"]
    assert arm.url.endswith("/llvm-builds/llvm-46111560-ubuntu-arm64-1.tar.gz")
    second = triton_llvm(lambda rel: json.dumps({**LLVM_INFO, "build_number": 2}))
    assert second[0].url.endswith("-2.tar.gz")
    assert arm.sha256 == "7f" * 32 and arm.unpack and arm.dest == "llvm/ubuntu-arm64"
    assert by_platform["linux_x86_64"].sha256 == "38" * 32


def test_triton_llvm_without_a_build_number_is_refused() -> None:
    info = {key: value for key, value in LLVM_INFO.items() if key != "build_number"}
    with pytest.raises(LockError, match="'build_number' is not a whole number"):
        triton_llvm(lambda rel: json.dumps(info))


def test_triton_llvm_hash_only_names_have_no_build_number() -> None:
    """3.5.x: cmake/llvm-hash.txt, and setup.py names the archive llvm-<rev8>-<system>."""
    files = {"cmake/llvm-hash.txt": "7d5de3033187c8a3bb4d2e322f5462cdaf49808f\n"}

    def read(rel: str) -> str:
        if rel not in files:
            raise FileNotFoundError(rel)
        return files[rel]

    urls = {a.url.rsplit("/", 1)[1] for a in triton_llvm(read)}
    assert urls == {"llvm-7d5de303-ubuntu-arm64.tar.gz", "llvm-7d5de303-ubuntu-x64.tar.gz"}


def test_triton_llvm_without_a_checksum_is_refused() -> None:
    info = {**LLVM_INFO, "sha256sum": {"ubuntu-x64": "38" * 32}}
    with pytest.raises(LockError, match="no sha256 for 'ubuntu-arm64'"):
        triton_llvm(lambda rel: json.dumps(info))


# ------------------------------------------------------------- staging (unit)


def _archive(path: Path, name: str, payload: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"top/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_a_sha1_pinned_asset_is_checked_before_use(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "dep.tar.gz", "dep.txt", b"dependency")
    sha1 = hashlib.sha1(archive.read_bytes(), usedforsecurity=False).hexdigest()
    asset = LockedAsset(name="dep", kind="url", url=archive.as_uri(), sha1=sha1,
                        dest="mirror/example.org/dep.tar.gz")  # fmt: skip
    workspace = Workspace(tmp_path / "ws")
    staged = stage_assets([asset], workspace, tmp_path / "assets", "linux_x86_64")
    assert staged == [asset]
    assert (tmp_path / "assets/mirror/example.org/dep.tar.gz").read_bytes() == archive.read_bytes()

    bad = asset.model_copy(update={"sha1": "0" * 40})
    with pytest.raises(SourceError, match=r"sha1 mismatch for file://.*nothing was used"):
        stage_assets([bad], workspace, tmp_path / "assets2", "linux_x86_64")


def test_assets_of_another_platform_are_not_staged(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "llvm.tar.gz", "bin/llvm-config", b"#!/bin/sh\n")
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    arm = LockedAsset(name="llvm-arm", kind="url", url=archive.as_uri(), sha256=sha256,
                      dest="llvm/arm", unpack=True, platform="linux_aarch64")  # fmt: skip
    x64 = arm.model_copy(
        update={"name": "llvm-x64", "dest": "llvm/x64", "platform": "linux_x86_64"}
    )
    staged = stage_assets([arm, x64], Workspace(tmp_path / "ws"), tmp_path / "a", "linux_x86_64")
    assert [a.name for a in staged] == ["llvm-x64"]
    assert (tmp_path / "a/llvm/x64/bin/llvm-config").is_file()
    assert not (tmp_path / "a/llvm/arm").exists()


# ------------------------------------------------------ end to end (network)

CHECK = (
    "import os, pathlib, importlib.metadata as m; "
    "assert pathlib.Path(os.environ['TINY_DATA'], 'data.txt').read_text() == 'payload'; "
    "assert pathlib.Path(os.environ['TINY_REPO'], 'README').read_text() == 'asset repo'; "
    "print('assets ok')"
)


def _asset_sources(tmp_path: Path) -> tuple[Path, Path]:
    archive = _archive(tmp_path / "data.tar.gz", "data.txt", b"payload")
    repo = tmp_path / "asset-repo"
    repo.mkdir()
    (repo / "README").write_text("asset repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "asset"], check=True)
    return archive, repo


def _with_assets(project: Path, archive: Path, repo: Path) -> Path:
    recipe = project / "recipes" / "tiny" / "recipe.toml"
    text = recipe.read_text().replace(
        '[versions."1.0.0"]\ndefault = true\n',
        '[versions."1.0.0"]\ndefault = true\n\n[versions."1.0.0".assets]\n'
        f'data = {{ url = "{archive.as_uri()}", unpack = true, env = "TINY_DATA" }}\n'
        f'repo = {{ git = "{repo.as_uri()}", ref = "main", env = "TINY_REPO" }}\n',
    )
    text = text.replace(
        "command = [", f"command = [{json.dumps('{python} -c ' + json.dumps(CHECK))}, "
    )
    recipe.write_text(text)
    return recipe


pytestmark_network = pytest.mark.network  # the tiny lock resolves flit_core from PyPI


@pytestmark_network
def test_assets_are_locked_staged_and_handed_to_the_build(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    archive, repo = _asset_sources(tmp_path)
    _with_assets(tiny, archive, repo)
    workspace = tmp_path / "ws"
    common = ["--target", "hopper", "--project", tiny, "--workspace", workspace]
    assert cli("lock", "tiny", "--project", tiny, "--workspace", workspace).code == 0
    locked = (tiny / "lock.toml").read_text()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert f'commit = "{commit}"' in locked
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in locked

    plan = json.loads(cli("build", "tiny", *common, "--dry-run").out)
    pins = {a["name"]: a["pin"] for a in plan["assets"]}
    assert pins["repo"].endswith(f"@{commit}") and pins["data"].startswith(archive.as_uri())
    assert plan["environment"]["TINY_DATA"].endswith("/assets/data")

    built = cli("build", "tiny", *common)
    assert built.code == 0, built.err
    log = next((workspace / "logs").glob("tiny-*.log")).read_text()
    assert "assets ok" in log and f"staged repo: {repo.as_uri()}@{commit}" in log

    # The archive changes upstream; a machine without the verified download refuses
    # it before anything runs (a verified copy in the workspace keeps being used).
    _archive(archive, "data.txt", b"tampered")
    shutil.rmtree(workspace / "downloads")
    wheels_before = sorted((tiny / "wheelhouse" / "files").iterdir())
    again = cli("build", "tiny", *common, "--force")
    one_error_line(again, r"sha256 mismatch for file://.*data\.tar\.gz.*Nothing was used")
    assert sorted((tiny / "wheelhouse" / "files").iterdir()) == wheels_before


@pytestmark_network
def test_a_needed_recipe_wheel_is_in_the_build_env(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    """tiny2 needs tiny: its build venv has tiny's wheel from the wheelhouse."""
    text = (tiny / "recipes" / "tiny" / "recipe.toml").read_text()
    check = "import importlib.metadata as m; print('needed', m.version('sf-tiny'))"
    text = (
        text.replace('name = "tiny"', 'name = "tiny2"')
        .replace("cuda = false", 'cuda = false\nneeds = ["tiny"]')
        .replace("[build]\n", '[build]\nlocal_version = "tiny2"\n')
        .replace("command = [", f"command = [{json.dumps('{python} -c ' + json.dumps(check))}, ")
    )
    (tiny / "recipes" / "tiny2").mkdir()
    (tiny / "recipes" / "tiny2" / "recipe.toml").write_text(text)
    workspace = tmp_path / "ws"
    assert cli("lock", "tiny2", "--project", tiny, "--workspace", workspace).code == 0
    built = cli("build", "tiny2", "--target", "hopper", "--project", tiny, "--workspace", workspace)
    assert built.code == 0, built.err
    log = next((workspace / "logs").glob("tiny2-*.log")).read_text()
    assert "needed 1.0.0" in log


@pytestmark_network
def test_upgrading_a_branch_moves_the_manifest_assets_with_it(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    """What `nox -s lock -- --upgrade triton` does: main moves, and the LLVM pin
    read from the new commit's cmake/llvm-info.json moves with it."""
    upstream = tmp_path / "upstream"
    subprocess.run(["cp", "-r", str(tiny / "tiny-src"), str(upstream)], check=True)
    (upstream / "cmake").mkdir()
    git = ["git", "-C", str(upstream), "-c", "user.name=t", "-c", "user.email=t@t"]

    def commit(llvm_arm: str) -> None:
        info = {**LLVM_INFO, "sha256sum": {"ubuntu-arm64": llvm_arm, "ubuntu-x64": "38" * 32}}
        (upstream / "cmake" / "llvm-info.json").write_text(json.dumps(info))
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "pin"], check=True)

    subprocess.run(["git", "init", "-q", "-b", "main", str(upstream)], check=True)
    commit("7f" * 32)
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    text = recipe.read_text().replace('path = "tiny-src"', f'git = "{upstream}"')
    text = text.replace(
        "default = true",
        'default = true\nref = "main"\n'
        'manifests = [{ kind = "triton-llvm", env = "LLVM_SYSPATH" }]',
    )
    recipe.write_text(text)
    workspace = tmp_path / "ws"
    lock = ["lock", "tiny", "--project", tiny, "--workspace", workspace]
    assert cli(*lock).code == 0
    assert f'sha256 = "{"7f" * 32}"' in (tiny / "lock.toml").read_text()
    commit("a1" * 32)
    assert cli(*lock).code == 0
    assert f'sha256 = "{"7f" * 32}"' in (tiny / "lock.toml").read_text(), "plain lock keeps pins"
    assert cli("lock", "--upgrade", "tiny", "--project", tiny, "--workspace", workspace).code == 0
    text = (tiny / "lock.toml").read_text()
    assert f'sha256 = "{"a1" * 32}"' in text and "7f" * 32 not in text
    plan = json.loads(cli("build", "tiny", "--target", "dgx-spark", "--project", tiny,
                          "--workspace", workspace, "--dry-run").out)  # fmt: skip
    assert [a["name"] for a in plan["assets"]] == ["llvm-ubuntu-arm64"]
    assert plan["environment"]["LLVM_SYSPATH"].endswith("/assets/llvm/ubuntu-arm64")


@pytestmark_network
def test_smoke_installs_declared_dependencies_and_needs(
    cli: CliRunner, tiny: Path, tmp_path: Path
) -> None:
    """With [smoke] dependencies = true the smoke venv gets what the wheel declares
    (here: six, from PyPI) but never a wheelhouse project from elsewhere."""
    pyproject = tiny / "tiny-src" / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'requires-python = ">=3.9"',
        'requires-python = ">=3.9"\ndependencies = ["six==1.17.0", "sf-tiny; extra == \'self\'"]',
    ))  # fmt: skip
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    recipe.write_text(recipe.read_text() + "\n[smoke]\ndependencies = true\ngpu = false\n")
    (tiny / "recipes" / "tiny" / "smoke.py").write_text(
        "import six, sf_tiny\nprint('six', six.__version__)\n"
    )
    workspace = tmp_path / "ws"
    assert cli("lock", "tiny", "--project", tiny, "--workspace", workspace).code == 0
    common = ["--target", "hopper", "--project", tiny, "--workspace", workspace]
    assert cli("build", "tiny", *common).code == 0
    from sparkforge.verify.smoke import declared_dependencies
    from sparkforge.wheelhouse.store import Wheelhouse

    house = Wheelhouse(tiny / "wheelhouse")
    assert declared_dependencies(house, ["sf-tiny"]) == ["six==1.17.0"]
    smoke = cli("smoke", "tiny", *common)
    assert smoke.code == 0, smoke.out + smoke.err
    assert "six 1.17.0" in smoke.out
