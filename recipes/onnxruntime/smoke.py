#!/usr/bin/env python3
"""Smoke test for an onnxruntime-gpu wheel: a tiny model on the CUDA EP against numpy.

Standalone (stdlib + onnxruntime + numpy + onnx, which builds the model in memory).
An onnxruntime without CUDAExecutionProvider fails rather than skips, and so does one
that quietly falls back to the CPU. SPARKFORGE_TARGET_SM (default 121) names the target;
onnxruntime has no checks beyond the generic ones there.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: cannot import: {exc}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234
N = 256
# The CUDA EP uses TF32 for float32 MatMul by default; errors here stay ~1e-4 with it.
RTOL = ATOL = 2e-3


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


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to fd 2: ORT logs why an EP failed to load there."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ORT colours its log lines
            lines.extend(line.strip() for line in plain.splitlines() if line.strip())
            sys.stderr.write(text)  # ORT's own log stays visible


def tiny_model(w: np.ndarray, b: np.ndarray) -> bytes:
    """y = Relu(x @ w + b) with x float32 [N, N]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "smoke",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [N, N])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [N, N])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx's default can be newer than the onnxruntime under test reads
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def check_model(device: str) -> None:
    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1, 1, (N, N)).astype(np.float32)
    w = (rng.uniform(-1, 1, (N, N)) / 16).astype(np.float32)
    b = rng.uniform(-1, 1, N).astype(np.float32)
    options = ort.SessionOptions()
    # Fail at session creation rather than run any node on the CPU EP.
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with native_stderr() as log:
        try:
            session = ort.InferenceSession(
                tiny_model(w, b), options, providers=["CUDAExecutionProvider"], enable_fallback=0
            )
        except Exception as exc:
            detail = " ".join(str(exc).split())
            raise AssertionError(
                f"no session on the CUDA EP: {detail} | {' | '.join(log)}"
            ) from exc
    providers = session.get_providers()
    if providers[0] != "CUDAExecutionProvider":
        why = " | ".join(log) or "onnxruntime logged no reason"
        raise AssertionError(f"the CUDA EP did not load, session fell back to {providers}: {why}")
    print(f"PASS session on CUDAExecutionProvider ({device}): providers {providers}")
    (got,) = session.run(None, {"x": x})
    want = np.maximum(x.astype(np.float64) @ w.astype(np.float64) + b, 0.0)
    err = np.abs(got - want)
    label = f"MatMul+Add+Relu {N}x{N} float32 vs numpy float64"
    if not bool(np.all(err <= ATOL + RTOL * np.abs(want))):  # NaN fails too
        raise AssertionError(f"{label}: max abs error {err.max():.3g}")
    print(f"PASS {label}: max abs error {err.max():.3g} (tolerance {ATOL:g} + {RTOL:g}*|ref|)")


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    providers = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers: {', '.join(providers)}")
    if "CUDAExecutionProvider" not in providers:
        print(
            f"FAIL: no CUDAExecutionProvider: this onnxruntime is a CPU build (providers: {', '.join(providers)})"
        )
        return 1
    try:
        device = cuda_device()
        if isinstance(device, str):
            print(f"skipped: no CUDA device ({device})")
            return EXIT_SKIP
        name, cc = device
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0: {name} ({sm})")
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: target-specific checks skipped")
        check_model(f"{name}, {sm}")
        if cc == target:
            print(f"target {sm}: onnxruntime has no checks beyond the generic ones")
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # any error on the GPU is a failed smoke test, said in one line
        print(f"FAIL: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
