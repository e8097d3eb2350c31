#!/usr/bin/env bash
# Fourth part of docs/gpu-runs/2026-11-30-llama-current: scikit-build-core's build tree at a
# fixed path (SKBUILD_BUILD_DIR) instead of a random temporary one, then a build and a
# --force rebuild into a second wheelhouse: do the two wheels have the same bytes?
set -uo pipefail
work=/tmp/sfgpu; out=$work/out; house=$work/wheelhouse2
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
scratch=$(ls -d /tmp/sparkforge-from-bundle-* | head -1)
project="$scratch/bundle/project"
sed -i 's|-DCMAKE_INSTALL_RPATH=$ORIGIN" }|-DCMAKE_INSTALL_RPATH=$ORIGIN", SKBUILD_BUILD_DIR = "{build_dir}/cmake-build" }|' "$project/recipes/llama-cpp-python/recipe.toml"
grep -n 'SKBUILD_BUILD_DIR' "$project/recipes/llama-cpp-python/recipe.toml" >"$out/recipe-change-4.txt"
settings=(--version 0.3.36 --target hopper --cuda-arch 121 --manylinux manylinux_2_39_x86_64
          --project "$project" --workspace "$scratch/workspace" --wheelhouse "$house")
python3 -m sparkforge.cli build llama-cpp-python "${settings[@]}" >"$out/build-fixed-dir.txt" 2>&1
echo "fixed-dir build: exit $?" >>"$out/summary4.txt"
sha256sum "$house"/files/*.whl >>"$out/summary4.txt"
python3 -m sparkforge.cli build llama-cpp-python "${settings[@]}" --force >"$out/build-fixed-dir-force.txt" 2>&1
echo "fixed-dir --force rebuild: exit $?" >>"$out/summary4.txt"
grep -h 'ccache:\|✓ build\|pipeline time\|error\|already' "$out"/build-fixed-dir*.txt >>"$out/summary4.txt"
