#!/usr/bin/env python3
"""Smoke test for flashinfer-jit-cache: FlashInfer attention on CUDA against a torch reference.

Standalone (stdlib + torch + flashinfer-python, which loads the kernels). Runs
single_decode_with_kv_cache (fp16, grouped-query) and single_prefill_with_kv_cache (bf16,
causal) and compares them with softmax(QK^T/sqrt(d))V computed in float32 on the CPU, then
says where each kernel came from: the AOT package flashinfer_jit_cache or a JIT build (nvcc).
On the target (SPARKFORGE_TARGET_SM, default 121) every kernel must come from
flashinfer_jit_cache. On another GPU ("other GPU mode") the AOT kernels, built for the target
only, are set aside and the kernels are JIT-compiled; without nvcc that run is skipped (77).
JIT builds go to a fresh temporary FLASHINFER_WORKSPACE_BASE: no earlier cache is reused.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device, or no nvcc
for the JIT build that other GPU mode needs).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

WORKSPACE = tempfile.mkdtemp(prefix="flashinfer-smoke-")
atexit.register(shutil.rmtree, WORKSPACE, ignore_errors=True)
os.environ["FLASHINFER_WORKSPACE_BASE"] = WORKSPACE  # read when flashinfer is imported

if importlib.util.find_spec("flashinfer") is None:  # the package under test, named first
    print("FAIL: flashinfer-python is not installed (no module flashinfer)")
    sys.exit(1)
try:
    import torch
    from torch import Tensor
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: torch is not installed: {exc}" if exc.name == "torch" else f"FAIL: {exc}")
    sys.exit(1)
try:
    import flashinfer
    import flashinfer.jit.core as jit_core
    import flashinfer.jit.env as jit_env
except Exception as exc:  # an undefined symbol, a missing dependency, a CUDA mismatch
    print(f"FAIL: cannot import flashinfer: {type(exc).__name__}: {' '.join(str(exc).split())}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234


def target_cc() -> tuple[int, int]:
    raw = os.environ.get("SPARKFORGE_TARGET_SM") or "121"
    match = re.fullmatch(r"(?:sm_)?(\d+)(\d)[af]?", raw.strip())
    if match is None:
        raise ValueError(f"SPARKFORGE_TARGET_SM={raw!r} is not a compute capability like 121")
    return int(match[1]), int(match[2])


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def find_nvcc() -> str | None:
    """Where flashinfer's JIT looks: CUDA_HOME or CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for nvcc in (home and f"{home}/bin/nvcc", shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if nvcc and os.access(nvcc, os.X_OK):
            return nvcc
    return None


def reference(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """softmax(QK^T/sqrt(d))V in float32 on the CPU; q (Lq, Hq, D), k and v (Lk, Hkv, D)."""
    q, k, v = (t.cpu().float() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]  # query head h reads kv head h // group
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    if causal:  # flashinfer aligns the queries with the last kv positions
        lq, lk = q.shape[0], k.shape[0]
        scores.masked_fill_(torch.ones(lq, lk).triu(lk - lq + 1).bool(), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def check_close(label: str, got: Tensor, want: Tensor, rtol: float, atol: float) -> None:
    got64, want64 = got.detach().cpu().double().flatten(), want.double().flatten()
    err = (got64 - want64).abs()
    bad = ~(err <= atol + rtol * want64.abs())  # NaN counts as bad
    tolerance = f"tolerance {atol:g} + {rtol:g}*|ref|"
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{label}: [{i}] is {got64[i]:.6g}, ref {want64[i]:.6g} ({tolerance})")
    print(f"PASS {label}: max abs error {float(err.max()):.3g} ({tolerance})")


def check_decode(gen: torch.Generator) -> None:
    heads, kv_heads, dim, kv_len = 32, 8, 128, 1023
    q = torch.randn(heads, dim, generator=gen).half()
    k, v = (torch.randn(kv_len, kv_heads, dim, generator=gen).half() for _ in range(2))
    got = flashinfer.single_decode_with_kv_cache(q.cuda(), k.cuda(), v.cuda())
    want = reference(q[None], k, v, causal=False)[0]
    label = f"single_decode fp16, {heads}/{kv_heads} heads, d {dim}, kv {kv_len}, vs CPU fp32"
    check_close(label, got, want, 2e-3, 2e-3)


def check_prefill(gen: torch.Generator) -> None:
    heads, kv_heads, dim, qo_len, kv_len = 16, 4, 128, 127, 513
    q = torch.randn(qo_len, heads, dim, generator=gen).bfloat16()
    k, v = (torch.randn(kv_len, kv_heads, dim, generator=gen).bfloat16() for _ in range(2))
    got = flashinfer.single_prefill_with_kv_cache(q.cuda(), k.cuda(), v.cuda(), causal=True)
    want = reference(q, k, v, causal=True)
    label = f"single_prefill bf16 causal, {heads}/{kv_heads} heads, q {qo_len}, kv {kv_len}, vs CPU fp32"
    check_close(label, got, want, 1.6e-2, 1e-2)


def kernel_sources(on_target: bool) -> None:
    """Where the single decode/prefill modules came from; on the target, AOT only."""
    registry = getattr(jit_core, "jit_spec_registry", None)
    specs = registry.get_all_specs() if registry is not None else {}
    used = {n: s for n, s in specs.items() if n.startswith(("single_decode", "single_prefill"))}
    if not used:
        raise AssertionError(
            "flashinfer registered no single decode/prefill module: cannot tell AOT from JIT"
        )
    for name, spec in used.items():
        where = f"AOT {spec.aot_path}" if spec.is_aot else f"JIT-compiled {spec.jit_library_path}"
        print(f"kernel module {name}: {where}")
    jit = [name for name, spec in used.items() if not spec.is_aot]
    if on_target and jit:
        raise AssertionError(f"not in flashinfer-jit-cache, JIT-compiled instead: {', '.join(jit)}")
    if on_target:
        print(f"PASS all {len(used)} kernel modules came from flashinfer-jit-cache (no JIT)")


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    has_aot = importlib.util.find_spec("flashinfer_jit_cache") is not None
    aot = (
        f"flashinfer-jit-cache at {jit_env.FLASHINFER_AOT_DIR}"
        if has_aot
        else "no flashinfer-jit-cache"
    )
    print(
        f"flashinfer {flashinfer.__version__}, {aot}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    )
    nvcc = find_nvcc()
    print(f"nvcc for JIT builds: {nvcc or 'none found'}; workspace {WORKSPACE}")
    try:
        if torch.cuda.device_count() == 0:
            print("skipped: no CUDA device (torch.cuda.device_count() is 0)")
            return EXIT_SKIP
        name, cc = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0: {name} ({sm})")
        on_target = cc == target
        if on_target and not has_aot:
            print("FAIL: flashinfer-jit-cache is not installed: nothing AOT to test on the target")
            return 1
        if not on_target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: AOT kernels set aside, JIT-compiling for {sm}")
            if nvcc is None:
                print("skipped: other GPU mode needs nvcc to JIT-compile, and there is none")
                return EXIT_SKIP
            jit_env.FLASHINFER_AOT_DIR = Path(WORKSPACE) / "no-aot"  # where JitSpec looks
        gen = torch.Generator().manual_seed(SEED)
        check_decode(gen)
        check_prefill(gen)
        kernel_sources(on_target)
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # JIT, load or launch errors: a failed smoke test, in one line
        print(f"FAIL: {type(exc).__name__}: {one_line(exc)[:2000]}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
