"""Bundles: one plan's verified inputs in one file; `build --from-bundle` builds from it in a
fresh workspace with no network, to the same bytes as a normal build."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import CliRunner, copy_project, git, git_repo, one_error_line
from sparkforge.sources.materialize import _checkout
from sparkforge.team.bundle import BundleError, _index, _pack, git_snapshots, unpack
from sparkforge.util.workspace import Workspace

PROBE = ["sm121-probe", "--target", "hopper", "--cuda-arch", "121"]


def _offline() -> list[str]:
    """A new network namespace, where this machine allows it (root in CI)."""
    ok = shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0
    return ["unshare", "-rn"] if ok else []


@pytest.mark.slow
def test_the_probe_from_a_bundle_offline_is_bit_identical(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    common = ["--project", project, "--workspace", tmp_path / "ws"]
    assert cli("build", *PROBE, *common, "--wheelhouse", tmp_path / "wh-a").code == 0
    bundle = tmp_path / "probe.bundle.tar.xz"
    made = cli("bundle", *PROBE, *common, "--wheelhouse", tmp_path / "wh-a", "-o", bundle)
    assert made.code == 0, made.err
    assert "sparkforge build sm121-probe --target hopper --cuda-arch 121 --from-bundle" in made.out
    # Another process, in a network namespace of its own, in another directory: nothing but
    # the bundle (no project, no workspace cache, no index).
    elsewhere = tmp_path / "elsewhere"
    scratch = tmp_path / "tmp"
    elsewhere.mkdir()
    scratch.mkdir()
    done = subprocess.run([*_offline(), sys.executable, "-m", "sparkforge.cli", "build", *PROBE,
                           "--from-bundle", str(bundle), "--wheelhouse", str(elsewhere / "wh")],
                          cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(scratch)})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert list(scratch.iterdir()) == [], "the unpacked bundle is removed after a build"
    (normal,) = (tmp_path / "wh-a" / "files").glob("*.whl")
    (offline,) = (elsewhere / "wh" / "files").glob("*.whl")
    assert normal.name == offline.name
    assert (
        hashlib.sha256(normal.read_bytes()).digest()
        == hashlib.sha256(offline.read_bytes()).digest()
    )


def _tiny_bundle(tmp_path: Path) -> Path:
    """A small, valid bundle made by hand: a manifest and one archive."""
    root = tmp_path / "b"
    (root / "downloads" / "x").mkdir(parents=True)
    (root / "downloads" / "x" / "a.tar.gz").write_bytes(b"payload")
    (root / "wheels").mkdir()
    (root / "project").mkdir()
    (root / "project" / "lock.toml").write_text("format = 1\n")
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in root.rglob("*") if p.is_file()}  # fmt: skip
    manifest = {"format": 1, "archives": [{"url": "https://x/a.tar.gz", "path": "downloads/x/a.tar.gz",
                "pin": "0" * 64}], "git": [], "needs": {}, "files": files}  # fmt: skip
    import json

    (root / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "tiny.bundle.tar.xz"
    with lzma.open(out, "wb") as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return out


def test_a_damaged_member_is_refused(tmp_path: Path) -> None:
    bundle = _tiny_bundle(tmp_path)
    assert unpack(bundle, tmp_path / "ok").manifest["format"] == 1
    with lzma.open(bundle, "rb") as xz:
        data = xz.read()
    with lzma.open(bundle, "wb") as xz:
        xz.write(data.replace(b"payload", b"PAYLOAD"))
    with pytest.raises(BundleError, match=r"downloads/x/a\.tar\.gz does not match its sha256"):
        unpack(bundle, tmp_path / "bad")


def test_not_a_bundle_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle.tar.xz"
    junk.write_bytes(b"not xz")
    result = cli("build", *PROBE, "--from-bundle", junk, "--wheelhouse", tmp_path / "wh")
    one_error_line(result, r"junk\.bundle\.tar\.xz: not a readable sparkforge bundle")


def test_git_packs_serve_a_checkout_offline_with_submodules_and_exclusions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a bundle carries of a git asset: the locked commit's tree (no history), its
    submodules' trees, without the excluded paths; indexed by git (object ids checked)
    into a fresh workspace, it checks out as the asset would, and nothing else is needed."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    git_repo(tmp_path / "lib", {"include/lib.h": "int lib;\n", "media/big.png": "x" * 5000})
    top = tmp_path / "top"
    git_repo(top, {"README": "one\n"})
    (top / "README").write_text("two\n")
    git(top, *identity, "commit", "-q", "-am", "second")
    git(top, "submodule", "--quiet", "add", str(tmp_path / "lib"), "csrc/lib")
    git(top, *identity, "commit", "-q", "-m", "submodule")
    commit = git(top, "rev-parse", "HEAD")
    near = Workspace(tmp_path / "near")
    exclude = ["csrc/lib/media"]
    snapshots = git_snapshots(near, str(top), commit, True, exclude)
    assert [(s.url, s.exclude) for s in snapshots] == [(str(top), ("csrc/lib/media",)),
                                                     (str(tmp_path / "lib"), ("media",))]  # fmt: skip
    far = Workspace(tmp_path / "far")
    for number, snapshot in enumerate(snapshots):
        pack = _pack(near, snapshot, tmp_path / f"{number}.pack")
        _index(far, pack, snapshot.url, snapshot.commit)
    shutil.rmtree(top)  # the far side has the packs only
    shutil.rmtree(tmp_path / "lib")
    _checkout(far, str(top), commit, tmp_path / "out", True, exclude)
    assert (tmp_path / "out" / "README").read_text() == "two\n"
    assert (tmp_path / "out" / "csrc/lib/include/lib.h").is_file()
    assert not (tmp_path / "out" / "csrc/lib/media").exists()


def test_a_pack_without_the_locked_commit_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    commit = git_repo(repo, {"a.txt": "a\n"})
    blob = git(repo, "rev-parse", f"{commit}:a.txt")
    done = subprocess.run(["git", "pack-objects", "--stdout", "-q"], cwd=repo, input=blob.encode(),
                          capture_output=True, check=True)  # fmt: skip
    (tmp_path / "x.pack").write_bytes(done.stdout)
    with pytest.raises(BundleError, match=f"does not hold the locked commit {commit}"):
        _index(Workspace(tmp_path / "ws"), tmp_path / "x.pack", "https://example/r", commit)


@pytest.mark.slow
@pytest.mark.network
def test_llama_cpp_python_bundle_preflights_offline(
    cli: CliRunner, tmp_path: Path, cuda_overlay: Path
) -> None:
    """The real sdist and its build requirements travel in the bundle; on the far side the
    preflight (front-end check + CMake configure) needs nothing else."""
    project = copy_project(tmp_path / "project")
    hopper = project / "targets" / "hopper.toml"
    hopper.write_text(hopper.read_text().replace('cuda_home = "/usr/local/cuda"',
                                                 f'cuda_home = "{cuda_overlay}"'))  # fmt: skip
    bundle = tmp_path / "llama.bundle.tar.xz"
    made = cli("bundle", "llama-cpp-python", "--target", "hopper", "--cuda-arch", "121",
               "--project", project, "--workspace", tmp_path / "ws", "-o", bundle)  # fmt: skip
    assert made.code == 0, made.err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([*_offline(), sys.executable, "-m", "sparkforge.cli", "build",
                           "llama-cpp-python", "--target", "hopper", "--cuda-arch", "121",
                           "--from-bundle", str(bundle), "--preflight"],
                          cwd=elsewhere, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "sm_121: sm_121 runs sm_121 SASS" in done.stdout
