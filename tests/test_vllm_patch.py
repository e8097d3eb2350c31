"""The vLLM SCALED_MM patch, proven against the real sdist with vLLM's own CMake.

The locked vllm sdist is fetched from PyPI (verified by sha256), the patch series
is applied by the pipeline's own code, and the relevant parts of vLLM's
CMakeLists.txt are evaluated by CMake in script mode with vLLM's helper
functions (cmake/utils.cmake), for the dgx-spark target: CUDA 13.0 and the
TORCH_CUDA_ARCH_LIST of the recipe's plan turned into -gencode flags as
PyTorch's CMake does.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparkforge.build import BuildOptions, plan
from sparkforge.lock import read_lock
from sparkforge.patches import apply_series, load_series
from sparkforge.recipes import load_recipe
from sparkforge.runners import HostRunner
from sparkforge.sources import materialize
from sparkforge.workspace import Workspace

pytestmark = pytest.mark.network  # the sdist comes from PyPI (once per workspace)

PROJECT = Path(__file__).resolve().parents[1]
GROUPED_SM100 = "csrc/quantization/w8a8/cutlass/moe/grouped_mm_c3x_sm100.cu"
SM100_FLAG = '"-DENABLE_CUTLASS_MOE_SM100=1"'
BRANCH = "  if(${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 13.0)"


@dataclass(frozen=True)
class MoeArchs:
    cuda_archs: str  # vLLM's CUDA_ARCHS after its own filtering
    grouped_sm100: str  # the arch set grouped_mm_c3x_sm100.cu is compiled for
    sm100_enabled_by: list[
        str
    ]  # the arch sets of every block that defines ENABLE_CUTLASS_MOE_SM100


def _cmake() -> str:
    """The PyPI cmake of the test extra (vLLM wants >= 3.26; distributions may be older)."""
    try:
        import cmake  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(
            "the cmake package is not installed; the test extra has it (pip install -e .[test])"
        )
    return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")


def _gencode_flags(torch_arch_list: str) -> str:
    """What PyTorch's select_compute_arch.cmake makes of an explicit arch list."""
    flags = []
    for entry in torch_arch_list.split(";"):
        number = entry.replace(".", "")
        flags.append(f"-gencode arch=compute_{number},code=sm_{number}")
    return " ".join(flags)


def _block_before(text: str, index: int) -> str:
    """The CUDA-version if/else that picks an arch set, closest before ``index``."""
    start = text.rindex(BRANCH, 0, index)
    end = text.index("endif()", start) + len("endif()")
    return text[start:end]


