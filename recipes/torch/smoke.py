#!/usr/bin/env python3
"""Smoke test for a torch wheel: real CUDA arithmetic against CPU references.

Standalone (stdlib + torch). A CPU-only torch fails rather than skips: a CPU build
posing as a GPU build is what this test exists to catch. SPARKFORGE_TARGET_SM
(default 121) names the target; on another GPU only the generic checks run.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings

try:
    import torch
    import torch.nn.functional as F
    from torch import Tensor
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: cannot import torch: {exc}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234
# torch warns with one of these at CUDA init when it carries no code for the GPU.
INCOMPATIBLE = ("not compatible with the current PyTorch installation", "does not include kernels")


def target_cc() -> tuple[int, int]:
    raw = os.environ.get("SPARKFORGE_TARGET_SM") or "121"
    match = re.fullmatch(r"(?:sm_)?(\d+)(\d)[af]?", raw.strip())
    if match is None:
        raise ValueError(f"SPARKFORGE_TARGET_SM={raw!r} is not a compute capability like 121")
    return int(match[1]), int(match[2])


def runs_natively(arch: str, cc: tuple[int, int]) -> bool:
    """CUDA's rule for SASS: sm_XY runs on X.Z for Z >= Y; sm_XYa only on X.Y itself."""
    match = re.fullmatch(r"sm_(\d+)(\d)([af]?)", arch)
    if match is None or int(match[1]) != cc[0]:
        return False  # compute_XY is PTX, JIT-compiled at load: not native
    return int(match[2]) == cc[1] if match[3] == "a" else int(match[2]) <= cc[1]


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_close(label: str, got: Tensor, want: Tensor, rtol: float, atol: float) -> None:
    """PASS if every element is within atol + rtol*|want| of the CPU reference."""
    got64, want64 = got.detach().cpu().double().flatten(), want.double().flatten()
    err = (got64 - want64).abs()
    bad = ~(err <= atol + rtol * want64.abs())  # NaN counts as bad
    tolerance = f"tolerance {atol:g} + {rtol:g}*|ref|"
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{label}: [{i}] is {got64[i]:.6g}, CPU {want64[i]:.6g} ({tolerance})")
    print(f"PASS {label}: max abs error {float(err.max()):.3g} ({tolerance})")


def nccl_version() -> str:
    if not (torch.distributed.is_available() and torch.distributed.is_nccl_available()):
        return "not built in"
    return ".".join(map(str, torch.cuda.nccl.version()))


def check_build_options() -> None:
    """What the recipe turns on must be there: PyTorch turns a missing library's
    option off with only a CMake warning, so a silent fallback shows up here."""
    found = {
        "cuDNN": torch.backends.cudnn.is_available(),
        "cuSPARSELt": torch.backends.cusparselt.is_available(),
        "flash attention": torch.backends.cuda.is_flash_attention_available(),
    }
    missing = [name for name, ok in found.items() if not ok]
    if missing:
        raise AssertionError(f"built without {', '.join(missing)} (the recipe enables them)")
    print(f"PASS built with {', '.join(found)}")


def check_nccl() -> None:
    version = nccl_version()
    if version == "not built in":
        raise AssertionError(
            "torch.distributed has no NCCL backend (the recipe builds with USE_NCCL=1)"
        )
    print(f"PASS NCCL {version} available to torch.distributed")


def check_compile(gen: torch.Generator, cache: str) -> None:
    """torch.compile (Inductor generates and compiles Triton kernels) in fresh caches."""

    def f(x: Tensor, y: Tensor) -> Tensor:
        return F.gelu(x @ y) + torch.sin(x) * 0.5

    x, y = torch.randn(64, 64, generator=gen), torch.randn(64, 64, generator=gen)
    compiled = torch.compile(f, fullgraph=True)
    got = compiled(x.cuda(), y.cuda())
    torch.cuda.synchronize()
    check_close("torch.compile gelu(x@y)+sin(x)/2 (fresh cache) vs CPU fp64", got,
                f(x.double(), y.double()), 1e-3, 1e-2)  # fmt: skip
    kernels = [n for _, _, names in os.walk(cache) for n in names if n.endswith((".cubin", ".ptx"))]
    if not kernels:
        raise AssertionError(
            f"torch.compile left no compiled Triton kernel in the fresh cache {cache}"
        )
    print(f"PASS torch.compile built {len(kernels)} kernel file(s) in the fresh cache")


