"""The probe recipe for real: nvcc for sm_90 + sm_121, auditwheel, the index,
pip from the index, provenance, the no-op rebuild and the smoke test."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from conftest import as_cuobjdump, copy_project, cuobjdump_listing
from sparkforge.building.runners import find_python
from sparkforge.cli import main
from sparkforge.wheel.cudabin import scan_wheel

pytestmark = [pytest.mark.slow, pytest.mark.network]

WHEEL = "sm121_probe-0.1.0+cu130-cp312-cp312-manylinux_2_35_x86_64.whl"


@dataclass(frozen=True)
class Built:
    project: Path
    workspace: Path
    wheelhouse: Path
    wheel: Path


def _build_args(built_project: Path, workspace: Path, *extra: str) -> list[str]:
    return [
        "build",
        "sm121-probe",
        "--target",
        "hopper",
        "--cuda-arch",
        "121",
        "--project",
        str(built_project),
        "--workspace",
        str(workspace),
        *extra,
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    project = copy_project(tmp_path_factory.mktemp("probe"))
    workspace = tmp_path_factory.mktemp("probe-ws")
    assert main(_build_args(project, workspace)) == 0
    wheelhouse = project / "wheelhouse"
    return Built(project, workspace, wheelhouse, wheelhouse / "files" / WHEEL)


def test_wheel_holds_sm90_and_sm121_sass(built: Built) -> None:
    assert built.wheel.is_file()
    reports = [r for r in scan_wheel(built.wheel) if r.code]
    assert len(reports) == 1 and re.match(r"sm121_probe/_core\..*\.so$", reports[0].path_in_wheel)
    names = {code.name for code in reports[0].code}
    assert {"sm_90", "sm_121"} <= names
    assert not any(name.startswith("compute_") for name in names), "SASS only, no PTX"


def test_wheel_bundles_no_cuda_libraries(built: Built, tmp_path: Path) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = archive.namelist()
        assert not [n for n in names if re.search(r"lib(cuda|cudart|nvidia)[^/]*\.so", n)], names
        so = next(n for n in names if n.endswith(".so"))
        (tmp_path / "core.so").write_bytes(archive.read(so))
    dynamic = subprocess.run(
        ["readelf", "-d", str(tmp_path / "core.so")], capture_output=True, text=True
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    assert needed and not [n for n in needed if "cuda" in n], needed


def test_auditwheel_agrees_on_the_policy(built: Built) -> None:
    out = subprocess.run(["auditwheel", "show", str(built.wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "manylinux_2_35_x86_64" in " ".join(out.stdout.split())


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def test_index_page_carries_hashes_and_metadata(built: Built) -> None:
    page = built.wheelhouse / "simple" / "sm121-probe" / "index.html"
    parser = _Anchors()
    parser.feed(page.read_text())
    (anchor,) = parser.anchors
    href = str(anchor["href"])
    path, fragment = href.split("#")
    # Resolved as a client does: as a URL below simple/<project>/, not through the symlink.
    url = urljoin((built.wheelhouse / "simple" / "sm121-probe").as_uri() + "/", path)
    assert Path(unquote(urlparse(url).path)) == built.wheel
    assert fragment == "sha256=" + hashlib.sha256(built.wheel.read_bytes()).hexdigest()
    metadata = built.wheel.parent / (WHEEL + ".metadata")
    meta_hash = "sha256=" + hashlib.sha256(metadata.read_bytes()).hexdigest()
    assert anchor["data-core-metadata"] == meta_hash == anchor["data-dist-info-metadata"]
    assert anchor["data-requires-python"] == ">=3.9"
    # The audit verdicts are listed beside the link and in the JSON page.
    assert "(sm_121: native, sm_90: native)" in page.read_text()
    listing = json.loads((page.parent / "index.json").read_text())
    assert listing["files"][0]["_sparkforge_audit"] == {"sm_121": "native", "sm_90": "native"}


def test_provenance_subject_is_the_wheel(built: Built) -> None:
    provenance = json.loads((built.wheel.parent / (WHEEL + ".provenance.json")).read_text())
    assert provenance["_type"] == "https://in-toto.io/Statement/v1"
    assert provenance["subject"] == [
        {"name": WHEEL, "digest": {"sha256": hashlib.sha256(built.wheel.read_bytes()).hexdigest()}}
    ]
    definition = provenance["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["cuda_archs"] == ["90", "121"]
    assert definition["internalParameters"]["lock_entry"]["source"]["kind"] == "path"
    assert provenance["predicate"]["runDetails"]["builder"]["version"]["nvcc"].startswith("13.0.")
    audit = provenance["predicate"]["runDetails"]["byproducts"][1]["content"]
    assert set(audit) == {"sm_90", "sm_121"}


def test_pip_installs_it_by_name_from_the_index(built: Built, tmp_path: Path) -> None:
    python = find_python("3.12")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    index = (built.wheelhouse / "simple").as_uri()
    install = subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--isolated",
            "--disable-pip-version-check",
            "--index-url",
            index,
            "sm121-probe",
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    probe = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import sm121_probe as p; print(p.__version__, p.built_archs(), p.device_count())",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split(" ", 1)[0] == "0.1.0"
    assert "90-real" in probe.stdout and "121-real" in probe.stdout


def test_second_build_is_a_fast_noop(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(_build_args(built.project, built.workspace)) == 0
    out = capsys.readouterr().out
    assert f"up to date: {built.wheel}" in out
    seconds = float(re.search(r"pipeline time ([\d.]+) s", out)[1])  # type: ignore[index]
    assert seconds < 2.0


def test_smoke_without_gpu_is_skipped_not_passed(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU; test_smoke_on_gpu covers it")
    args = ["smoke", "sm121-probe", "--target", "hopper", "--project", str(built.project)]
    capsys.readouterr()
    assert main(args) == 77
    assert "skipped: no CUDA device" in capsys.readouterr().out
    assert main([*args, "--require-gpu"]) == 1
    assert "smoke failed" in capsys.readouterr().out


@pytest.mark.gpu
def test_smoke_on_gpu(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    if not shutil.which("nvidia-smi"):
        pytest.skip("no CUDA device here")
    assert (
        main(
            [
                "smoke",
                "sm121-probe",
                "--target",
                "hopper",
                "--project",
                str(built.project),
                "--require-gpu",
            ]
        )
        == 0
    )
    assert "PASS" in capsys.readouterr().out


def test_verify_repro_rebuilds_elsewhere_and_finds_identical_bytes(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    """`verify-repro`: the same inputs in a fresh workspace at another path, same wheel."""
    args = _build_args(built.project, built.workspace)
    args[0] = "verify-repro"
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(built.wheel.read_bytes()).hexdigest()
    assert f"reproducible: {WHEEL} sha256 {digest} (both builds)" in out
    assert "sparkforge-repro-" in out, "rebuilt in a fresh workspace elsewhere"


def test_inspect_judges_the_wheel_for_each_target(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    # spark-x86: the Spark's GPU code in this x86_64 wheel (dgx-spark is aarch64: below).
    for target, arch in (("spark-x86", "sm_121"), ("hopper", "sm_90")):
        assert (
            main(
                [
                    "inspect",
                    str(built.wheel),
                    "--target",
                    target,
                    "--json",
                    "--project",
                    str(built.project),
                ]
            )
            == 0
        )
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is True
        assert report["audits"][arch]["verdict"] == "native"
        assert report["audits"][arch]["libraries"][0]["runs"] == arch
    spark = ["inspect", str(built.wheel), "--target", "dgx-spark", "--json", "--project",
             str(built.project)]  # fmt: skip
    assert main(spark) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["audits"]["sm_121"]["verdict"] == "wrong-platform"
    assert "is not for aarch64" in report["platform_problem"]


def test_probe_library_matches_cuobjdump(built: Built, cuobjdump: Path, tmp_path: Path) -> None:
    (report,) = [r for r in scan_wheel(built.wheel) if r.code]
    with zipfile.ZipFile(built.wheel) as archive:
        library = Path(archive.extract(report.path_in_wheel, tmp_path))
    assert as_cuobjdump(dict(report.code)) == cuobjdump_listing(cuobjdump, library)


def test_audit_gate_refuses_a_wheel_that_will_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipe that ignores the plan's archs: built for sm_121 only, planned for hopper (sm_90)."""
    project = copy_project(tmp_path / "gapped")
    recipe = project / "recipes" / "sm121-probe" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("={cuda_archs}", "=121-real"))
    args = ["build", "sm121-probe", "--target", "hopper", "--project", str(project),
            "--workspace", str(tmp_path / "ws")]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "will not run on sm_90" in err and "nothing was published" in err
    assert not (project / "wheelhouse").exists()

    assert main([*args, "--allow-arch-gaps"]) == 0
    (provenance,) = (project / "wheelhouse" / "files").glob("*.provenance.json")
    data = json.loads(provenance.read_text())
    assert data["predicate"]["buildDefinition"]["externalParameters"]["allow_arch_gaps"] is True
    audit = data["predicate"]["runDetails"]["byproducts"][1]
    assert audit["content"]["sm_90"]["verdict"] == "will-not-run"
    assert audit["annotations"]["arch_gaps_published"] is True
