"""--preflight: sources, patches, environment, the front-end's check and upstream's
configure step, offline, with checks on what configure produced; nothing compiled,
nothing published. Real nvcc 13.0 and real CMake throughout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import CliResult, CliRunner, copy_project, snapshot
from sparkforge.verify.preflight import cuda_codes

pytestmark = pytest.mark.slow

PROBE = ["build", "sm121-probe", "--target", "hopper", "--cuda-arch", "121", "--preflight"]


def _args(project: Path, tmp: Path) -> list[str | Path]:
    return ["--project", project, "--workspace", tmp / "ws", "--wheelhouse", tmp / "wh"]


def test_cuda_codes_read_every_nvcc_spelling() -> None:
    text = (
        "-gencode arch=compute_120f,code=sm_120f  --generate-code=arch=compute_90,code=[compute_90,sm_90] "
        "-gencode=arch=compute_121a,code=sm_121a -arch=sm_80"
    )
    names = sorted(f"{c.kind} {c.name}" for c in cuda_codes(text))
    assert names == ["ptx compute_80", "ptx compute_90", "sass sm_120f", "sass sm_121a",
                     "sass sm_80", "sass sm_90"]  # fmt: skip


def test_probe_preflight_configures_offline_and_finds_both_archs(
    cli: CliRunner, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    result = cli(*PROBE, *_args(project, tmp_path))
    assert result.code == 0, result.out + result.err
    out = result.out
    assert "the build front-end (pypa/build) finds every build requirement met" in out
    assert "sm_90: sm_90 runs sm_90 SASS" in out and "sm_121: sm_121 runs sm_121 SASS" in out
    assert "nothing was downloaded during configure" in out
    assert re.search(r"preflight passed: sm121-probe 0\.1\.0 in [\d.]+ s \(network: none", out)
    assert snapshot(tmp_path / "wh") == {}, "a preflight never touches the wheelhouse"


def _broken_probe(cli: CliRunner, tmp_path: Path, old: str, new: str) -> CliResult:
    """The probe's preflight with ``old`` replaced by ``new`` in its recipe: it fails (1)."""
    project = copy_project(tmp_path / "project")
    recipe = project / "recipes" / "sm121-probe" / "recipe.toml"
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, new))
    result = cli(*PROBE, *_args(project, tmp_path))
    assert result.code == 1
    return result


def test_a_configure_without_the_targets_arch_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    """The flags configure generated must hold code for every GPU the wheel is for."""
    result = _broken_probe(cli, tmp_path, '-DCMAKE_CUDA_ARCHITECTURES=\\"{cuda_archs}\\"',
                           "-DCMAKE_CUDA_ARCHITECTURES=90-real")  # fmt: skip
    error = result.err.strip().splitlines()[-1]
    assert re.search(r"the generated CUDA flags \(build\.ninja\) hold sm_90; nothing of it runs on "
                     r"sm_121 \(hopper\)", error), error  # fmt: skip


def test_a_feature_switched_off_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    result = _broken_probe(cli, tmp_path, 'pattern = "sm121-probe: CUDA architectures: [0-9]" }',
                           'pattern = "sm121-probe: CUDA", absent = true }')  # fmt: skip
    assert "the explicit CUDA arch list is off: the configure output says" in result.err


def test_a_download_during_configure_is_caught(cli: CliRunner, tmp_path: Path) -> None:
    """Configure runs with no network: a FetchContent/file(DOWNLOAD) fails, and says so."""
    script = tmp_path / "fetch.cmake"
    script.write_text(
        'file(DOWNLOAD "https://pypi.org/simple/" "${CMAKE_CURRENT_LIST_DIR}/x" STATUS s)\n'
        'list(GET s 0 code)\nlist(GET s 1 why)\n'
        'if(NOT code EQUAL 0)\n  message(FATAL_ERROR "Downloading https://pypi.org/simple/ failed: ${why}")\nendif()\n'
    )  # fmt: skip
    result = _broken_probe(cli, tmp_path, "configure = [\"sh -c 'cmake -S .",
                           f"configure = [\"cmake -P {script}\", \"sh -c 'cmake -S .")  # fmt: skip
    assert "it tried to download (" in result.err and "stage that input as an asset" in result.err


# --- llama-cpp-python: the real sdist, configured for sm_90 + sm_121 ------------------------


