"""CUDA compatibility rules: table-driven, no toolkit needed."""

from __future__ import annotations

from collections import Counter

import pytest

from sparkforge.config.archs import parse_arch
from sparkforge.wheel.compat import Status, audit, verdict
from sparkforge.wheel.cudabin import CudaCode, Kind, LibraryReport, Variant

KINDS: dict[str, Kind] = {"sm": "sass", "compute": "ptx"}
VARIANTS: dict[str, Variant] = {"": "", "a": "a", "f": "f"}


def code(name: str, compressed: bool = False) -> CudaCode:
    """Build a CudaCode from nvcc's name, e.g. ``sm_120f`` or ``compute_90``."""
    prefix, _, arch = name.partition("_")
    parsed = parse_arch(arch, where="test")
    return CudaCode(KINDS[prefix], parsed.sm, VARIANTS[parsed.variant], compressed)


def codes(*names: str) -> Counter[CudaCode]:
    return Counter(code(name) for name in names)


@pytest.mark.parametrize(
    ("names", "target", "status", "runs"),
    [
        # SASS, same major
        (["sm_121"], 121, Status.NATIVE, "sm_121"),
        (["sm_121a"], 121, Status.NATIVE, "sm_121a"),
        (["sm_121f"], 121, Status.NATIVE, "sm_121f"),
        (["sm_120"], 121, Status.COMPATIBLE, "sm_120"),
        (["sm_120f"], 121, Status.FAMILY, "sm_120f"),
        (["sm_120a"], 121, Status.WILL_NOT_RUN, None),
        (["sm_121"], 120, Status.WILL_NOT_RUN, None),
        (["sm_121f"], 120, Status.WILL_NOT_RUN, None),
        (["sm_100f"], 103, Status.FAMILY, "sm_100f"),
        (["sm_100"], 103, Status.COMPATIBLE, "sm_100"),
        (["sm_100a"], 103, Status.WILL_NOT_RUN, None),
        (["sm_90"], 90, Status.NATIVE, "sm_90"),
        (["sm_90a"], 90, Status.NATIVE, "sm_90a"),
        (["sm_86"], 89, Status.COMPATIBLE, "sm_86"),
        # SASS never crosses a major
        (["sm_90"], 121, Status.WILL_NOT_RUN, None),
        (["sm_120"], 90, Status.WILL_NOT_RUN, None),
        (["sm_110f"], 121, Status.WILL_NOT_RUN, None),
        # PTX
        (["compute_120"], 121, Status.PTX_JIT, "compute_120"),
        (["compute_90"], 121, Status.PTX_JIT, "compute_90"),
        (["compute_120f"], 121, Status.PTX_JIT, "compute_120f"),
        (["compute_100f"], 121, Status.WILL_NOT_RUN, None),
        (["compute_121a"], 121, Status.PTX_JIT, "compute_121a"),
        (["compute_120a"], 121, Status.WILL_NOT_RUN, None),
        (["compute_121"], 120, Status.WILL_NOT_RUN, None),
        # the best usable code wins, SASS before PTX, closest arch first
        (["sm_90", "sm_120", "compute_120"], 121, Status.COMPATIBLE, "sm_120"),
        (["sm_90", "sm_120a", "compute_120"], 121, Status.PTX_JIT, "compute_120"),
        (["sm_80", "sm_86", "sm_90"], 89, Status.COMPATIBLE, "sm_86"),
        (["sm_120", "sm_120f", "sm_121a"], 121, Status.NATIVE, "sm_121a"),
        (["sm_121", "sm_121a"], 121, Status.NATIVE, "sm_121"),
        (["sm_120f", "sm_120"], 121, Status.COMPATIBLE, "sm_120"),
        (["compute_90", "compute_120"], 121, Status.PTX_JIT, "compute_120"),
    ],
)
def test_verdict_rules(names: list[str], target: int, status: Status, runs: str | None) -> None:
    result = verdict(codes(*names), target)
    assert result.status is status
    assert (result.runs.name if result.runs else None) == runs


