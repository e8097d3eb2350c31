#!/usr/bin/env python3
"""Smoke test for a vLLM wheel: its CUDA extensions, FP8 kernels and a tiny model end to end.

Standalone (stdlib + torch + vllm + transformers, which writes a tiny random-weight Llama
locally: nothing is downloaded, HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set, and every
cache is a fresh temporary directory). Checks: each .so in the vllm package loads with all
symbols resolved (RTLD_NOW); vllm._C and vllm._moe_C import (an undefined symbol is named);
scaled_fp8_quant, static and dynamic, against the CPU's FP8 e4m3 rounding and the input;
cutlass_scaled_mm on FP8 against a CPU matmul, required on the target (SPARKFORGE_TARGET_SM,
default 121) and run elsewhere where vLLM says the GPU supports it; then LLM(...) on the tiny
model: 8 greedy tokens, all below the vocab size, the same twice, each the argmax (or a bf16
near-tie) of transformers' float32 logits on the CPU over the same sequence.
Exit codes: 0 all checks passed, 1 a check failed, 77 skipped (no CUDA device).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

TMP = tempfile.mkdtemp(prefix="vllm-smoke-")
atexit.register(shutil.rmtree, TMP, ignore_errors=True)
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=f"{TMP}/hf",
                  VLLM_CACHE_ROOT=f"{TMP}/vllm", VLLM_CONFIG_ROOT=f"{TMP}/vllm-config",
                  TRITON_CACHE_DIR=f"{TMP}/triton", TORCHINDUCTOR_CACHE_DIR=f"{TMP}/inductor",
                  VLLM_NO_USAGE_STATS="1", VLLM_DO_NOT_TRACK="1",
                  VLLM_ENABLE_V1_MULTIPROCESSING="0")  # the engine in this process: one traceback  # fmt: skip

if importlib.util.find_spec("vllm") is None:  # the package under test, named first
    print("FAIL: vllm is not installed (no module vllm)")
    sys.exit(1)
try:
    import torch
except ImportError as exc:  # the protocol's one FAIL line, not a traceback
    print(f"FAIL: torch is not installed: {exc}" if exc.name == "torch" else f"FAIL: {exc}")
    sys.exit(1)
try:
    import vllm  # the package only: the extensions are loaded by the checks
except Exception as exc:  # an undefined symbol, a missing dependency (a --no-deps install)
    print(f"FAIL: cannot import vllm: {type(exc).__name__}: {' '.join(str(exc).split())}")
    sys.exit(1)
try:
    import transformers  # writes the tiny model
except ImportError as exc:
    print(f"FAIL: cannot import transformers: {exc}")
    sys.exit(1)

EXIT_SKIP = 77
SEED = 1234
VOCAB, N_GEN = 256, 8
PROMPT = [1, 17, 42, 99, 7, 200, 3, 64]
FP8_MAX = 448.0  # largest finite float8_e4m3fn
REACH = 0.25  # logit gap bf16 can flip; logits here spread ~1.2, bf16 vs fp32 differ <= ~0.06


def target_cc() -> tuple[int, int]:
    raw = os.environ.get("SPARKFORGE_TARGET_SM") or "121"
    match = re.fullmatch(r"(?:sm_)?(\d+)(\d)[af]?", raw.strip())
    if match is None:
        raise ValueError(f"SPARKFORGE_TARGET_SM={raw!r} is not a compute capability like 121")
    return int(match[1]), int(match[2])


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_error(exc: BaseException) -> str:
    """The loader's message; an undefined symbol alone, demangled where c++filt is at hand."""
    text = one_line(exc)
    symbol = re.search(r"undefined symbol: (\S+)", text)
    if symbol is None:
        return text
    readable = symbol[1]
    if shutil.which("c++filt"):
        import subprocess

        readable = subprocess.run(["c++filt", symbol[1]], capture_output=True, text=True).stdout
    readable = readable.strip()
    return f"undefined symbol {symbol[1]}" + (f" ({readable})" if readable != symbol[1] else "")


