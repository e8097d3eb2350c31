"""The mission recipes: every plan for dgx-spark is pinned, explicit and sized.

Offline: plans come from the committed lock.toml. What each recipe must show is
spelled out per recipe below, so a recipe edit that drops an explicit arch
list, a patch, an asset pin or the builder image fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import CliRunner, one_error_line
from sparkforge.config.recipes import available_recipes, load_recipe

PROJECT = Path(__file__).resolve().parents[1]
MISSION = ["torch", "triton", "onnxruntime", "vllm"]
BEYOND = ["torchvision", "torchaudio", "flashinfer", "llama-cpp-python"]
# Entries this repository cannot lock without reaching github.com (docs/recipes.md#lock-status).
# No commit SHA for these tags could be read without GitHub (docs/recipes.md#lock-status):
# `nox -s lock -- triton onnxruntime` with network locks them.
NOT_LOCKED_HERE = {
    ("triton", "3.5.0"), ("triton", "3.5.1"), ("triton", "3.8.0"), ("triton", "3.9.0"),
    ("onnxruntime", "1.31.1"),
}  # fmt: skip
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _plan(cli: CliRunner, recipe: str, version: str | None = None) -> dict[str, Any]:
    """The Spark's plan: the container runner, whose CUDA libraries builder.toml and
    Dockerfile.builder state (plans are checked against them offline)."""
    args = ["build", recipe, "--target", "dgx-spark", "--dry-run", "--project", PROJECT,
            "--runner", "container"]  # fmt: skip
    result = cli(*args, *(["--version", version] if version else []))
    assert result.code == 0, result.err
    plan: dict[str, Any] = json.loads(result.out)
    return plan


def _locked_versions() -> list[tuple[str, str]]:
    return [
        (name, version)
        for name in MISSION + BEYOND
        for version in load_recipe(PROJECT, name).versions
        if (name, version) not in NOT_LOCKED_HERE
    ]


def test_every_mission_and_beyond_recipe_exists() -> None:
    assert set(MISSION + BEYOND) <= set(available_recipes(PROJECT))
    for name in MISSION + BEYOND:
        assert (PROJECT / "recipes" / name / "smoke.py").is_file(), name


@pytest.mark.parametrize(("name", "version"), _locked_versions())
def test_plan_pins_everything_by_content(cli: CliRunner, name: str, version: str) -> None:
    plan = _plan(cli, name, version)
    source = plan["source"]
    if source["kind"] == "git":
        assert HEX40.match(source["commit"])
    else:
        assert source["kind"] == "url" and HEX64.match(source["sha256"])
    for asset in plan["assets"]:
        pin = asset["pin"]
        assert re.search(r"@[0-9a-f]{40}$", pin) or re.search(r" sha(256|1):[0-9a-f]{40,64}", pin)
    for requirement in plan["build_requires"]:
        assert re.fullmatch(r"[a-z0-9._-]+==[0-9][^ ]*", requirement), requirement
    assert plan["builder_image"]["base"] == "nvidia/cuda:13.0.1-devel-ubuntu24.04"
    assert plan["memory_per_job_gb"] > 0
    # The reference DGX Spark: 20 cores, 119 GB, never more jobs than memory allows.
    jobs = plan["jobs_on_reference_machine"]
    count = int(jobs.split(" ")[0])
    assert "min(20 cores, 119 GB" in jobs
    assert count == min(20, int(119 // plan["memory_per_job_gb"]))


@pytest.mark.parametrize("name", ["torch", "vllm", "torchvision", "torchaudio"])
def test_torch_arch_list_is_explicit_and_holds_12_1(cli: CliRunner, name: str) -> None:
    archs = _plan(cli, name)["environment"]["TORCH_CUDA_ARCH_LIST"].split(";")
    assert "12.1" in archs
    assert all(re.fullmatch(r"\d+\.\d+[af]?", a) for a in archs), archs  # never "12.1(2.0)"


def test_torch_plan(cli: CliRunner) -> None:
    plan = _plan(cli, "torch")
    env = plan["environment"]
    assert plan["version"].startswith("2.9.")
    assert {"USE_SYSTEM_NCCL", "USE_FLASH_ATTENTION", "USE_MEM_EFF_ATTENTION", "USE_CUSPARSELT",
            "USE_CUDNN"} <= {k for k, v in env.items() if v == "1"}  # fmt: skip
    assert env["USE_PRIORITIZED_TEXT_FOR_LD"] == "1" and env["BUILD_TEST"] == "0"
    assert env["PYTORCH_BUILD_VERSION"] == plan["version"]
    declared = env["PYTORCH_EXTRA_INSTALL_REQUIREMENTS"].split(" | ")
    assert any(d.startswith("nvidia-cudnn-cu13==") for d in declared)
    assert not any("x86_64" in d for d in declared), "markers must allow aarch64"
    assert {"libcudnn*.so*", "libnccl.so*", "libcublas.so*"} <= set(plan["repair_exclude"])
    assert len(load_recipe(PROJECT, "torch").versions) >= 2  # 2.9.x and the newest line


def test_triton_plan_stages_llvm_for_the_target_platform_only(cli: CliRunner) -> None:
    plan = _plan(cli, "triton", "main")
    assert [a["name"] for a in plan["assets"]] == ["llvm-ubuntu-arm64"]
    # build_helpers.py: llvm-<hash8>-<system>-<build_number>.tar.gz, sha256 from llvm-info.json
    assert re.search(r"/llvm-[0-9a-f]{8}-ubuntu-arm64-\d+\.tar\.gz sha256:[0-9a-f]{64}$",
                     plan["assets"][0]["pin"])  # fmt: skip
    assert plan["environment"]["JSON_SYSPATH"] == "/usr"
    assert plan["environment"]["LLVM_SYSPATH"].endswith("/assets/llvm/ubuntu-arm64")
    assert plan["environment"]["TRITON_OFFLINE_BUILD"] == "1"
    assert any(
        "ptxas-blackwell" in c and "/usr/local/cuda/bin/ptxas" in c for c in plan["commands"]
    )


def test_vllm_plan_has_the_patch_and_staged_fetchcontent_deps(cli: CliRunner) -> None:
    plan = _plan(cli, "vllm")
    assert plan["version"] == "0.11.1"
    assert [p["name"] for p in plan["patches"]] == [
        "0001-grouped-moe-sm100-archs-for-12x.patch",
        "0002-skip-fa3-without-an-fa3-arch.patch",
        "0003-qutlass-only-for-requested-archs.patch",
    ]
    assert set(plan["needs"]) == {"torch"} and plan["need_versions"] == {"torch": "2.9.0"}
    env = plan["environment"]
    for variable in ("VLLM_CUTLASS_SRC_DIR", "VLLM_FLASH_ATTN_SRC_DIR", "FLASH_MLA_SRC_DIR",
                     "QUTLASS_SRC_DIR"):  # fmt: skip
        assert "/assets/" in env[variable]
    assert plan["commands"][0].endswith("use_existing_torch.py")
    newer = _plan(cli, "vllm", "0.12.0")
    assert "TRITON_KERNELS_SRC_DIR" in newer["environment"]
    assert [p["name"] for p in newer["patches"]] == [
        "0001-skip-fa3-without-an-fa3-arch.patch",  # no SCALED_MM patch: the fix is upstream
        "0002-qutlass-only-for-requested-archs.patch",
    ]


def test_onnxruntime_plan_mirrors_every_dependency(cli: CliRunner) -> None:
    plan = _plan(cli, "onnxruntime")
    assert plan["dist"] == "onnxruntime-gpu" and plan["version"] == "1.24.4"
    command = plan["commands"][0]
    assert "CMAKE_CUDA_ARCHITECTURES=121 " in command
    assert (
        "--use_cuda --cuda_version 13.0" in command
        and "onnxruntime_BUILD_UNIT_TESTS=OFF" in command
    )
    mirror = command.split("--cmake_deps_mirror_dir ")[1].split(" ")[0]
    assets = plan["assets"]
    assert len(assets) > 30 and all(a["from"] == "onnxruntime-deps" for a in assets)
    for asset in assets:  # where CMake looks: <mirror>/<host>/<path>, pinned by deps.txt's sha1
        url = asset["pin"].split(" ")[0]
        assert asset["staged_at"] == mirror + "/" + url.removeprefix("https://")
        assert re.search(r" sha1:[0-9a-f]{40} \(upstream manifest\)$", asset["pin"])
    names = {a["name"] for a in assets}
    assert {"abseil_cpp", "onnx", "cutlass", "cudnn_frontend", "protobuf"} <= names


def test_triton_release_cannot_be_planned_without_its_lock_entry(cli: CliRunner) -> None:
    """3.5.x names its LLVM without a checksum: the lock must download it, which this
    machine cannot (the blob store is unreachable); the plan refuses, naming the fix."""
    result = cli("build", "triton", "--version", "3.5.0", "--target", "dgx-spark", "--dry-run",
                 "--project", PROJECT)  # fmt: skip
    one_error_line(result, r"no lock entry for triton 3\.5\.0; run `nox -s lock -- triton`")


def test_beyond_recipes_build_against_this_wheelhouse(cli: CliRunner) -> None:
    torch = _plan(cli, "torch", "2.9.0")
    for name in ("torchvision", "torchaudio", "flashinfer"):
        plan = _plan(cli, name)
        assert plan["needs"] == {"torch": torch["build_key"]}, name
        assert plan["need_versions"] == {"torch": "2.9.0"}, name
    assert _plan(cli, "flashinfer")["environment"]["FLASHINFER_CUDA_ARCH_LIST"] == "12.1a"
    llama = _plan(cli, "llama-cpp-python")
    assert "-DCMAKE_CUDA_ARCHITECTURES=121-real" in llama["environment"]["CMAKE_ARGS"]


def test_build_all_orders_dependencies(cli: CliRunner) -> None:
    result = cli("graph", "--json", "--project", PROJECT)
    assert result.code == 0, result.err
    levels = [[n["recipe"] for n in level] for level in json.loads(result.out)["levels"]]
    where = {name: i for i, level in enumerate(levels) for name in level}
    assert where["torch"] < where["vllm"] and where["triton"] < where["vllm"]
    assert where["torch"] < where["torchvision"] and where["torch"] < where["flashinfer"]
