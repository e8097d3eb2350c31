#!/usr/bin/env python3
"""Smoke test for a torchaudio wheel: its CUDA kernels against the same ops on the CPU.

Standalone (stdlib + torch + torchaudio). Reports whether torchaudio's C++ extension loaded
and the CUDA version it was built with (where this torchaudio has those APIs), then runs
lfilter (torchaudio's own IIR kernel), forced_align and rnnt_loss (loss and gradient) on
CUDA tensors against the CPU; a function this torchaudio lacks is skipped with a reason.
SPARKFORGE_TARGET_SM (default 121) names the target; on another GPU the same checks run
and say so ("other GPU mode"): torchaudio has no target-specific checks of its own.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings

if importlib.util.find_spec("torchaudio") is None:  # the package under test, named first
    print("FAIL: torchaudio is not installed (no module torchaudio)")
    sys.exit(1)
try:
    import torch
    from torch import Tensor
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: torch is not installed: {exc}" if exc.name == "torch" else f"FAIL: {exc}")
    sys.exit(1)
try:
    import torchaudio
    import torchaudio.functional as AF
except Exception as exc:  # an undefined symbol, a missing dependency, a CUDA mismatch
    print(f"FAIL: cannot import torchaudio: {type(exc).__name__}: {' '.join(str(exc).split())}")
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


def check_close(label: str, got: Tensor, want: Tensor, rtol: float, atol: float) -> None:
    """PASS if every element is within atol + rtol*|want| of the CPU result."""
    got64, want64 = got.detach().cpu().double().flatten(), want.detach().double().flatten()
    if got64.shape != want64.shape:
        raise AssertionError(f"{label}: {got64.numel()} elements, CPU {want64.numel()}")
    err = (got64 - want64).abs()
    bad = ~(err <= atol + rtol * want64.abs())  # NaN counts as bad
    tolerance = f"tolerance {atol:g} + {rtol:g}*|CPU|"
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{label}: [{i}] is {got64[i]:.6g}, CPU {want64[i]:.6g} ({tolerance})")
    print(f"PASS {label}: max abs error {float(err.max()):.3g} ({tolerance})")


def check_extension() -> None:
    """Without its extension torchaudio quietly runs lfilter in plain torch: that is a failure."""
    ext = getattr(torchaudio, "_extension", None)
    available = getattr(ext, "_IS_TORCHAUDIO_EXT_AVAILABLE", None)
    if available is None:
        print("torchaudio._extension has no _IS_TORCHAUDIO_EXT_AVAILABLE: not reported")
    elif not available:
        raise AssertionError(
            "torchaudio's C++ extension (torchaudio.lib._torchaudio) is not available"
        )
    else:
        align = getattr(ext, "_IS_ALIGN_AVAILABLE", "not reported")
        print(f"PASS torchaudio C++ extension available (forced-align support: {align})")
    lib = getattr(getattr(torchaudio, "lib", None), "_torchaudio", None)
    if lib is not None and hasattr(lib, "cuda_version"):
        version = lib.cuda_version()
        if version is None:
            raise AssertionError(
                "torchaudio's extension was built without CUDA (cuda_version() None)"
            )
        built = f"{version // 1000}.{version % 1000 // 10}"
        print(f"PASS torchaudio extension built with CUDA {built} (torch: {torch.version.cuda})")
    else:
        print("torchaudio.lib._torchaudio.cuda_version() does not exist: not reported")


def check_lfilter(gen: torch.Generator) -> None:
    # Two stable filters (poles inside the unit circle), one per channel (batching=True).
    a = torch.tensor([[1.0, -1.8, 0.81], [1.0, -0.5, 0.25]])
    b = torch.tensor([[0.01, 0.02, 0.01], [0.2, 0.1, 0.05]])
    x = torch.rand(3, 2, 8000, generator=gen) * 2 - 1
    want = AF.lfilter(x, a, b, clamp=False)
    got = AF.lfilter(x.cuda(), a.cuda(), b.cuda(), clamp=False)
    check_close("lfilter 3x2x8000, 2nd order IIR per channel, vs CPU", got, want, 1e-4, 1e-5)


def check_forced_align(gen: torch.Generator) -> None:
    if not hasattr(AF, "forced_align"):
        print(f"skip forced_align: not in torchaudio {torchaudio.__version__}")
        return
    if getattr(getattr(torchaudio, "_extension", None), "_IS_ALIGN_AVAILABLE", True) is False:
        print("skip forced_align: this torchaudio was built without forced-align support")
        return
    log_probs = torch.randn(1, 200, 32, generator=gen).log_softmax(-1)
    targets = torch.randint(1, 32, (1, 40), generator=gen, dtype=torch.int32)
    want_path, want_scores = AF.forced_align(log_probs, targets, blank=0)
    got_path, got_scores = AF.forced_align(log_probs.cuda(), targets.cuda(), blank=0)
    if not torch.equal(got_path.cpu(), want_path):
        differ = int((got_path.cpu() != want_path).sum())
        raise AssertionError(f"forced_align: {differ} of {want_path.numel()} path labels differ")
    print(
        f"PASS forced_align T=200, 40 labels: the same path as the CPU ({want_path.numel()} frames)"
    )
    check_close("forced_align path scores vs CPU", got_scores, want_scores, 1e-5, 1e-5)


def check_rnnt_loss(gen: torch.Generator) -> None:
    if not hasattr(AF, "rnnt_loss"):
        print(f"skip rnnt_loss: not in torchaudio {torchaudio.__version__}")
        return
    batch, frames, labels, classes = 4, 30, 12, 20
    logits = torch.randn(batch, frames, labels + 1, classes, generator=gen)
    targets = torch.randint(1, classes, (batch, labels), generator=gen, dtype=torch.int32)
    logit_lengths = torch.tensor([30, 28, 25, 30], dtype=torch.int32)
    target_lengths = torch.tensor([12, 10, 12, 7], dtype=torch.int32)
    results = []
    for device in ("cpu", "cuda"):
        x = logits.detach().to(device).clone().requires_grad_()  # a leaf on each device
        args = (targets.to(device), logit_lengths.to(device), target_lengths.to(device))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rnnt_loss is deprecated in torchaudio 2.8+
            loss = AF.rnnt_loss(x, *args, blank=0, reduction="none")
        loss.sum().backward()
        results.append((loss, x.grad))
    (want, want_grad), (got, got_grad) = results
    check_close(f"rnnt_loss {batch}x{frames}x{labels + 1}x{classes} vs CPU", got, want, 1e-4, 1e-4)
    check_close("rnnt_loss gradient vs CPU", got_grad, want_grad, 1e-4, 1e-5)


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(
        f"torchaudio {torchaudio.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    )
    if torch.version.cuda is None:
        print(f"FAIL: torch {torch.__version__} is not a CUDA build: this test needs a CUDA torch")
        return 1
    try:
        check_extension()
        count = torch.cuda.device_count()
        if count == 0:
            try:
                torch.cuda.init()  # raises, saying why: no driver, or no GPU visible
                reason = "torch.cuda.device_count() is 0"
            except RuntimeError as exc:
                reason = one_line(exc)
            print(f"skipped: no CUDA device ({reason})")
            return EXIT_SKIP
        name, cc = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0 of {count}: {name} ({sm})")
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: the same checks, none specific to the target")
        gen = torch.Generator().manual_seed(SEED)
        check_lfilter(gen)
        check_forced_align(gen)
        check_rnnt_loss(gen)
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
