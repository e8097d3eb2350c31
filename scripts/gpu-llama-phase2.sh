#!/usr/bin/env bash
# Second half of docs/gpu-runs/2026-11-30-llama-current: the cold build's repair found
# lib/libllama-common.so without a RUNPATH; the recipe's fix (CMAKE_INSTALL_RPATH=$ORIGIN)
# applied to the unpacked project, then a build (new key: ccache across build trees) and a
# --force rebuild (unchanged), the audit for three targets and the GPU smoke test.
set -uo pipefail
work=/tmp/sfgpu; out=$work/out; house=$work/wheelhouse
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
export UV_OFFLINE=1 UV_FIND_LINKS="$PWD/.gpu/wheels" PIP_FIND_LINKS="$PWD/.gpu/wheels" PIP_NO_INDEX=1
scratch=$(ls -d /tmp/sparkforge-from-bundle-* | head -1)
sed -i 's|-DLLAMA_OPENSSL=off" }|-DLLAMA_OPENSSL=off -DCMAKE_INSTALL_RPATH=$ORIGIN" }|' "$scratch/bundle/project/recipes/llama-cpp-python/recipe.toml"
grep -n 'INSTALL_RPATH' "$scratch/bundle/project/recipes/llama-cpp-python/recipe.toml" >"$out/recipe-change.txt"
settings=(--version 0.3.36 --target hopper --cuda-arch 121 --manylinux manylinux_2_39_x86_64
          --project "$scratch/bundle/project" --workspace "$scratch/workspace" --wheelhouse "$house")
for run in rpath rebuild; do
  start=$(date +%s)
  extra=(); [ "$run" = rebuild ] && extra=(--force)
  python3 -m sparkforge.cli build llama-cpp-python "${settings[@]}" --keep-build-dir "${extra[@]}" >"$out/build-$run.txt" 2>&1
  code=$?
  echo "$run build: exit $code in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  grep -h 'ccache:\|✓ build\|pipeline time\|error' "$out/build-$run.txt" >>"$out/summary.txt"
  [ "$code" = 0 ] || exit "$code"
  sha256sum "$house"/files/llama_cpp_python-*.whl | sed "s|$house/files/||" >>"$out/summary.txt"
done
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
