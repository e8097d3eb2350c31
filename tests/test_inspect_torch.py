"""`sparkforge inspect` on PyPI's torch 2.14.1 x86_64 CUDA wheel (555 MB), checked
against NVIDIA's cuobjdump on the same libraries: code nobody here wrote."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, as_cuobjdump, cuobjdump_listing, locked
from sparkforge.cli import main
from sparkforge.wheel.cudabin import scan_wheel

pytestmark = [pytest.mark.network, pytest.mark.slow]

WHEEL = "torch-2.14.1-cp312-cp312-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "23011fe29a99b591eabb3a31a25080c62e2c2f0690a3c798744e5489dae50451"
PLAIN_SASS = {"sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"}


@pytest.fixture(scope="module")
def torch_wheel(request: pytest.FixtureRequest) -> Path:
    """The wheel, downloaded once into pytest's cache and pinned by sha256."""
    cache = request.config.cache.mkdir("sparkforge-torch")
    with locked(cache):  # pytest-xdist workers share this cache
        wheel = cache / WHEEL
        if not wheel.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--python-version=3.12", "--implementation=cp", "--platform=manylinux_2_28_x86_64",
                 f"--dest={cache}", "torch==2.14.1"],
                check=True,
            )  # fmt: skip
        digest = hashlib.sha256()
        with wheel.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        assert digest.hexdigest() == WHEEL_SHA256
        return wheel


def test_inspect_reports_sass_without_ptx_and_sm121_via_sm120(
    torch_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    # The Spark's GPU code in an x86_64 wheel: spark-x86 is the target that asks about it.
    code = main(
        ["inspect", str(torch_wheel), "--target", "spark-x86", "--json", "--project", str(REPO)]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    audit = report["audits"]["sm_121"]
    assert audit["verdict"] == "compatible"
    libraries = {lib["path"]: lib for lib in audit["libraries"] if lib["code"]}
    cuda = libraries["torch/lib/libtorch_cuda.so"]
    assert set(cuda["code"]) >= PLAIN_SASS
    assert all(cuda["code"][arch] == 475 for arch in PLAIN_SASS)
    assert not [name for name in cuda["code"] if name.startswith("compute_")], "no PTX"
    assert cuda["verdict"] == "compatible" and cuda["runs"] == "sm_120"
    assert "runs sm_120 SASS" in cuda["explanation"]
    for library in libraries.values():
        assert library["verdict"] == "compatible", library


def test_an_x86_64_wheel_is_wrong_platform_on_the_spark(
    torch_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same wheel for dgx-spark (aarch64): its tag and its host code are for x86_64."""
    capsys.readouterr()
    code = main(
        ["inspect", str(torch_wheel), "--target", "dgx-spark", "--json", "--project", str(REPO)]
    )
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["platform_problem"] == (
        "its platform tag manylinux_2_28_x86_64 is not for aarch64: pip will not install it"
    )
    audit = report["audits"]["sm_121"]
    assert audit["verdict"] == "wrong-platform" and not audit["ok"]
    assert audit["reasoning"][0] == ("16 libraries are built for another CPU than the target's aarch64 "
                                     "(e.g. torch/_C.cpython-312-x86_64-linux-gnu.so)")  # fmt: skip


def test_reader_agrees_with_cuobjdump(torch_wheel: Path, cuobjdump: Path, tmp_path: Path) -> None:
    reports = [r for r in scan_wheel(torch_wheel) if r.code]
    assert {r.path_in_wheel for r in reports} >= {"torch/lib/libtorch_cuda.so"}
    with zipfile.ZipFile(torch_wheel) as archive:
        for report in reports:
            library = Path(archive.extract(report.path_in_wheel, tmp_path))
            assert as_cuobjdump(dict(report.code)) == cuobjdump_listing(cuobjdump, library), (
                report.path_in_wheel
            )
            library.unlink()
