#!/usr/bin/env bash
# Third part of docs/gpu-runs/2026-11-30-llama-current: audit and GPU smoke test of the
# published wheel (the --force rebuild was refused by the wheelhouse: different bytes).
set -uo pipefail
work=/tmp/sfgpu; out=$work/out; house=$work/wheelhouse
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
export UV_OFFLINE=1 UV_FIND_LINKS="$PWD/.gpu/wheels" PIP_FIND_LINKS="$PWD/.gpu/wheels" PIP_NO_INDEX=1
scratch=$(ls -d /tmp/sparkforge-from-bundle-* | head -1)
project="$scratch/bundle/project"
cp "$scratch"/workspace/logs/llama-cpp-python-*.log "$out/" 2>/dev/null
cp "$house"/files/*.provenance.json "$out/provenance.json" 2>/dev/null
ls -la "$house"/files >"$out/wheelhouse.txt" 2>&1
python3 -m sparkforge.cli smoke llama-cpp-python --version 0.3.36+cu130 --target hopper --require-gpu \
  --project "$project" --wheelhouse "$house" >"$out/smoke.txt" 2>&1
echo "smoke: exit $?" | tee -a "$out/summary.txt"
for t in hopper dgx-spark spark-x86; do
  python3 -m sparkforge.cli inspect "$house"/files/llama_cpp_python-*.whl --target "$t" \
    --project "$project" >"$out/inspect-$t.txt" 2>&1
done
# What differs between the published build and the refused --force rebuild: which members.
ls "$scratch"/workspace/builds/*/final/*.whl >"$out/final-wheels.txt" 2>&1
