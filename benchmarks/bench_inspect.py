"""`sparkforge inspect` against NVIDIA's cuobjdump on PyPI's torch 2.14.1 x86_64 wheel.

Times, in the same run: `sparkforge inspect --json` on the whole 555 MB wheel
(streaming each ELF member from the zip) and `cuobjdump --list-elf` on the one
library it covers, libtorch_cuda.so (extracted beforehand, not timed). Peak
memory of each is read with getrusage in a wrapper process. Results go to
.bench/inspect.json and are printed as a markdown table.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
WHEEL = "torch-2.14.1-cp312-cp312-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "23011fe29a99b591eabb3a31a25080c62e2c2f0690a3c798744e5489dae50451"
CUOBJDUMP = "nvidia-cuda-cuobjdump==13.5.37"
# Runs a command and prints its wall time and the child's peak RSS (KiB).
MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(argv: list[str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], check=True, capture_output=True, text=True
    )
    seconds, kib = out.stdout.split()
    return float(seconds), int(kib) / 1024


def prepare() -> tuple[Path, Path, Path]:
    CACHE.mkdir(exist_ok=True)
    wheel = CACHE / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version=3.12", "--platform=manylinux_2_28_x86_64", f"--dest={CACHE}",
                        "torch==2.14.1"], check=True)  # fmt: skip
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {digest.hexdigest()} is not the pinned {WHEEL_SHA256}")
    library = CACHE / "libtorch_cuda.so"
    if not library.exists():
        with zipfile.ZipFile(wheel) as archive, library.open("wb") as out:
            out.write(archive.read("torch/lib/libtorch_cuda.so"))
    venv = CACHE / "cuobjdump-venv"
    found = sorted(venv.glob("lib/python*/site-packages/nvidia/*/bin/cuobjdump"))
    if not found:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", CUOBJDUMP], check=True
        )
        found = sorted(venv.glob("lib/python*/site-packages/nvidia/*/bin/cuobjdump"))
    return wheel, library, found[0]


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    wheel, library, cuobjdump = prepare()
    inspect = [sys.executable, "-m", "sparkforge.cli", "inspect", str(wheel), "--target", "dgx-spark",
               "--json", "--project", str(ROOT)]  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {"inspect": [], "cuobjdump": []}
    for _ in range(repeat):
        runs["inspect"].append(measure(inspect))
        runs["cuobjdump"].append(measure([str(cuobjdump), "--list-elf", str(library)]))
    med = {k: (statistics.median(s for s, _ in v), max(m for _, m in v)) for k, v in runs.items()}
    summary = {"date": time.strftime("%Y-%m-%d"), "repeat": repeat, "runs": runs, "median": med,
               "time_ratio": med["cuobjdump"][0] / med["inspect"][0],
               "memory_ratio": med["cuobjdump"][1] / med["inspect"][1]}  # fmt: skip
    (CACHE / "inspect.json").write_text(json.dumps(summary, indent=2))
    print(f"| tool (median of {repeat}) | what it reads | seconds | peak memory |")
    print("|---|---|---|---|")
    print(
        f"| `sparkforge inspect --json` | the whole wheel (555 MB) | {med['inspect'][0]:.1f} | {med['inspect'][1]:.0f} MiB |"
    )
    print(
        f"| `cuobjdump --list-elf` | libtorch_cuda.so only | {med['cuobjdump'][0]:.1f} | {med['cuobjdump'][1]:.0f} MiB |"
    )
    print(
        f"\ncuobjdump / inspect: {summary['time_ratio']:.1f}x the time, {summary['memory_ratio']:.0f}x the memory"
    )


if __name__ == "__main__":
    main()
