"""What ccache saves on an unchanged rebuild of the probe, measured against a cold build in
the same run (goal: the rebuild costs <= 0.3x of the cold build).

* cold:    ``sparkforge build sm121-probe`` with an empty workspace (empty ccache, no venv)
* rebuild: ``sparkforge build sm121-probe --force``: same key, same sources, ccache warm

Both build sm_90 + sm_121 (``--target hopper --cuda-arch 121``). Whole-process seconds and
the build phase's own seconds are reported, with the ccache hit/miss counts the pipeline
logs. Needs ccache on PATH. Results go to .bench/ccache.json and a markdown table.
(llama-cpp-python's figures come from the GPU machine: docs/gpu-runs/2026-11-30-llama-current.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
CCACHE = re.compile(r"ccache: (\d+) hit\(s\), (\d+) miss\(es\), (\d+) uncacheable")
BUILD_PHASE = re.compile(r"✓ build ([0-9.]+) s")


def run(argv: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    hits = CCACHE.search(result.stdout)
    phase = BUILD_PHASE.search(result.stdout)
    if hits is None or phase is None:
        sys.exit("no ccache line in the build's output: is ccache on PATH where builds run?")
    return {"seconds": seconds, "build_phase": float(phase[1]), "hits": int(hits[1]),
            "misses": int(hits[2]), "uncacheable": int(hits[3])}  # fmt: skip


def main() -> None:
    if shutil.which("ccache") is None:
        sys.exit("ccache is not installed (apt-get install ccache): nothing to measure")
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-ccache-") as tmp:
        base = [sys.executable, "-m", "sparkforge.cli", "build", "sm121-probe", "--target",
                "hopper", "--cuda-arch", "121", "--workspace", f"{tmp}/ws", "--wheelhouse",
                f"{tmp}/wh", "--project", str(ROOT)]  # fmt: skip
        cold = run(base)
        rebuild = run([*base, "--force"])
    ratio = rebuild["seconds"] / cold["seconds"]
    phase_ratio = rebuild["build_phase"] / cold["build_phase"]
    summary = {"date": time.strftime("%Y-%m-%d"), "cold": cold, "rebuild": rebuild,
               "ratio": ratio, "build_phase_ratio": phase_ratio}  # fmt: skip
    (CACHE / "ccache.json").write_text(json.dumps(summary, indent=2))
    print("| probe (sm_90 + sm_121) | whole process s | build phase s | ccache hits / misses |")
    print("|---|---|---|---|")
    for name, row in (("cold (empty workspace)", cold), ("--force rebuild", rebuild)):
        print(f"| {name} | {row['seconds']:.1f} | {row['build_phase']:.1f} | "
              f"{row['hits']} / {row['misses']} |")  # fmt: skip
    print(f"\nrebuild / cold: {ratio:.2f}x (build phase {phase_ratio:.2f}x)")


if __name__ == "__main__":
    main()
