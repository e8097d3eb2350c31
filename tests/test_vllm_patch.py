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

from conftest import CliRunner
from sparkforge.building.plan import BuildOptions, plan
from sparkforge.building.runners import HostRunner
from sparkforge.config.patches import load_series
from sparkforge.config.recipes import load_recipe
from sparkforge.locking.lockfile import read_lock
from sparkforge.sources.materialize import materialize
from sparkforge.sources.patching import apply_series
from sparkforge.util.workspace import Workspace

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
        from sparkforge.locking.lockfile import LockedSource
        from sparkforge.util.fetch import pypi_sdist

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
    assert "0.12.0" in load_recipe(PROJECT, "vllm").versions
    names = [p.name for p in load_series(PROJECT, "vllm", "0.12.0").patches]
    assert not any("grouped-moe" in n for n in names), names
    result = _evaluate(_tree(tmp_path, "0.12.0", patched=True), spark_arch_list)
    assert result.grouped_sm100 == ""
    assert not any(result.sm100_enabled_by), result


def _fa3_wanted(tree: Path, arch_list: str | None) -> bool:
    """setup.py's _fa3_archs_requested, executed alone (setup.py itself runs setup())."""
    import ast
    import os

    source = (tree / "setup.py").read_text()
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "_fa3_archs_requested")  # fmt: skip
    namespace: dict[str, object] = {"os": os}
    exec(compile(ast.Module([node], []), "setup.py", "exec"), namespace)
    saved = os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
    try:
        if arch_list is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        return bool(namespace["_fa3_archs_requested"]())  # type: ignore[operator]
    finally:
        os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        if saved is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


@pytest.mark.parametrize("version", ["0.11.1", "0.12.0"])
def test_fa3_is_left_out_exactly_when_no_fa3_arch_is_asked_for(
    tmp_path: Path, version: str
) -> None:
    tree = _tree(tmp_path, version, patched=True)
    assert not _fa3_wanted(tree, "12.1;12.1a"), "the Spark's list: FA3 would compile for no GPU"
    assert (
        _fa3_wanted(tree, "9.0;12.1a")
        and _fa3_wanted(tree, "8.0")
        and _fa3_wanted(tree, "9.0a+PTX")
    )
    assert _fa3_wanted(tree, None), "an unset list keeps upstream's behaviour"
    text = (tree / "setup.py").read_text()
    assert (
        'if _fa3_archs_requested():\n            ext_modules.append(CMakeExtension(name="vllm.vllm_flash_attn._vllm_fa3_C"))'
        in text
    )


@pytest.mark.parametrize(("flags", "expected"), [
    ("-gencode arch=compute_121a,code=sm_121a", ""),
    ("-gencode arch=compute_120a,code=sm_120a -gencode arch=compute_121a,code=sm_121a", "12.0a"),
])  # fmt: skip
def test_qutlass_compiles_only_for_the_gpus_asked_for(
    tmp_path: Path, flags: str, expected: str
) -> None:
    """vLLM folds 12.1 into 12.0 (CUDA_ARCHS); QuTLASS's 12.0a code loads only on 12.0."""
    tree = _tree(tmp_path, "0.11.1", patched=True)
    text = (tree / "cmake/external_projects/qutlass.cmake").read_text()
    start = text.index('cuda_archs_loose_intersection(QUTLASS_ARCHS "12.0a;10.0a"')
    end = text.index("if(${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER 12.8 AND QUTLASS_ARCHS)")
    script = tree / "qutlass-eval.cmake"
    script.write_text("\n".join([
        "cmake_minimum_required(VERSION 3.26)", f"include({tree}/cmake/utils.cmake)",
        'set(CUDA_ARCHS "12.0")', f'set(CUDA_ARCH_FLAGS "{flags}")', text[start:end],
        'message(STATUS "QUTLASS=${QUTLASS_ARCHS}")',
    ]) + "\n")  # fmt: skip
    done = subprocess.run([_cmake(), "-P", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.search(r"-- QUTLASS=(.*)", done.stdout)[1] == expected  # type: ignore[index]


def test_check_patches_prove_runs_the_proof_without_and_with_the_patch(cli: CliRunner) -> None:
    """The SCALED_MM patch proves itself: its Proof: evaluates vLLM's CMake before (fails:
    the SM100 entry point is enabled, its kernel compiled for nothing) and after (passes)."""
    result = cli("check-patches", "vllm", "--prove", "--project", PROJECT)
    text = " ".join(result.out.split())
    assert result.code == 0, result.out + result.err
    assert re.search(r"0001-grouped-moe-sm100-archs-for-12x\.patch: without it: grouped-MoE SM100 "
                     r"archs: \(none\).*\(exit 1\); with it: grouped-MoE SM100 archs: 12\.0f.*\(exit 0\)",
                     text), text  # fmt: skip
    assert "ok vllm 0.11.1: 3 patch(es) apply" in text and "1 proved" in text
