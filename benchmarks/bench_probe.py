"""Pipeline overhead on the probe recipe, measured against a bare build in the same run.

Measures, for the same source and the same CUDA archs (sm_90 + sm_121):

* bare:      ``python -m build --wheel`` of probe/ (isolated build env, no repair/index)
* cold:      ``sparkforge build`` with an empty workspace and wheelhouse
* warm-env:  ``sparkforge build --force`` with the build venv already cached
* no-op:     ``sparkforge build`` again (the build key is already in the wheelhouse)

Each is repeated ``--repeat`` times (default 2) and the median is reported, with
the ratios cold/bare and warm-env/bare (goal: pipeline overhead ≤ 25 %).
Results go to .bench/probe.json and are printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sparkforge.building.runners import find_python  # noqa: E402

ARCHS = "90-real;121-real"


def timed(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"benchmark step failed: {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout


def bare_build(python: str, scratch: Path) -> float:
    source = scratch / "probe"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT / "probe", source)
    env = {**os.environ, "CMAKE_ARGS": f"-DCMAKE_CUDA_ARCHITECTURES={ARCHS}"}
    seconds, _ = timed(
        [python, "-m", "build", "--wheel", "--outdir", str(scratch / "bare-dist"), str(source)],
        env=env,
    )
    return seconds


def sparkforge(workspace: Path, wheelhouse: Path, *extra: str) -> tuple[float, str]:
    return timed(
        [
            sys.executable,
            "-m",
            "sparkforge.cli",
            "build",
            "sm121-probe",
            "--target",
            "hopper",
            "--cuda-arch",
            "121",
            "--project",
            str(ROOT),
            "--workspace",
            str(workspace),
            "--wheelhouse",
            str(wheelhouse),
            *extra,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    python312 = find_python("3.12")
    results: dict[str, list[float]] = {
        "bare": [],
        "cold": [],
        "warm_env": [],
        "noop_wall": [],
        "noop_pipeline": [],
    }
    with tempfile.TemporaryDirectory(prefix="sparkforge-bench-") as tmp:
        scratch = Path(tmp)
        tool = scratch / "tool-venv"
        subprocess.run([python312, "-m", "venv", str(tool)], check=True)
        subprocess.run(
            [str(tool / "bin" / "python"), "-m", "pip", "install", "-q", "build"], check=True
        )
        for round_ in range(args.repeat):
            results["bare"].append(bare_build(str(tool / "bin" / "python"), scratch))
            workspace, wheelhouse = scratch / f"ws{round_}", scratch / f"wh{round_}"
            results["cold"].append(sparkforge(workspace, wheelhouse)[0])
            results["warm_env"].append(sparkforge(workspace, wheelhouse, "--force")[0])
            wall, out = sparkforge(workspace, wheelhouse)
            assert "up to date" in out, out
            results["noop_wall"].append(wall)
            results["noop_pipeline"].append(float(re.search(r"pipeline time ([\d.]+) s", out)[1]))  # type: ignore[index]
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "repeat": args.repeat,
        "runs": results,
        "median": med,
        "cold_over_bare": med["cold"] / med["bare"],
        "warm_env_over_bare": med["warm_env"] / med["bare"],
    }
    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "probe.json").write_text(json.dumps(summary, indent=2))
    print(f"\n| measure ({summary['machine']}, median of {args.repeat}) | seconds | vs bare |")
    print("|---|---|---|")
    print(f"| bare `python -m build --wheel` | {med['bare']:.1f} | 1.00 |")
    print(
        f"| sparkforge cold (empty workspace) | {med['cold']:.1f} | {summary['cold_over_bare']:.2f} |"
    )
    print(
        f"| sparkforge --force, build venv cached | {med['warm_env']:.1f} | {summary['warm_env_over_bare']:.2f} |"
    )
    print(f"| no-op rebuild, whole process | {med['noop_wall']:.2f} | |")
    print(f"| no-op rebuild, pipeline time | {med['noop_pipeline']:.2f} | |")


if __name__ == "__main__":
    main()
