#!/usr/bin/env python3
"""Smoke test for a llama-cpp-python wheel: a tiny random GGUF llama on the CUDA backend.

Standalone (stdlib + llama_cpp + numpy + gguf, which writes the model locally: nothing is
downloaded). Checks: the build supports GPU offload; every layer is offloaded; the logits
of every prompt position match a float64 numpy forward pass of the same model; greedy
generation of a few tokens is the same twice. SPARKFORGE_TARGET_SM (default 121)
names the target; on the target the ggml CUDA device must report that compute capability.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

if importlib.util.find_spec("llama_cpp") is None:  # not imported yet: it needs libcuda
    print("FAIL: llama-cpp-python is not installed (no module llama_cpp)")
    sys.exit(1)
try:
    import gguf  # writes the model
    import numpy as np
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: cannot import {exc.name}: {exc}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234
N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 64, 2, 4, 2, 128, 64
HEAD_DIM, EPS, ROPE_BASE = N_EMBD // N_HEAD, 1e-5, 10000.0
PIECES = [f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz"]  # SPM word pieces
TOKENS = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *PIECES]
PROMPT = [1, 259, 270, 262, 281, 265, 100, 33]  # <s>, a few pieces and byte tokens
N_GEN = 4  # greedy tokens generated, twice
RTOL = ATOL = 2e-2  # ggml-cuda: TF32 matmuls and an f16 KV cache; logits are O(1)


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
    """Collect what is written to fd 2 (llama.cpp's log, verbose=True); echo it afterwards."""
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
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
            sys.stderr.write(text)


def random_weights() -> dict[str, np.ndarray]:
    """float32 weights in numpy's (out, in) layout; GGUFWriter reverses shapes for ggml."""
    rng = np.random.default_rng(SEED)

    def dense(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((len(TOKENS), N_EMBD)).astype(np.float32)}
    for i in range(N_LAYER):
        w[f"blk.{i}.attn_norm.weight"] = norm()
        w[f"blk.{i}.attn_q.weight"] = dense(N_HEAD * HEAD_DIM, N_EMBD)
        w[f"blk.{i}.attn_k.weight"] = dense(N_HEAD_KV * HEAD_DIM, N_EMBD)
        w[f"blk.{i}.attn_v.weight"] = dense(N_HEAD_KV * HEAD_DIM, N_EMBD)
        w[f"blk.{i}.attn_output.weight"] = dense(N_EMBD, N_HEAD * HEAD_DIM)
        w[f"blk.{i}.ffn_norm.weight"] = norm()
        w[f"blk.{i}.ffn_gate.weight"] = dense(N_FF, N_EMBD)
        w[f"blk.{i}.ffn_up.weight"] = dense(N_FF, N_EMBD)
        w[f"blk.{i}.ffn_down.weight"] = dense(N_EMBD, N_FF)
    w["output_norm.weight"] = norm()
    w["output.weight"] = dense(len(TOKENS), N_EMBD)
    return w


def write_gguf(path: str, weights: dict[str, np.ndarray]) -> None:
    """A llama-architecture GGUF with an SPM ("llama") vocabulary with byte fallback."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("sparkforge-smoke-tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(PIECES))])
    tt = gguf.TokenType
    writer.add_token_types(
        [tt.UNKNOWN, tt.CONTROL, tt.CONTROL] + [tt.BYTE] * 256 + [tt.NORMAL] * len(PIECES)
    )
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, array in weights.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reference_logits(w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """llama.cpp's llama graph in float64: RMSNorm, RoPE (NORM mode: adjacent pairs), GQA, SwiGLU."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    n = len(tokens)

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * weight

    def rope(x: np.ndarray) -> np.ndarray:  # x: (n, heads, HEAD_DIM)
        angle = np.arange(n)[:, None] * ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    x = g["token_embd.weight"][tokens]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(N_LAYER):
        h = rms(x, g[f"blk.{i}.attn_norm.weight"])
        q = rope((h @ g[f"blk.{i}.attn_q.weight"].T).reshape(n, N_HEAD, HEAD_DIM))
        k = rope((h @ g[f"blk.{i}.attn_k.weight"].T).reshape(n, N_HEAD_KV, HEAD_DIM))
        v = (h @ g[f"blk.{i}.attn_v.weight"].T).reshape(n, N_HEAD_KV, HEAD_DIM)
        k, v = (np.repeat(t, N_HEAD // N_HEAD_KV, axis=1) for t in (k, v))
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM) + causal
        p = np.exp(scores - scores.max(-1, keepdims=True))
        attn = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v).reshape(n, -1)
        x = x + attn @ g[f"blk.{i}.attn_output.weight"].T
        h = rms(x, g[f"blk.{i}.ffn_norm.weight"])
        gate, up = h @ g[f"blk.{i}.ffn_gate.weight"].T, h @ g[f"blk.{i}.ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g[f"blk.{i}.ffn_down.weight"].T
    return rms(x, g["output_norm.weight"]) @ g["output.weight"].T


def check_load(log: list[str], cc: tuple[int, int], on_target: bool) -> None:
    """llama.cpp's own account, from its verbose log: the CUDA device and the offload."""
    report = [
        line for line in log if re.search(r"ggml_cuda_init|Device \d+:|CUDA0 model buffer", line)
    ]
    for line in report:
        print(f"llama.cpp: {line}")
    offload = next(
        (m for line in log if (m := re.search(r"offloaded (\d+)/(\d+) layers to GPU", line))), None
    )
    if offload is None or offload[1] != offload[2]:
        why = offload[0] if offload else "no 'offloaded N/N layers to GPU' line in llama.cpp's log"
        raise AssertionError(f"not every layer is on the GPU: {why}")
    print(f"PASS {offload[0]} (n_gpu_layers=-1)")
    want = f"compute capability {cc[0]}.{cc[1]}"
    devices = [line for line in report if "compute capability" in line]
    if on_target and not devices:
        print(f"no ggml-cuda device report in the log: {want} not confirmed from it")
    elif on_target and not any(want in line for line in devices):
        raise AssertionError(f"ggml-cuda reported no device with {want}: {devices}")
    elif on_target:
        print(f"PASS ggml-cuda reports a device with {want}")


def check_model(llm: Any, w: dict[str, np.ndarray]) -> None:
    if llm.n_vocab() != len(TOKENS):
        raise AssertionError(f"n_vocab() is {llm.n_vocab()}, the GGUF has {len(TOKENS)} tokens")
    llm.reset()
    llm.eval(PROMPT)
    got = np.array(llm.scores[: len(PROMPT)], dtype=np.float64)
    want = reference_logits(w, PROMPT)
    err = np.abs(got - want)
    label = f"logits of {len(PROMPT)} prompt positions x {len(TOKENS)} tokens vs numpy float64"
    if not bool(np.all(err <= ATOL + RTOL * np.abs(want))):  # NaN and inf fail too
        i, j = np.unravel_index(int(np.argmax(np.nan_to_num(err, nan=np.inf))), err.shape)
        raise AssertionError(f"{label}: [{i},{j}] is {got[i, j]:.6g}, numpy {want[i, j]:.6g}")
    print(f"PASS {label}: max abs error {err.max():.3g} (tolerance {ATOL:g} + {RTOL:g}*|ref|)")

    def greedy() -> list[int]:
        llm.reset()  # a full prompt eval each time, no reuse of the KV cache's prefix
        out: list[int] = []
        for token in llm.generate(PROMPT, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == N_GEN:
                break
        return out

    first, second = greedy(), greedy()
    if first != second:
        raise AssertionError(f"greedy generation differs between two runs: {first} vs {second}")
    print(f"PASS greedy generation of {N_GEN} tokens is the same twice: {first}")


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    try:
        device = cuda_device()  # before importing llama_cpp: its CUDA backend links libcuda
        if isinstance(device, str):
            print(f"skipped: no CUDA device ({device})")
            return EXIT_SKIP
        import llama_cpp

        print(
            f"llama-cpp-python {llama_cpp.__version__}, gguf {version('gguf')}, numpy {np.__version__}"
        )
        name, cc = device
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0: {name} ({sm})")
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: target-specific checks skipped")
        weights = random_weights()
        with tempfile.TemporaryDirectory(prefix="llama-smoke-") as tmp:
            path = os.path.join(tmp, "tiny-llama-f32.gguf")
            write_gguf(path, weights)
            print(f"wrote {path}: {len(weights)} tensors, vocab {len(TOKENS)}")
            # ggml-cuda logs its device report when first asked for devices: capture from here.
            with native_stderr() as log:
                if not llama_cpp.llama_supports_gpu_offload():
                    raise AssertionError("llama_supports_gpu_offload() is False: a CPU-only build")
                settings = {"n_gpu_layers": -1, "n_ctx": N_CTX, "seed": SEED, "logits_all": True}
                llm = llama_cpp.Llama(model_path=path, verbose=True, **settings)
            print(f"PASS llama_supports_gpu_offload(); model loaded with {settings}")
            check_load(log, cc, on_target=cc == target)
            check_model(llm, weights)
            llm.close()
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # load or decode errors: a failed smoke test, said in one line
        print(f"FAIL: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
