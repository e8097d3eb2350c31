#!/usr/bin/env python3
"""Smoke test for a triton wheel: JIT-compiled kernels against torch CPU results.

Standalone (stdlib + triton + torch, which gives device tensors and the reference).
SPARKFORGE_TARGET_SM (default 121) names the target; on another GPU only the generic
checks run. On the target the kernel's cubin must be built for it (sm_121 or sm_121a).
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile

try:
    import torch
    import triton
    import triton.language as tl
    from triton.compiler import CompiledKernel
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: cannot import: {exc}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234
N_ADD = 1_000_003  # not a multiple of the block, so the masked tail is exercised
MATMUL, TILE = 256, 64
PTXAS_ENV = ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH")


# Triton kernels take no Python type hints, and triton ships none for mypy.
# mypy: disable-error-code="no-untyped-def, untyped-decorator"


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, n, TILE: tl.constexpr):
    """C = A @ B, row-major n x n with n a multiple of TILE; one TILE x TILE block of C each."""
    rows = tl.program_id(0) * TILE + tl.arange(0, TILE)
    cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    acc = tl.zeros((TILE, TILE), dtype=tl.float32)
    for k0 in range(0, n, TILE):
        ks = k0 + tl.arange(0, TILE)
        a = tl.load(a_ptr + rows[:, None] * n + ks[None, :])
        b = tl.load(b_ptr + ks[:, None] * n + cols[None, :])
        acc += tl.dot(a, b)  # fp16 inputs, fp32 accumulator
    tl.store(c_ptr + rows[:, None] * n + cols[None, :], acc)


def target_cc() -> tuple[int, int]:
    raw = os.environ.get("SPARKFORGE_TARGET_SM") or "121"
    match = re.fullmatch(r"(?:sm_)?(\d+)(\d)[af]?", raw.strip())
    if match is None:
        raise ValueError(f"SPARKFORGE_TARGET_SM={raw!r} is not a compute capability like 121")
    return int(match[1]), int(match[2])


def cuda_device() -> tuple[str, tuple[int, int]] | str:
    """Device 0's name and compute capability, asked of the driver; or why there is none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"no NVIDIA driver: {exc}"
    status = cuda.cuInit(0)
    if status in (100, 34):  # CUDA_ERROR_NO_DEVICE, CUDA_ERROR_STUB_LIBRARY
        return f"cuInit returned CUresult {status}"
    if status != 0:
        raise RuntimeError(f"cuInit failed with CUresult {status}")
    count, device, major, minor = (ctypes.c_int() for _ in range(4))
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "the driver reports 0 devices"
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    cuda.cuDeviceGetName(name, len(name), device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # COMPUTE_CAPABILITY_MINOR
    return name.value.decode(), (major.value, minor.value)


def ptxas_info(arch: int) -> str:
    """Which ptxas triton runs: informational (its CUDA release decides whether sm_121 builds)."""
    env = "".join(f"; {key}={os.environ[key]}" for key in PTXAS_ENV if key in os.environ)
    try:
        from triton.backends.nvidia import compiler

        try:
            path = compiler.get_ptxas(arch).path
        except TypeError:  # releases whose get_ptxas() takes no arch
            path = compiler.get_ptxas().path
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
        return f"ptxas: {path} ({version.stdout.strip().splitlines()[-1]}){env}"
    except Exception as exc:  # informational only: never fails the test
        return f"ptxas: not discoverable ({type(exc).__name__}: {exc}){env}"


def cubin_sm(cubin: bytes) -> int | None:
    """The SM in a cubin's ELF e_flags: bits 0-7 in ELF ABI version 7, bits 8-15 in version 8."""
    if cubin[:4] != b"\x7fELF":
        return None
    flags = int.from_bytes(cubin[48:52], "little")
    return {7: flags & 0xFF, 8: (flags >> 8) & 0xFF}.get(cubin[8])


def check_add(gen: torch.Generator) -> CompiledKernel:
    x, y = torch.randn(N_ADD, generator=gen), torch.randn(N_ADD, generator=gen)
    out = torch.empty(N_ADD, device="cuda")
    kernel = add_kernel[(triton.cdiv(N_ADD, 1024),)](x.cuda(), y.cuda(), out, N_ADD, BLOCK=1024)
    differ = int((out.cpu() != x + y).sum())
    if differ:
        raise AssertionError(f"vector add: {differ} of {N_ADD} elements differ from torch CPU")
    print(f"PASS vector add: {N_ADD} float32 elements equal torch CPU's exactly")
    return kernel


def check_matmul(gen: torch.Generator) -> None:
    a, b = (torch.randn(MATMUL, MATMUL, generator=gen).half() for _ in range(2))
    c = torch.empty(MATMUL, MATMUL, device="cuda")
    matmul_kernel[(MATMUL // TILE, MATMUL // TILE)](a.cuda(), b.cuda(), c, MATMUL, TILE=TILE)
    want = a.float() @ b.float()
    err = (c.cpu() - want).abs()
    label = f"tiled matmul {MATMUL}^3 fp16 in, fp32 acc, vs torch CPU fp32"
    if not bool((err <= 1e-2 + 1e-3 * want.abs()).all()):  # NaN fails too
        raise AssertionError(f"{label}: max abs error {float(err.max()):.3g}")
    print(f"PASS {label}: max abs error {float(err.max()):.3g} (tolerance 1e-2 + 1e-3*|ref|)")


def check_compiled(kernel: CompiledKernel, cc: tuple[int, int], on_target: bool) -> None:
    ptx = re.search(r"^\s*\.target\s+(\w+)", kernel.asm["ptx"], re.MULTILINE)
    sm = cubin_sm(kernel.asm["cubin"])
    compiled = f"{kernel.metadata.target}; PTX .target {ptx[1] if ptx else '?'}; cubin ELF sm_{sm}"
    if not on_target:
        print(f"compiled for: {compiled}")
        return
    wanted = f"sm_{cc[0]}{cc[1]}"
    if ptx is None or ptx[1] not in (wanted, wanted + "a") or sm != cc[0] * 10 + cc[1]:
        raise AssertionError(f"kernel not compiled for {wanted}: {compiled}")
    print(f"PASS compile target {wanted}: {compiled}")


def main() -> int:
    # A fresh kernel cache: every kernel below is really compiled by this triton.
    with tempfile.TemporaryDirectory(prefix="triton-smoke-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        return run()


def run() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    try:
        print(f"triton {triton.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
        backends = triton.backends.backends
        if "nvidia" not in backends:
            print(f"FAIL: this triton has no NVIDIA backend (backends: {', '.join(backends)})")
            return 1
        device = cuda_device()
        if isinstance(device, str):
            print(f"skipped: no CUDA device ({device})")
            return EXIT_SKIP
        if torch.version.cuda is None or not torch.cuda.is_available():
            print(
                f"FAIL: torch {torch.__version__} cannot use the GPU; this test needs a CUDA torch"
            )
            return 1
        name, cc = device
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0: {name} ({sm})")
        print(ptxas_info(cc[0] * 10 + cc[1]))
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: target-specific checks skipped")
        gen = torch.Generator().manual_seed(SEED)
        kernel = check_add(gen)
        check_matmul(gen)
        check_compiled(kernel, cc, on_target=cc == target)
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # compile or launch errors: a failed smoke test, said in one line
        print(f"FAIL: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