def check_extensions() -> None:
    package = Path(vllm.__file__).parent
    failed = []
    for path in sorted(package.rglob("*.so")):
        try:  # RTLD_NOW: every symbol is resolved now, as Python's own import does
            ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
            print(f"PASS dlopen RTLD_NOW {path.relative_to(package.parent)}")
        except OSError as exc:
            failed.append(f"{path.relative_to(package.parent)}: {load_error(exc)}")
    for module in ("vllm._C", "vllm._moe_C"):
        try:
            __import__(module)
            print(f"PASS import {module}")
        except ImportError as exc:
            failed.append(f"import {module}: {load_error(exc)}")
    if failed:
        raise AssertionError("; ".join(failed))


def raise_pending_launch_error() -> None:
    """Not every vLLM kernel checks its own launch: one that could not start (no kernel
    image for this GPU) leaves the error pending and its output uninitialised. A torch
    kernel checks its launch, so it raises what is pending."""
    (torch.ones(1, device="cuda") + 1).item()


def check_fp8_quant(gen: torch.Generator) -> None:
    from vllm import _custom_ops as ops

    x = (torch.randn(64, 1024, generator=gen) * 4).bfloat16()
    amax = float(x.float().abs().max())
    for kind, scale in (("static", torch.tensor([amax / FP8_MAX * 1.25])), ("dynamic", None)):
        q, used = ops.scaled_fp8_quant(x.cuda(), None if scale is None else scale.cuda())
        raise_pending_launch_error()
        s = float(used.flatten()[0])
        if scale is None and abs(s - amax / FP8_MAX) > 1e-6 * s:
            raise AssertionError(
                f"dynamic scaled_fp8_quant: scale {s:.8g}, amax/448 {amax / FP8_MAX:.8g}"
            )
        # vLLM's kernel: clamp(x * (1/scale)) cast with round-to-nearest-even; the same on the CPU.
        inv = torch.tensor(1.0) / torch.tensor(s)
        want = (x.float() * inv).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        got = q.cpu()
        same = float((got.view(torch.uint8) == want.view(torch.uint8)).float().mean())
        deq, ref = got.double() * s, x.double()
        err = (deq - ref).abs()
        bound = 2.0**-4 * ref.abs() + s * 2.0**-10 + 1e-6 * ref.abs()  # half an e4m3 step
        label = f"scaled_fp8_quant {kind} 64x1024 bf16 -> e4m3 (scale {s:.4g})"
        if not bool((err <= bound).all()) or same < 0.99:
            raise AssertionError(
                f"{label}: max error {float(err.max()):.3g}, {same:.2%} codes = CPU's"
            )
        print(
            f"PASS {label}: dequantised within half an e4m3 step, {same:.2%} codes equal the CPU's"
        )


def check_scaled_mm(gen: torch.Generator, cc: tuple[int, int], on_target: bool) -> None:
    from vllm import _custom_ops as ops

    if not ops.cutlass_scaled_mm_supports_fp8(cc[0] * 10 + cc[1]):
        if on_target:
            raise AssertionError(f"cutlass_scaled_mm_supports_fp8({cc[0]}{cc[1]}) is False")
        print(f"skip cutlass_scaled_mm FP8: vLLM has no CUTLASS FP8 GEMM for sm_{cc[0]}{cc[1]}")
        return
    m, k, n = 64, 256, 128
    a = torch.randn(m, k, generator=gen).to(torch.float8_e4m3fn)
    b_t = torch.randn(n, k, generator=gen).to(torch.float8_e4m3fn)  # b is column-major
    sa, sb = torch.tensor([[0.5]]), torch.tensor([[0.25]])
    got = ops.cutlass_scaled_mm(a.cuda(), b_t.cuda().t(), sa.cuda(), sb.cuda(), torch.bfloat16)
    want = (a.double() * 0.5) @ (b_t.double() * 0.25).t()
    err = (got.cpu().double() - want).abs()
    label = f"cutlass_scaled_mm FP8 {m}x{k}x{n} -> bf16 vs CPU fp64"
    if not bool((err <= 1e-2 + 1e-2 * want.abs()).all()):
        raise AssertionError(f"{label}: max abs error {float(err.max()):.3g}")
    print(f"PASS {label}: max abs error {float(err.max()):.3g} (tolerance 1e-2 + 1e-2*|ref|)")