def _evaluate(source: Path, torch_arch_list: str, cuda_version: str = "13.0") -> MoeArchs:
    text = (source / "CMakeLists.txt").read_text()
    minimum = re.search(r"cmake_minimum_required\(VERSION [0-9.]+\)", text)
    supported = re.search(
        r"if\(DEFINED CMAKE_CUDA_COMPILER_VERSION AND\n.*?\nendif\(\)\n", text, re.S
    )
    archs = re.search(
        r"  clear_cuda_arches\(CUDA_ARCH_FLAGS\)\n.*?\"\$\{CUDA_SUPPORTED_ARCHS\}\" \"\$\{CUDA_ARCHS\}\"\)\n",
        text,
        re.S,
    )
    assert minimum and supported and archs, "vLLM's CMakeLists.txt changed shape"
    grouped = _block_before(text, text.index(GROUPED_SM100))
    enablers = [_block_before(text, m.start()) for m in re.finditer(re.escape(SM100_FLAG), text)]
    parts = [
        minimum.group(0),
        f"include({source}/cmake/utils.cmake)",
        f"set(CMAKE_CUDA_COMPILER_VERSION {cuda_version})",
        f'set(CMAKE_CUDA_FLAGS "-Xfatbin -compress-all {_gencode_flags(torch_arch_list)}")',
        supported.group(0),
        archs.group(0),
        'message(STATUS "CUDA_ARCHS=${CUDA_ARCHS}")',
        grouped,
        'message(STATUS "GROUPED=${SCALED_MM_ARCHS}")',
    ]
    for block in enablers:
        parts += [block, 'message(STATUS "ENABLER=${SCALED_MM_ARCHS}${FP4_ARCHS}")']
        parts += ["unset(SCALED_MM_ARCHS)", "unset(FP4_ARCHS)"]
    script = source / "sparkforge-eval.cmake"
    script.write_text("\n".join(parts) + "\n")
    done = subprocess.run([_cmake(), "-P", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    values = re.findall(r"-- (\w+)=(.*)", done.stdout)
    found = dict(values)
    return MoeArchs(
        cuda_archs=found["CUDA_ARCHS"],
        grouped_sm100=found["GROUPED"],
        sm100_enabled_by=[value for key, value in values if key == "ENABLER"],
    )


@pytest.fixture(scope="module")
def spark_arch_list(tmp_path_factory: pytest.TempPathFactory) -> str:
    """TORCH_CUDA_ARCH_LIST of the vllm recipe's plan for dgx-spark (e.g. 12.1;12.1a)."""
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    the_plan = plan(PROJECT, "vllm", "dgx-spark", HostRunner(), workspace,
                    tmp_path_factory.mktemp("wh"), BuildOptions(version="0.11.1"), dry_run=True)  # fmt: skip
    return the_plan.env["TORCH_CUDA_ARCH_LIST"]


def _tree(tmp_path: Path, version: str, *, patched: bool) -> Path:
    recipe = load_recipe(PROJECT, "vllm")
    entry = (
        read_lock(PROJECT / "lock.toml").recipes["vllm"][version] if version == "0.11.1" else None
    )
    dest = tmp_path / f"vllm-{version}"
    if entry is not None:
        materialize(PROJECT, recipe, entry.source, Workspace.locate(), dest)
    else:  # a version without a lock entry here: verified against PyPI's published sha256
        from sparkforge.lock import LockedSource
        from sparkforge.sources import pypi_sdist

        url, sha256 = pypi_sdist("vllm", version)
        materialize(PROJECT, recipe, LockedSource(kind="url", url=url, sha256=sha256),
                    Workspace.locate(), dest)  # fmt: skip
    if patched:
        apply_series(load_series(PROJECT, "vllm", version), dest, label=f"vllm {version}")
    return dest


def test_grouped_moe_archs_are_empty_before_the_patch_and_not_after(
    tmp_path: Path, spark_arch_list: str
) -> None:
    assert "12.1" in spark_arch_list.split(";")
    before = _evaluate(_tree(tmp_path / "a", "0.11.1", patched=False), spark_arch_list)
    after = _evaluate(_tree(tmp_path / "b", "0.11.1", patched=True), spark_arch_list)
    # vLLM filters 12.1/12.1a down to its 12.0 family with CUDA 13.
    assert before.cuda_archs == after.cuda_archs == "12.0"
    assert before.grouped_sm100 == ""
    assert after.grouped_sm100 == "12.0f"
    # The bug itself: the NVFP4 block still enables the SM100 MoE entry point for
    # 12.0f, so without the patch vllm._C references a symbol nobody compiles.
    assert any(before.sm100_enabled_by), before
    assert after.grouped_sm100 and any(after.sm100_enabled_by)


def test_the_older_cuda_branch_stays_broken_for_cuda_12(tmp_path: Path) -> None:
    """A finding, pinned so it cannot change unnoticed: the patch's CUDA < 13 line
    ("10.0a" -> "10.0a;12.1a") has no effect. vLLM first filters the arch list down
    to its supported set, which stops at 12.0, so 12.1a never reaches the block,
    while the NVFP4 block still enables the SM100 entry point through 12.0a. The
    dgx-spark target builds with CUDA 13, where the 12.0f line does the work."""
    tree = _tree(tmp_path, "0.11.1", patched=True)
    result = _evaluate(tree, "12.1a", cuda_version="12.9")
    assert result.cuda_archs == "12.0"
    assert result.grouped_sm100 == ""
    assert any(result.sm100_enabled_by)


def test_vllm_0_12_0_needs_no_patch(tmp_path: Path, spark_arch_list: str) -> None:
    """0.12.0 (the recipe's second version) no longer enables the SM100 MoE entry
    point for 12.x, so nothing references the kernel it does not build."""
    assert "0.12.0" in load_recipe(PROJECT, "vllm").spec.versions
    assert load_series(PROJECT, "vllm", "0.12.0").patches == ()
    result = _evaluate(_tree(tmp_path, "0.12.0", patched=False), spark_arch_list)
    assert result.grouped_sm100 == ""
    assert not any(result.sm100_enabled_by), result
