#!/usr/bin/env python3
"""Smoke test for a torchvision wheel: its CUDA ops against the same ops on the CPU.

Standalone (stdlib + torch + torchvision). Checks that torchvision's C++/CUDA extension
loads (its own error, e.g. an undefined symbol, is shown rather than torchvision's generic
"Couldn't load custom C++ ops") and was compiled with CUDA; then nms (indices must equal
the CPU's exactly), roi_align and deform_conv2d on CUDA tensors against the CPU results.
SPARKFORGE_TARGET_SM (default 121) names the target; on another GPU the same checks run
and say so ("other GPU mode"): torchvision has no target-specific checks of its own.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

if importlib.util.find_spec("torchvision") is None:  # the package under test, named first
    print("FAIL: torchvision is not installed (no module torchvision)")
    sys.exit(1)
try:
    import torch
    from torch import Tensor
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: torch is not installed: {exc}" if exc.name == "torch" else f"FAIL: {exc}")
    sys.exit(1)
try:
    import torchvision
    from torchvision import ops
except Exception as exc:  # an undefined symbol, a missing dependency, a CUDA mismatch
    print(f"FAIL: cannot import torchvision: {type(exc).__name__}: {' '.join(str(exc).split())}")
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
    """torchvision swallows the extension's load error at import; load it again to show it."""
    has_ops = getattr(torchvision.extension, "_has_ops", lambda: False)
    if not has_ops():
        try:
            torch.ops.load_library(torchvision.extension._get_extension_path("_C"))
            why = "it loads when asked again, but torchvision's import did not load it"
        except Exception as exc:
            why = one_line(exc)
            symbol = re.search(r"undefined symbol: (\S+)", why)
            if symbol:
                why = f"undefined symbol {symbol[1]} ({why})"
        raise AssertionError(f"torchvision's C++/CUDA extension _C did not load: {why}")
    version = int(torch.ops.torchvision._cuda_version())
    if version <= 0:
        raise AssertionError(
            f"torchvision.ops was compiled without CUDA (_cuda_version() {version})"
        )
    built = f"{version // 1000}.{version % 1000 // 10}"
    print(
        f"PASS torchvision extension loaded, compiled with CUDA {built} (torch: {torch.version.cuda})"
    )


def check_nms(gen: torch.Generator) -> None:
    # Integer corners: every IoU is computed exactly alike on both sides, no ties at 0.5.
    n = 2000
    xy = torch.randint(0, 400, (n, 2), generator=gen).float()
    wh = torch.randint(8, 96, (n, 2), generator=gen).float()
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randperm(n, generator=gen).float() / n  # distinct: one order only
    want = ops.nms(boxes, scores, 0.5)
    got = ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu()
    if not torch.equal(got, want):
        raise AssertionError(
            f"nms: CUDA kept {got.numel()} boxes, CPU {want.numel()}, not the same"
        )
    print(f"PASS nms {n} boxes, IoU 0.5: CUDA keeps the same {want.numel()} indices as the CPU")
    idxs = torch.randint(0, 4, (n,), generator=gen)
    want = ops.batched_nms(boxes, scores, idxs, 0.5)
    got = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu()
    if not torch.equal(got, want):
        raise AssertionError(f"batched_nms: CUDA kept {got.numel()} boxes, CPU {want.numel()}")
    print(f"PASS batched_nms {n} boxes in 4 classes: the same {want.numel()} indices as the CPU")


def check_roi_align(gen: torch.Generator) -> None:
    features = torch.randn(2, 8, 32, 32, generator=gen)
    k = 64
    corner = torch.rand(k, 2, generator=gen) * 48
    size = torch.rand(k, 2, generator=gen) * 16 + 1
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=gen).float(), corner, corner + size], 1)
    for aligned in (False, True):
        args = {
            "output_size": (7, 7),
            "spatial_scale": 0.5,
            "sampling_ratio": 2,
            "aligned": aligned,
        }
        want = ops.roi_align(features, rois, **args)
        got = ops.roi_align(features.cuda(), rois.cuda(), **args)
        check_close(f"roi_align {k} rois, 7x7, aligned={aligned}, vs CPU", got, want, 1e-5, 1e-5)


def check_deform_conv(gen: torch.Generator) -> None:
    x = torch.randn(2, 4, 12, 12, generator=gen)
    weight = torch.randn(6, 4, 3, 3, generator=gen)
    offset = torch.randn(2, 2 * 9, 10, 10, generator=gen) * 2
    mask = torch.rand(2, 9, 10, 10, generator=gen)
    want = ops.deform_conv2d(x, offset, weight, mask=mask)
    got = ops.deform_conv2d(x.cuda(), offset.cuda(), weight.cuda(), mask=mask.cuda())
    check_close("deform_conv2d 2x4x12x12, 3x3, with mask, vs CPU", got, want, 1e-4, 1e-4)


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(
        f"torchvision {torchvision.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})"
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
        torch.backends.cudnn.allow_tf32 = False
        check_nms(gen)
        check_roi_align(gen)
        check_deform_conv(gen)
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