def tiny_llama(path: str) -> torch.nn.Module:
    """Save a random bf16 Llama for vLLM; return the same weights in float32 for the CPU."""
    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return model.float().eval()


def check_generate(path: str, cpu_model: torch.nn.Module) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, skip_tokenizer_init=True, enforce_eager=True, seed=SEED,
              gpu_memory_utilization=0.2, max_model_len=128, dtype="bfloat16")  # fmt: skip
    params = SamplingParams(max_tokens=N_GEN, temperature=0, detokenize=False, ignore_eos=True)
    runs = []
    for _ in range(2):
        out = llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
        runs.append(list(out[0].outputs[0].token_ids))
    del llm
    first = runs[0]
    if len(first) != N_GEN or not all(0 <= t < VOCAB for t in first):
        raise AssertionError(f"generate: expected {N_GEN} token ids below {VOCAB}, got {first}")
    print(f"PASS LLM.generate: {N_GEN} greedy tokens, all below the vocab size {VOCAB}: {first}")
    if runs[1] != first:
        raise AssertionError(f"greedy generation differs between two calls: {first} vs {runs[1]}")
    print("PASS greedy generation is the same in a second call")
    # transformers in float32 on the CPU over the same sequence: each token vLLM chose must be
    # the CPU's argmax, or a near-tie with it that bf16 rounding can flip.
    with torch.no_grad():
        logits = cpu_model(torch.tensor([PROMPT + first])).logits[0, len(PROMPT) - 1 : -1]
    gap = logits.max(-1).values - logits[torch.arange(N_GEN), torch.tensor(first)]
    if bool((gap > REACH).any()):
        i = int(gap.argmax())
        raise AssertionError(
            f"greedy token {i} is {first[i]}, {float(gap[i]):.3g} below the CPU's best logit"
        )
    exact = int((gap == 0).sum())
    print(f"PASS greedy tokens vs transformers float32 on the CPU: {exact} of {N_GEN} its argmax, "
          f"the rest within {REACH} of it (bf16 near-ties)")  # fmt: skip


def main() -> int:
    try:
        target = target_cc()
    except ValueError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"vllm {vllm.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}")  # fmt: skip
    if torch.version.cuda is None:
        print(f"FAIL: torch {torch.__version__} is not a CUDA build: vLLM needs a CUDA torch")
        return 1
    try:
        if torch.cuda.device_count() == 0:
            print("skipped: no CUDA device (torch.cuda.device_count() is 0)")
            return EXIT_SKIP
        name, cc = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
        sm = f"sm_{cc[0]}{cc[1]}"
        print(f"device 0: {name} ({sm})")
        if cc != target:
            mode = f"device {sm} ({name}), target sm_{target[0]}{target[1]}"
            print(f"other GPU mode: {mode}: target-specific checks skipped")
        check_extensions()
        gen = torch.Generator().manual_seed(SEED)
        try:
            check_fp8_quant(gen)
        except Exception as exc:  # RuntimeError, or torch.AcceleratorError (torch >= 2.9)
            # Other-GPU mode: a wheel built for the target only has no kernels for this GPU.
            if cc == target or "no kernel image" not in str(exc):
                raise
            print(f"not run on {sm}: FP8 quantization, cutlass_scaled_mm, LLM.generate: the "
                  f"wheel has no kernels for this GPU ({one_line(exc)[:160]})")  # fmt: skip
            print(f"PASS extension imports on {name} ({sm}); kernels need the target GPU")
            return 0
        check_scaled_mm(gen, cc, on_target=cc == target)
        path = f"{TMP}/tiny-llama"
        check_generate(path, tiny_llama(path))
    except AssertionError as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # any error on the GPU is a failed smoke test, said in one line
        print(f"FAIL: {type(exc).__name__}: {one_line(exc)[:2000]}")
        return 1
    print(f"PASS all checks on {name} ({sm})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
