#!/usr/bin/env bash
# vLLM 0.11.1 built by sparkforge on the GPU machine (nvidia-h200-x2: 32 cores, no network),
# end to end: bundle -> verified unpack -> environment (the machine's installed torch,
# --installed-need) -> build -> repair -> audit -> wheelhouse -> provenance; then the
# extension imports with the patch, the one the SCALED_MM patch prevents without it, and
# the smoke script. Long: run it detached (setsid) and poll (docs/gpu-runs/2026-11-30-vllm).
#
# Needs, next to the checkout (ignored paths, carried by the device tool):
#   /tmp/sfgpu/vllm.bundle.tar.xz  `sparkforge bundle vllm --target spark-x86` (carried in parts)
#   .whl/                          sparkforge's own dependencies (pydantic, GitPython, …)
# Results: /tmp/sfgpu/out (copied to $OUT by the polling call).
set -uo pipefail
work=/tmp/sfgpu
out=$work/out
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sf-site .whl/*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/sf-site" PATH="/tmp/sf-site/bin:$PATH" PYTHONUNBUFFERED=1
# The build interpreter: the machine's python3, whose environment holds torch 2.11.0+cu130.
export SPARKFORGE_PYTHON="$(command -v python3)"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  echo "cores: $(nproc)"; grep -E 'MemTotal|MemAvailable' /proc/meminfo
  ldd --version | head -1
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)'
  command -v uv && uv --version
} >"$out/machine.txt" 2>&1
# Memory of the whole machine every 15 s while the build runs (the peak is in docs).
( while sleep 15; do echo "$(date +%s) $(free -m | awk '/Mem:/{print $3}')"; done ) >"$out/memory.txt" &
sampler=$!
house=$work/wheelhouse
start=$(date +%s)
python3 - "$house" >"$out/build.txt" 2>&1 <<'PY'
import resource, subprocess, sys
code = subprocess.call([sys.executable, "-m", "sparkforge.cli", "build", "vllm",
                        "--target", "spark-x86", "--from-bundle", "/tmp/sfgpu/vllm.bundle.tar.xz",
                        "--installed-need", "torch", "--jobs", "32", "--keep-build-dir",
                        "--wheelhouse", sys.argv[1]])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"[measure] exit {code}; peak RSS of one process: {peak:.0f} MiB")
sys.exit(code)
PY
code=$?
kill $sampler
echo "build: exit $code in $(( $(date +%s) - start )) s" | tee "$out/summary.txt"
grep -o '\[[0-9]*/[0-9]*\]' "$out/build.txt" | tail -1 | sed 's/^/ninja steps (last): /' >>"$out/summary.txt"
awk 'max<$2{max=$2} END{print "peak memory in use (free -m): " max " MiB"}' "$out/memory.txt" >>"$out/summary.txt"
cp /tmp/sparkforge-from-bundle-*/workspace/logs/vllm-*.log "$out/build.log" 2>/dev/null
[ "$code" = 0 ] || exit "$code"
wheel=$(ls "$house"/files/vllm-*.whl)
cp "$wheel".provenance.json "$out/provenance.json"
sha256sum "$wheel" | sed "s|$house/files/||" >>"$out/summary.txt"
ls -la "$house"/files >"$out/wheelhouse.txt"
for t in spark-x86 dgx-spark hopper; do
  python3 -m sparkforge.cli inspect "$wheel" --target "$t" >"$out/inspect-$t.txt" 2>&1
done
# From the published wheel, in a fresh directory: install by name from the index, no deps.
rm -rf /tmp/vllm-site
python3 -m pip install -q --no-index --no-deps --find-links "$house/files" --target /tmp/vllm-site vllm
# Every extension module loads (symbols resolved) and registers its ops, with the patch.
python3 - /tmp/vllm-site >"$out/imports-patched.txt" 2>&1 <<'PY'
import importlib.machinery, importlib.util, sys, torch
from pathlib import Path
site = Path(sys.argv[1])
ok = True
for path in sorted(site.glob("vllm/**/*.so")):
    name = ".".join(path.relative_to(site).with_suffix("").with_suffix("").parts)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"imports: {name}")
    except Exception as exc:
        ok = False
        print(f"FAILS: {name}: {type(exc).__name__}: {exc}")
print("ops in torch.ops._C:", len([n for n in dir(torch.ops._C) if not n.startswith("_")]))
sys.exit(0 if ok else 1)
PY
echo "extension imports (patched): exit $?" | tee -a "$out/summary.txt"
# Without the patch: vllm._C relinked from the same build without grouped_mm_c3x_sm100.cu.o,
# the one object the patch adds; the import then names the symbol it cannot find.
temp=$(ls -d /tmp/sparkforge-from-bundle-*/workspace/builds/*/src/build/temp.*)
python3 - "$temp" >"$out/imports-unpatched.txt" 2>&1 <<'PY'
import ctypes, glob, re, shlex, shutil, subprocess, sys, torch
temp = sys.argv[1]
# ninja from the build's own venv (the machine may have none on PATH).
ninja = shutil.which("ninja") or sorted(glob.glob("/tmp/sparkforge-from-bundle-*/workspace/envs/*/bin/ninja"))[0]
commands = subprocess.run([ninja, "-C", temp, "-t", "commands", "_C"], capture_output=True,
                          text=True, check=True).stdout.splitlines()
# ninja's link line is a shell command (": && c++ … && :"): edited as text, run by the shell.
link = next(c for c in reversed(commands) if "_C.abi3.so" in c and " -o " in c)
dropped = [w for w in shlex.split(link) if "grouped_mm_c3x_sm100.cu.o" in w]
print("relinked without:", dropped)
if not dropped:
    sys.exit("the link of _C has no grouped_mm_c3x_sm100.cu.o: nothing to leave out")
for word in dropped:
    link = link.replace(" " + word, " ")
link = re.sub(r"-o \S*_C\.abi3\.so", "-o /tmp/_C_unpatched.abi3.so", link)
subprocess.run(link, shell=True, cwd=temp, check=True)
undefined = subprocess.run(["nm", "-D", "--undefined-only", "/tmp/_C_unpatched.abi3.so"],
                           capture_output=True, text=True).stdout
print("undefined cutlass_moe_mm_sm100:", [l.split()[-1] for l in undefined.splitlines() if "cutlass_moe_mm_sm100" in l])
try:
    ctypes.CDLL("/tmp/_C_unpatched.abi3.so")
    print("imports: unpatched _C (unexpected)")
except OSError as exc:
    print(f"FAILS as expected: {exc}")
PY
echo "unpatched _C: $(tail -1 "$out/imports-unpatched.txt")" | tee -a "$out/summary.txt"
# The recipe's smoke script, other-GPU mode (the wheel has the Spark's code, the GPU is sm_90).
PYTHONPATH=/tmp/vllm-site SPARKFORGE_TARGET_SM=121 python3 recipes/vllm/smoke.py >"$out/smoke.txt" 2>&1
echo "smoke: exit $?" | tee -a "$out/summary.txt"
