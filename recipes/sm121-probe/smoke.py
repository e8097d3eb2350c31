#!/usr/bin/env python3
"""Smoke test for the sm121-probe wheel: does CUDA code built here run on this GPU?

Standalone on purpose (stdlib + sm121_probe only), so it can be run on a bare
DGX Spark right after `pip install sm121_probe-*.whl`.

Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import math
import random
import sys
from array import array
from types import ModuleType

N = 1_000_000
SEED = 1234
SAXPY_A = 2.5
MAX_ULPS = 1  # saxpy is exactly rounded on both sides; allow one ulp of slack
SUM_REL_TOL = 1e-5
EXIT_SKIP = 77


def ordered(bits: int) -> int:
    """Map a float32 bit pattern (as signed int32) onto a monotonic integer line."""
    return bits if bits >= 0 else -(1 << 31) - bits


def first_ulp_mismatch(got: array[float], want: array[float]) -> tuple[int, int] | None:
    """Return (index, ulp distance) of the first element further than MAX_ULPS apart."""
    got_bits = array("i", got.tobytes())
    want_bits = array("i", want.tobytes())
    for i in range(min(len(got_bits), len(want_bits))):  # no zip(strict=) on 3.9
        distance = abs(ordered(got_bits[i]) - ordered(want_bits[i]))
        if distance > MAX_ULPS:
            return i, distance
    return None


def check_saxpy(probe: ModuleType, x: array[float], y: array[float]) -> str:
    a32 = array("f", [SAXPY_A])[0]
    # float32 semantics: round the product, then round the sum (no FMA).
    product = array("f", [a32 * xi for xi in x])
    want = array("f", [product[i] + y[i] for i in range(len(y))])
    got = array("f", probe.saxpy(a32, x.tolist(), y.tolist()))
    if len(got) != len(want):
        raise AssertionError(f"saxpy returned {len(got)} elements, expected {len(want)}")
    bad = first_ulp_mismatch(got, want)
    if bad is not None:
        i, dist = bad
        raise AssertionError(
            f"saxpy element {i}: got {got[i]!r}, expected {want[i]!r} ({dist} ulp apart)"
        )
    return f"PASS saxpy: {len(got)} float32 elements match the CPU reference (<= {MAX_ULPS} ulp)"


def check_sum_squares(probe: ModuleType, x: array[float]) -> str:
    want = math.fsum(v * v for v in x)  # float32 squared is exact in double
    got = float(probe.sum_squares(x.tolist()))
    rel = abs(got - want) / abs(want) if want else abs(got)
    if not math.isclose(got, want, rel_tol=SUM_REL_TOL):
        raise AssertionError(f"sum_squares: got {got!r}, expected {want!r} (rel err {rel:.3e})")
    return f"PASS sum_squares: {got:.6f} vs fsum {want:.6f} (rel err {rel:.2e})"


def main() -> int:
    try:
        import sm121_probe as probe
    except ImportError as exc:
        print(f"FAIL: cannot import sm121_probe: {exc}")
        return 1

    print(f"sm121-probe {probe.__version__}")
    print(f"built archs: {', '.join(probe.built_archs())}")
    try:
        if probe.device_count() == 0:
            reason = probe.cuda_init_error()
            print("skipped: no CUDA device" + (f" ({reason})" if reason else ""))
            return EXIT_SKIP

        info = probe.device_info(0)
        print(
            f"device 0: {info['name']} ({info['sm']}), {info['multiprocessors']} SMs, "
            f"{info['total_memory_bytes'] / 2**30:.1f} GiB, "
            f"driver {info['driver_version']}, runtime {info['runtime_version']}"
        )
        arch = probe.kernel_arch()
        native = info["major"] * 100 + info["minor"] * 10
        how = "native code" if arch == native else f"code for an older arch, device is {native}"
        print(f"kernel __CUDA_ARCH__: {arch} ({how})")

        rng = random.Random(SEED)
        x = array("f", (rng.uniform(-1.0, 1.0) for _ in range(N)))
        y = array("f", (rng.uniform(-1.0, 1.0) for _ in range(N)))
        print(check_saxpy(probe, x, y))
        print(check_sum_squares(probe, x))
    except (RuntimeError, AssertionError) as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"PASS all checks on {info['name']} ({info['sm']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