@pytest.mark.network
@pytest.mark.parametrize(
    ("version", "runs"),
    [("0.3.16", "sm_121 runs sm_121 SASS"),
     # 0.3.36's ggml rewrites a plain 121 to 121a itself (ggml-cuda/CMakeLists.txt:93-105).
     ("0.3.36", "sm_121 runs sm_121a SASS")],
)  # fmt: skip
def test_llama_cpp_python_preflight_on_the_real_sdist(
    cli: CliRunner, tmp_path: Path, cuda_overlay: Path, version: str, runs: str
) -> None:
    project = copy_project(tmp_path / "project")
    hopper = (project / "targets" / "hopper.toml").read_text()
    (project / "targets" / "hopper.toml").write_text(
        hopper.replace('cuda_home = "/usr/local/cuda"', f'cuda_home = "{cuda_overlay}"')
    )
    result = cli("build", "llama-cpp-python", "--version", version, "--target", "hopper",
                 "--cuda-arch", "121", "--preflight", *_args(project, tmp_path))  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert f"sm_121: {runs}" in result.out
    assert "the CUDA backend (ggml-cuda) is on" in result.out
    assert "a build without NCCL (the wheel declares no libnccl) is on" in result.out


def test_preflight_needs_a_declared_configure(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    recipe = project / "recipes" / "sm121-probe" / "recipe.toml"
    text = recipe.read_text()
    recipe.write_text(text[: text.index("[preflight]")] + text[text.index("[smoke]") :])
    result = cli(*PROBE, *_args(project, tmp_path))
    assert result.code == 2
    assert "declares no [preflight]" in result.err


def test_the_plan_shows_the_preflight(cli: CliRunner, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    result = cli(
        "build", "sm121-probe", "--target", "hopper", "--dry-run", *_args(project, tmp_path)
    )
    assert result.code == 0
    assert '"frontend":' in result.out and "cmake -S ." in result.out


# --- vLLM 0.11.1: the real sdist and its FetchContent trees, configured for the Spark ------

VLLM_GIT_ASSETS = (
    "https://github.com/NVIDIA/cutlass",
    "https://github.com/vllm-project/flash-attention",
    "https://github.com/vllm-project/FlashMLA",
    "https://github.com/IST-DASLab/qutlass",
)


def _git_reachable(url: str) -> bool:
    """Through the user's git config, so `url.<mirror>.insteadOf` counts (how this is run
    on a machine without GitHub that holds mirrors of the four repositories)."""
    try:
        done = subprocess.run(["git", "ls-remote", "--exit-code", url, "HEAD"],
                              capture_output=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.mark.network
def test_vllm_preflight_configures_the_spark_build_offline(
    cli: CliRunner, tmp_path: Path, cuda_overlay: Path
) -> None:
    """vLLM's own CMake configure (the arguments its setup.py passes), offline, on the
    patched 0.11.1 sdist with the staged CUTLASS/flash-attention/FlashMLA/qutlass trees,
    against upstream's torch 2.9.0 wheel (asked for with --upstream-needs): code that runs
    on sm_121 in the generated flags, the patched grouped-MoE block on, FA3 and QuTLASS off."""
    unreachable = [url for url in VLLM_GIT_ASSETS if not _git_reachable(url)]
    if unreachable:
        pytest.skip(f"vLLM's CMake dependencies are on GitHub, unreachable here: {unreachable[0]}")
    project = copy_project(tmp_path / "project")
    target = project / "targets" / "spark-x86.toml"
    target.write_text(target.read_text().replace('cuda_home = "/usr/local/cuda"',
                                                 f'cuda_home = "{cuda_overlay}"'))  # fmt: skip
    result = cli("build", "vllm", "--version", "0.11.1", "--target", "spark-x86", "--preflight",
                 "--upstream-needs", *_args(project, tmp_path))  # fmt: skip
    assert result.code == 0, result.out[-4000:] + result.err
    assert "upstream's published wheel" in result.out + result.err
    # vLLM keeps 12.x to its supported 12.0 family: sm_120f SASS, which runs on sm_121.
    assert re.search(r"ok: sm_121: sm_121 runs sm_120f? SASS .*sm_120f", result.out), result.out
    (log,) = (tmp_path / "ws" / "logs").glob("preflight-vllm-0.11.1-spark-x86-*.log")
    text = log.read_text()
    assert "-- Building grouped_mm_c3x for archs: 12.0f" in text  # the SCALED_MM patch
    assert re.search(r"^-- FA3_ARCHS: *$", text, re.M)  # FlashAttention-3 left out
    assert "[QUTLASS] Skipping build" in text  # 12.0a-only code would not load on sm_121
