"""How much a preflight costs against the build it protects, in the same run.

For the probe (sm_90 + sm_121, hopper target), each with a fresh workspace and
wheelhouse so that both pay for sources and the build venv:

* preflight: ``sparkforge build --preflight`` (sources, patches, venv, the
  front-end's check, CMake configure offline, the checks on its output)
* build:     ``sparkforge build`` (the same steps, then compile, repair, audit,
  publish)

Repeated ``--repeat`` times (default 2); medians and the ratio preflight/build
are printed as a markdown table and written to .bench/preflight.json. The
probe is the smallest CUDA build there is, so the ratio is an upper bound: a
preflight costs about the same for vLLM (its configure is ~30 s) while the
build it stands in for takes tens of minutes to hours.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(workspace: Path, wheelhouse: Path, *extra: str) -> float:
    argv = [sys.executable, "-m", "sparkforge.cli", "build", "sm121-probe", "--target", "hopper",
            "--cuda-arch", "121", "--project", str(ROOT), "--workspace", str(workspace),
            "--wheelhouse", str(wheelhouse), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"preflight": [], "build": []}
    for _ in range(args.repeat):
        for kind, extra in (("preflight", ("--preflight",)), ("build", ())):
            with tempfile.TemporaryDirectory(prefix="sparkforge-bench-") as scratch:
                times[kind].append(run(Path(scratch, "ws"), Path(scratch, "wh"), *extra))
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    ratio = medians["preflight"] / medians["build"]
    result = {"machine": platform.machine(), "cores": __import__("os").cpu_count(),
              "repeat": args.repeat, "seconds": times, "median": medians, "ratio": ratio}  # fmt: skip
    out = ROOT / ".bench" / "preflight.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | median s | runs |\n|---|---|---|")
    for kind, values in times.items():
        print(f"| {kind} | {medians[kind]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\npreflight / build = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