def test_no_code_is_no_cuda_code() -> None:
    assert verdict({}, 121).status is Status.NO_CUDA_CODE


def test_compression_does_not_matter() -> None:
    assert verdict({code("sm_120", compressed=True): 1}, 121).status is Status.COMPATIBLE


@pytest.mark.parametrize(
    ("names", "target", "phrase"),
    [
        (["sm_120"], 121, "sm_121 runs sm_120 SASS (same major, older minor)"),
        (["sm_121a"], 121, "sm_121 runs sm_121a SASS"),
        (["sm_120f"], 121, "sm_121 runs sm_120f SASS (family code for 12.x)"),
        (["compute_120"], 121, "JIT-compiles compute_120 PTX"),
        (["sm_120a", "sm_90"], 121, "found sm_120a, sm_90): add sm_121 SASS (or sm_120 / sm_120f)"),
        (
            ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120a", "compute_120a", "sm_110f"],
            121,
            "found compute_120a, sm_120a, sm_110f, sm_100, sm_90, sm_86 and 2 more): add sm_121",
        ),
        (["sm_80"], 90, "add sm_90 SASS"),
    ],
)
def test_explanations_name_the_arch(names: list[str], target: int, phrase: str) -> None:
    assert phrase in verdict(codes(*names), target).explanation


def report(path: str, *fatbins: list[str]) -> LibraryReport:
    """A LibraryReport whose containers hold the named code."""
    containers = [codes(*names) for names in fatbins]
    total: Counter[CudaCode] = sum(containers, Counter())
    return LibraryReport(path, total, Counter(frozenset(c) for c in containers))


def test_audit_is_worst_of_libraries_with_code() -> None:
    result = audit(
        [
            report("pkg/_native.so", ["sm_121a"]),
            report("pkg/_jit.so", ["compute_120"]),
            report("pkg/libhost.so"),
        ],
        121,
    )
    statuses = [lib.verdict.status for lib in result.libraries]
    assert statuses == [Status.NATIVE, Status.PTX_JIT, Status.NO_CUDA_CODE]
    assert result.status is Status.PTX_JIT
    assert result.ok
    assert any("JIT" in warning for warning in result.libraries[1].warnings)


def test_audit_fails_when_one_library_cannot_run() -> None:
    result = audit([report("a.so", ["sm_121"]), report("b.so", ["sm_90", "sm_100a"])], 121)
    assert result.status is Status.WILL_NOT_RUN
    assert not result.ok


def test_per_arch_modules_do_not_decide() -> None:
    """vLLM 0.33.0's _deepselect_C (sm_100f only) is loaded on Blackwell GPUs only: it does
    not make the wheel fail on Hopper or Spark, and the reasoning says why."""
    libraries = [
        report("vllm/_C.so", ["sm_90", "sm_120"]),
        report("vllm/_deepselect_C.so", ["sm_100f"]),
    ]
    for sm, status in ((90, Status.NATIVE), (121, Status.COMPATIBLE)):
        result = audit(libraries, sm)
        assert result.status is status and result.ok
        core, optional = result.libraries
        assert (core.role, core.decides) == ("core", True)
        assert (optional.role, optional.decides) == ("per-arch", False)
        assert optional.verdict.status is Status.WILL_NOT_RUN
        assert any(
            line.startswith(
                "not deciding: vllm/_deepselect_C.so is a per-GPU module for other GPU "
                "generations (only sm_100f)"
            )
            for line in result.reasoning
        )
    # With nothing else holding code, the per-GPU modules decide (a FA3-only wheel).
    alone = audit([report("fa3/_C.so", ["sm_90a"])], 121)
    assert alone.status is Status.WILL_NOT_RUN and alone.libraries[0].decides


def test_audit_family_and_compatible_are_both_ok() -> None:
    result = audit([report("a.so", ["sm_120"]), report("b.so", ["sm_100", "sm_120f"])], 121)
    assert result.status is Status.FAMILY
    assert result.ok


