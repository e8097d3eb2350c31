"""The container runner for real: podman builds Dockerfile.builder on the amd64
stand-in base (Debian + CUDA 13 from PyPI) and builds the probe inside it; the
result is compared with the host runner's wheel, file by file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, build_with_runners, copy_project
from sparkforge.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.network]

sys.path.insert(0, str(REPO / "tools"))
if not shutil.which("podman") and not os.environ.get("CI"):
    pytest.skip("podman is not installed (CI installs it)", allow_module_level=True)

from standin_base import ensure_standin  # noqa: E402

COMMON = ["sm121-probe", "--target", "hopper", "--cuda-arch", "121", "--python", "3.11"]


def _members(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The probe built by the host runner and by the container runner."""
    base = ensure_standin("amd64", log=lambda line: print(line, flush=True))
    project = copy_project(tmp_path_factory.mktemp("container-project"))
    workspace = tmp_path_factory.mktemp("container-ws")
    return build_with_runners(
        [*COMMON, "--project", str(project), "--workspace", str(workspace)],
        {
            "host": ["--runner", "host"],
            "container": ["--runner", "container", "--engine", "podman", "--engines",
                          str(REPO / "ci" / "engines.toml"), "--base-image", base,
                          "--allow-unpinned-base"],
        },
        project,
    )  # fmt: skip


def test_container_build_is_a_real_manylinux_wheel_with_both_archs(builds: dict[str, Path]) -> None:
    wheel = builds["container"]
    assert wheel.name == "sm121_probe-0.1.0+cu130-cp311-cp311-manylinux_2_35_x86_64.whl"
    provenance = json.loads(Path(str(wheel) + ".provenance.json").read_text())
    version = provenance["predicate"]["runDetails"]["builder"]["version"]
    assert version["runner"] == "container" and version["engine"] == "podman"
    assert version["nvcc"].startswith("13.0.") and version["python"].startswith("3.11.")
    assert version["image_id"] and version["base_image_digest"].startswith("sha256:")
    assert version["base_digest"] == "unpinned", "built with --allow-unpinned-base, and it says so"
    audit = provenance["predicate"]["runDetails"]["byproducts"][1]["content"]
    assert {arch: result["verdict"] for arch, result in audit.items()} == {
        "sm_90": "native",
        "sm_121": "native",
    }


def test_container_and_host_wheels_compared_file_by_file(builds: dict[str, Path]) -> None:
    host, container = _members(builds["host"]), _members(builds["container"])
    assert builds["host"].name == builds["container"].name
    assert set(host) == set(container), "same files"
    differ = sorted(name for name in host if host[name] != container[name])
    report = {"identical": not differ, "differ": differ}
    print(json.dumps(report, indent=2))
    # Same locked inputs, same nvcc, gcc 12.2 on both sides (Debian bookworm): the
    # runners must give the same bytes. The report above says which members differ.
    assert not differ, differ
    assert (
        hashlib.sha256(builds["host"].read_bytes()).digest()
        == hashlib.sha256(builds["container"].read_bytes()).digest()
    )


def test_verify_repro_with_the_container_runner(
    builds: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Rebuilt in the container from a fresh workspace elsewhere: the same bytes."""
    wheelhouse = builds["container"].parent.parent
    project = wheelhouse.parent
    base = ensure_standin("amd64", log=lambda line: None)
    args = ["verify-repro", *COMMON, "--runner", "container", "--engine", "podman", "--engines",
            str(REPO / "ci" / "engines.toml"), "--base-image", base, "--allow-unpinned-base",
            "--project", str(project), "--wheelhouse",
            str(wheelhouse), "--workspace", str(project.parent / "verify-ws")]  # fmt: skip
    capsys.readouterr()
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"reproducible: {builds['container'].name}" in out


def test_lock_pins_the_base_and_a_pinned_build_needs_no_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lock --builder` records the base image's digest; the build then runs without
    --allow-unpinned-base and provenance carries the pin."""
    base = ensure_standin("amd64", log=lambda line: None)
    project = copy_project(tmp_path / "pinned")
    hopper = (project / "targets" / "hopper.toml").read_text()
    pinned_target = hopper.replace('name = "hopper"', 'name = "standin"')
    pinned_target = re.sub(r'builder_image = ".*"', f'builder_image = "{base}"', pinned_target)
    pinned_target = pinned_target.replace('python = "3.12"', 'python = "3.11"')
    (project / "targets" / "standin.toml").write_text(pinned_target)
    engines = str(REPO / "ci" / "engines.toml")
    assert main(["lock", "--builder", "--target", "standin", "--engine", "podman", "--engines", engines,
                 "--project", str(project)]) == 0  # fmt: skip
    lock = (project / "lock.toml").read_text()
    digest = re.search(rf'"{re.escape(base)}" = "(sha256:[0-9a-f]{{64}})"', lock)
    assert digest, lock
    args = ["build", "sm121-probe", "--target", "standin", "--runner", "container", "--engine", "podman",
            "--engines", engines, "--project", str(project),
            "--workspace", str(tmp_path / "ws")]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    (provenance,) = (project / "wheelhouse" / "files").glob("*.provenance.json")
    version = json.loads(provenance.read_text())["predicate"]["runDetails"]["builder"]["version"]
    assert version["base_digest"] == digest[1] == version["base_image_digest"]
