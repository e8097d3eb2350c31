"""Proof for 0001: run in a vLLM 0.11.1 source tree (the working directory), exit 0 when
a DGX Spark build compiles every grouped-MoE SM100 kernel the NVFP4 block enables.

vLLM's own CMake decides it, so CMake evaluates it: the relevant blocks of
CMakeLists.txt run in script mode with vLLM's helpers (cmake/utils.cmake), CUDA 13.0,
and TORCH_CUDA_ARCH_LIST=12.1;12.1a turned into -gencode flags as PyTorch's CMake does.
Without the patch the NVFP4 block enables ENABLE_CUTLASS_MOE_SM100 for 12.0f while the
grouped-MoE block compiles grouped_mm_c3x_sm100.cu for nothing: `import vllm._C` then
fails with "undefined symbol: cutlass_moe_mm_sm100". Needs cmake >= 3.26 on PATH or the
cmake Python package. `sparkforge check-patches --prove` runs it before and after 0001.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GROUPED_SM100 = "csrc/quantization/w8a8/cutlass/moe/grouped_mm_c3x_sm100.cu"
SM100_FLAG = '"-DENABLE_CUTLASS_MOE_SM100=1"'
BRANCH = "  if(${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 13.0)"
ARCH_LIST = "12.1;12.1a"


def cmake() -> str:
    try:
        import cmake as package  # type: ignore[import-not-found]

        return str(Path(package.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if found is None:
            sys.exit("proof: no cmake (pip install cmake)")
        return found


def block_before(text: str, index: int) -> str:
    start = text.rindex(BRANCH, 0, index)
    return text[start : text.index("endif()", start) + len("endif()")]


def main() -> int:
    source = Path.cwd()
    text = (source / "CMakeLists.txt").read_text()
    minimum = re.search(r"cmake_minimum_required\(VERSION [0-9.]+\)", text)
    supported = re.search(r"if\(DEFINED CMAKE_CUDA_COMPILER_VERSION AND\n.*?\nendif\(\)\n", text, re.S)
    archs = re.search(
        r"  clear_cuda_arches\(CUDA_ARCH_FLAGS\)\n.*?\"\$\{CUDA_SUPPORTED_ARCHS\}\" \"\$\{CUDA_ARCHS\}\"\)\n",
        text, re.S,
    )  # fmt: skip
    if not (minimum and supported and archs):
        sys.exit("proof: vLLM's CMakeLists.txt changed shape; update this proof")
    gencode = " ".join(
        f"-gencode arch=compute_{a.replace('.', '')},code=sm_{a.replace('.', '')}"
        for a in ARCH_LIST.split(";")
    )
    parts = [minimum[0], f"include({source}/cmake/utils.cmake)",
             "set(CMAKE_CUDA_COMPILER_VERSION 13.0)",
             f'set(CMAKE_CUDA_FLAGS "{gencode}")', supported[0], archs[0],
             block_before(text, text.index(GROUPED_SM100)),
             'message(STATUS "GROUPED=${SCALED_MM_ARCHS}")']  # fmt: skip
    for match in re.finditer(re.escape(SM100_FLAG), text):
        parts += [block_before(text, match.start()),
                  'message(STATUS "ENABLER=${SCALED_MM_ARCHS}${FP4_ARCHS}")',
                  "unset(SCALED_MM_ARCHS)", "unset(FP4_ARCHS)"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "proof.cmake"
        script.write_text("\n".join(parts) + "\n")
        done = subprocess.run([cmake(), "-P", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"proof: cmake failed: {done.stderr.strip().splitlines()[-1:]}")
    values = re.findall(r"-- (\w+)=(.*)", done.stdout)
    grouped = dict(values).get("GROUPED", "")
    enabling = [v for k, v in values if k == "ENABLER" and v]
    print(f"grouped-MoE SM100 archs: {grouped or '(none)'}; blocks enabling the SM100 entry "
          f"point: {', '.join(enabling) or '(none)'}")  # fmt: skip
    return 1 if enabling and not grouped else 0


if __name__ == "__main__":
    sys.exit(main())
