#!/usr/bin/env bash
# All GPU work of a session, in one run on the GPU machine (no network there).
#
# Run from the repository root with the wheelhouse present (built here with
# `nox -s build-sm121-probe -- --target hopper --cuda-arch 121`) and, where
# sparkforge's own dependencies are missing, their wheels in .whl/. Results are
# written to $OUT (default ./gpu-out), one file per check, and copied into
# docs/verification.md by hand with the date and the GPU.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sf-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/sf-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
sf() { python3 -m sparkforge.cli "$@"; }

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  python3 --version
  command -v uv && uv --version
} >"$out/machine.txt" 2>&1

check() {  # check NAME EXPECTED_EXIT COMMAND...
  local name=$1 expected=$2; shift 2
  "$@" >"$out/$name.txt" 2>&1
  local code=$?
  local verdict=ok; [ "$code" = "$expected" ] || verdict=UNEXPECTED
  echo "$name: exit $code (expected $expected) $verdict" | tee -a "$out/summary.txt"
}

# The probe on the GPU: installed by name from the wheelhouse index in a fresh venv.
check probe-smoke 0 sf smoke sm121-probe --target hopper --require-gpu
# The same with the GPU hidden: a skip (77) by default, a failure with --require-gpu.
check probe-hidden-gpu 77 env CUDA_VISIBLE_DEVICES= python3 -m sparkforge.cli smoke sm121-probe --target hopper
check probe-hidden-gpu-required 1 env CUDA_VISIBLE_DEVICES= python3 -m sparkforge.cli smoke sm121-probe --target hopper --require-gpu
# The mission recipes' smoke scripts against the machine's own packages, in
# "other GPU" mode (sm_90 device, sm_121 target); its onnxruntime is a CPU build.
check torch-smoke 0 env SPARKFORGE_TARGET_SM=121 python3 recipes/torch/smoke.py
check triton-smoke 0 env SPARKFORGE_TARGET_SM=121 python3 recipes/triton/smoke.py
check onnxruntime-smoke 1 env SPARKFORGE_TARGET_SM=121 python3 recipes/onnxruntime/smoke.py
cat "$out/summary.txt"