def test_audit_without_cuda_code() -> None:
    """A CPU-only wheel fails a GPU target, unless no device code is expected (triton)."""
    result = audit([report("libhost.so")], 121)
    assert result.status is Status.NO_CUDA_CODE
    assert not result.ok
    assert "a CPU-only build" in result.reasoning[0]
    assert audit([report("libhost.so")], 121, cuda_required=False).ok
    assert audit([], 121).status is Status.NO_CUDA_CODE


def test_host_code_for_another_cpu_is_wrong_platform() -> None:
    x86 = LibraryReport("pkg/_C.so", codes("sm_121"), Counter([frozenset(codes("sm_121"))]),
                        machine="x86_64")  # fmt: skip
    result = audit([x86], 121, machine="aarch64")
    assert result.status is Status.WRONG_PLATFORM and not result.ok
    assert "host code for x86_64 CPUs; the target runs aarch64" in result.summary
    assert audit([x86], 121, machine="x86_64").status is Status.NATIVE


def test_audit_warns_about_containers_without_target_code() -> None:
    """One translation unit built only for sm_120a leaves its kernels missing on sm_121."""
    lib = report("_C.so", ["sm_120", "sm_90"], ["sm_120", "sm_90"], ["sm_120a", "sm_90a"])
    (result,) = audit([lib], 121).libraries
    assert result.verdict.status is Status.COMPATIBLE
    assert result.fatbins == 3
    assert result.fatbins_without_target_code == 1
    assert result.warnings == (
        "1 of 3 fatbins have nothing for sm_121 (e.g. only sm_120a, sm_90a): "
        "their kernels fail with 'no kernel image' if called",
    )


def test_to_json_is_stable() -> None:
    lib = LibraryReport(
        "pkg/_C.so",
        Counter({code("sm_120"): 2, code("sm_120", compressed=True): 1, code("compute_120"): 1}),
        Counter({frozenset({code("sm_120"), code("compute_120")}): 3}),
    )
    assert audit([lib], 121).to_json() == {
        "target": "sm_121",
        "verdict": "compatible",
        "ok": True,
        "reasoning": ["decided by 1 core file(s); the worst of them: compatible"],
        "libraries": [
            {
                "path": "pkg/_C.so",
                "role": "core",
                "decides": True,
                "verdict": "compatible",
                "runs": "sm_120",
                "explanation": "sm_121 runs sm_120 SASS (same major, older minor)",
                "code": {"compute_120": 1, "sm_120": 3},
                "fatbins": 3,
                "fatbins_without_target_code": 0,
                "warnings": [],
            }
        ],
    }


def test_summary_names_the_deciding_library() -> None:
    result = audit([report("a.so", ["sm_121"]), report("b.so", ["compute_120"])], 121)
    assert result.summary.startswith("ptx-jit: b.so: no SASS for sm_121")
    assert result.summary.endswith("; 1 warning(s)")
    assert (
        audit([report("host.so")], 121).summary == "no-cuda-code: no library has CUDA device code"
    )


def test_per_gpu_modules_of_the_targets_generation_decide() -> None:
    """A module built only for sm_120a is meant for the 12.x GPUs: on sm_121 its code does
    not run, and that must fail the wheel (a build that left sm_121 out), not be waved on."""
    libraries = [report("pkg/_C.so", ["sm_120"]), report("pkg/_fp4.so", ["sm_120a"])]
    result = audit(libraries, 121)
    assert result.libraries[1].decides and result.status is Status.WILL_NOT_RUN
    assert not result.ok


def test_a_file_with_nothing_loadable_decides_nothing() -> None:
    """A standalone fatbin holding only LTO IR has no SASS or PTX: host role, no crash."""
    lto = LibraryReport("pkg/kernels.fatbin", Counter(), Counter(), kind="fatbin")
    result = audit([lto, report("pkg/_C.so", ["sm_120"])], 121)
    assert result.status is Status.COMPATIBLE
    assert audit([lto], 121).status is Status.NO_CUDA_CODE