def check_arithmetic(gen: torch.Generator) -> None:
    # Measured on CPU: fp32 errs ~5e-5 here, TF32 ~3e-2: the tolerance tells them apart.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a, b = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    want = a.double() @ b.double()
    check_close("fp32 matmul 512x512, TF32 off, vs CPU fp64", a.cuda() @ b.cuda(), want, 0.0, 2e-3)
    a, b = a.bfloat16(), b.bfloat16()
    want = a.double() @ b.double()
    check_close("bf16 matmul 512x512 vs CPU fp64", a.cuda() @ b.cuda(), want, 1.6e-2, 0.1)

    if not torch.backends.cudnn.is_available():
        raise AssertionError("cuDNN is not available to this torch")
    x, w = torch.randn(4, 16, 32, 32, generator=gen), torch.randn(32, 16, 3, 3, generator=gen)
    got = F.conv2d(x.cuda(), w.cuda(), padding=1)
    want = F.conv2d(x.double(), w.double(), padding=1)
    check_close("conv2d 4x16x32x32 * 32x16x3x3 (cuDNN) vs CPU fp64", got, want, 0.0, 2e-3)


def check_sdpa(gen: torch.Generator) -> None:
    """Flash attention where torch supports it on this GPU, else the math backend."""
    q, k, v = (torch.randn(2, 4, 128, 64, generator=gen).half() for _ in range(3))
    scores = (q.float() @ k.float().transpose(-2, -1)) * 64**-0.5
    want = torch.softmax(scores, dim=-1) @ v.float()
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                got, backend = F.scaled_dot_product_attention(qc, kc, vc), "flash"
        except RuntimeError as exc:
            if "No available kernel" not in str(exc):
                raise
            why = one_line(" ".join(str(w.message) for w in caught) or exc)
            print(f"flash attention backend not supported on this device: {why}")
            with sdpa_kernel([SDPBackend.MATH]):
                got, backend = F.scaled_dot_product_attention(qc, kc, vc), "math"
    check_close(f"sdpa fp16 2x4x128x64, {backend} backend, vs CPU fp32", got, want, 1e-2, 5e-3)


def check_target(cc: tuple[int, int], arch_list: list[str], init_warnings: list[str]) -> None:
    sm = f"sm_{cc[0]}{cc[1]}"
    native = [arch for arch in arch_list if runs_natively(arch, cc)]
    if not native:
        raise AssertionError(f"nothing in the arch list runs natively on {sm}: {arch_list}")
    print(f"PASS native code for {sm} in the arch list: {' '.join(native)}")
    if torch.cuda.get_device_capability(0) != cc:
        raise AssertionError(f"get_device_capability() is {torch.cuda.get_device_capability(0)}")
    print(f"PASS torch.cuda.get_device_capability(): {cc}")
    for text in init_warnings:
        if any(marker in text for marker in INCOMPATIBLE):
            raise AssertionError(f"torch.cuda.init() warned: {one_line(text)}")
    print("PASS torch.cuda.init(): no 'not compatible' warning")


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    if torch.version.cuda is None:
        kind = "a ROCm build" if torch.version.hip else "a CPU-only build"
        print(f"FAIL: torch {torch.__version__} is {kind}: torch.version.cuda is None")
        return 1
    count = torch.cuda.device_count()
    if count == 0:
        try:
            torch.cuda.init()  # raises, saying why: no driver, or no GPU visible
            reason = "torch.cuda.device_count() is 0"
        except RuntimeError as exc:
            reason = one_line(exc)
        print(f"skipped: no CUDA device ({reason})")
        return EXIT_SKIP
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.init()
        init_warnings = [str(w.message) for w in caught]
        for text in init_warnings:
            print(f"warning at torch.cuda.init(): {one_line(text)}")
        name, cc = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl_version()}")
        print(f"device 0 of {count}: {name} ({sm})")
        arch_list = torch.cuda.get_arch_list()
        print(f"arch list: {' '.join(arch_list)}")
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: target-specific checks skipped")
        gen = torch.Generator().manual_seed(SEED)
        check_arithmetic(gen)
        check_sdpa(gen)
        check_nccl()
        check_build_options()
        with tempfile.TemporaryDirectory(prefix="torch-smoke-cache-") as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
            os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
            check_compile(gen, cache)
        if cc == target:
            check_target(target, arch_list, init_warnings)
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # any error on the GPU is a failed smoke test, said in one line
        print(f"FAIL: {type(exc).__name__}: {one_line(exc)}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
