"""`sparkforge inspect` against NVIDIA's cuobjdump on PyPI's torch 2.14.1 x86_64 wheel.

Times whole processes, in the same run:

* `cuobjdump --list-elf libtorch_cuda.so` (the baseline; the library is extracted
  beforehand, not timed);
* `sparkforge inspect libtorch_cuda.so --json` (the same library; goal: >= 100x faster);
* `sparkforge inspect --json` on the whole 555 MB wheel (every member read);
* `sparkforge inspect --json` on flashinfer-cubin 0.6.13 (15,970 standalone cubins;
  goal: any wheel <= 10 s);
* `sparkforge --help` against `python -c pass` (start-up; goal: <= 0.15 s).

Peak memory of each is read with getrusage in a wrapper process. Results go to
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
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "  # exit 1 is a verdict
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(argv: list[str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], check=True, capture_output=True, text=True
    )
    seconds, kib = out.stdout.split()
    return float(seconds), int(kib) / 1024


def check_pinned(wheel: Path, sha256: str) -> None:
    """Stop unless ``wheel`` is the pinned file."""
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        sys.exit(f"{wheel}: sha256 {digest.hexdigest()} is not the pinned {sha256}")


def prepare() -> tuple[Path, Path, Path]:
    CACHE.mkdir(exist_ok=True)
    wheel = CACHE / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version=3.12", "--platform=manylinux_2_28_x86_64", f"--dest={CACHE}",
                        "torch==2.14.1"], check=True)  # fmt: skip
    check_pinned(wheel, WHEEL_SHA256)
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


CUBINS = "flashinfer_cubin-0.6.13-py3-none-any.whl"
CUBINS_SHA256 = "41e4848c2d09d220e8394489b2fb6cfec6b6ad09f897b5ab8b39fc23055f6c24"


def cubin_wheel() -> Path:
    wheel = CACHE / CUBINS
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"--dest={CACHE}",
                        "flashinfer-cubin==0.6.13"], check=True)  # fmt: skip
    check_pinned(wheel, CUBINS_SHA256)
    return wheel


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    wheel, library, cuobjdump = prepare()
    cubins = cubin_wheel()
    sparkforge = [sys.executable, "-m", "sparkforge.cli"]
    inspect = [*sparkforge, "inspect", "--json", "--project", str(ROOT)]
    commands = {
        "cuobjdump-library": [str(cuobjdump), "--list-elf", str(library)],
        "inspect-library": [*inspect, str(library), "--target", "spark-x86"],
        "inspect-wheel": [*inspect, str(wheel), "--target", "spark-x86"],
        "inspect-cubins": [*inspect, str(cubins), "--target", "dgx-spark"],
        "python": [sys.executable, "-c", "pass"],
        "help": [*sparkforge, "--help"],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            runs[name].append(measure(argv))
    med = {k: (statistics.median(s for s, _ in v), max(m for _, m in v)) for k, v in runs.items()}
    ratio = med["cuobjdump-library"][0] / med["inspect-library"][0]
    summary = {"date": time.strftime("%Y-%m-%d"), "repeat": repeat, "runs": runs, "median": med,
               "library_time_ratio": ratio}  # fmt: skip
    (CACHE / "inspect.json").write_text(json.dumps(summary, indent=2))
    rows = [
        ("`cuobjdump --list-elf` (baseline)", "libtorch_cuda.so (503 MB)", "cuobjdump-library"),
        ("`sparkforge inspect --json`", "libtorch_cuda.so (503 MB)", "inspect-library"),
        ("`sparkforge inspect --json`", "the whole torch wheel (555 MB)", "inspect-wheel"),
        (
            "`sparkforge inspect --json`",
            "flashinfer-cubin (458 MB, 15,970 cubins)",
            "inspect-cubins",
        ),
        ("`python -c pass` (baseline)", "-", "python"),
        ("`sparkforge --help`", "-", "help"),
    ]
    print(f"| whole process (median of {repeat}) | what it reads | seconds | peak memory |")
    print("|---|---|---|---|")
    for label, what, key in rows:
        print(f"| {label} | {what} | {med[key][0]:.3f} | {med[key][1]:.0f} MiB |")
    print(f"\ncuobjdump / sparkforge inspect on libtorch_cuda.so: {ratio:.0f}x the time")
    print(f"start-up: `sparkforge --help` {med['help'][0]:.3f} s, "
          f"{med['help'][0] - med['python'][0]:.3f} s over a bare interpreter")  # fmt: skip


if __name__ == "__main__":
    main()
