"""`sparkforge inspect` on PyPI's own wheels (sha256-pinned, downloaded once into pytest's
cache): the verdicts a Spark owner reads before deciding to build."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, CliRunner, locked

pytestmark = [pytest.mark.network, pytest.mark.slow]

WHEELS = {
    # vLLM 0.33.0 for aarch64: one optional module (_deepselect_C) is built only for sm_100f.
    "vllm": ("vllm==0.33.0", "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl",
             "e9e404f52c8494b69bd83fe99fe7ecfa9f6b89fbd156d2a9639c24ea41d6d606", "aarch64"),
    # torch 2.9.1 for aarch64 on PyPI: no CUDA at all.
    "torch": ("torch==2.9.1", "torch-2.9.1-cp312-cp312-manylinux_2_28_aarch64.whl",
              "da5f6f4d7f4940a173e5572791af238cb0b9e21b1aab592bd8b26da4c99f1cd6", "aarch64"),
    # flashinfer-cubin 0.6.13: 15,970 standalone cubins.
    "cubins": ("flashinfer-cubin==0.6.13", "flashinfer_cubin-0.6.13-py3-none-any.whl",
               "41e4848c2d09d220e8394489b2fb6cfec6b6ad09f897b5ab8b39fc23055f6c24", "any"),
}  # fmt: skip


def fetch(request: pytest.FixtureRequest, key: str) -> Path:
    requirement, filename, sha256, machine = WHEELS[key]
    cache = request.config.cache.mkdir("sparkforge-wheels")
    with locked(cache):  # pytest-xdist workers share this cache
        wheel = cache / filename
        if not wheel.exists():
            platform = [] if machine == "any" else [f"--platform=manylinux_2_28_{machine}"]
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "--python-version=3.12", "--implementation=cp",
                 *platform, f"--dest={cache}", requirement],
                check=True,
            )  # fmt: skip
        digest = hashlib.sha256()
        with wheel.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        assert digest.hexdigest() == sha256, f"{filename} is not the pinned wheel"
        return wheel


def inspect(cli: CliRunner, wheel: Path, target: str) -> tuple[int, dict[str, object]]:
    result = cli("inspect", wheel, "--target", target, "--json", "--project", REPO)
    return result.code, json.loads(result.out)


def test_an_optional_per_gpu_module_does_not_fail_the_wheel(
    cli: CliRunner, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """vLLM 0.33.0: _deepselect_C has only sm_100f code and FA3 only sm_90a, but vLLM loads
    them on those GPUs only; the wheel's verdict comes from its core libraries, and the
    reasoning names the modules that did not decide."""
    wheel = fetch(request, "vllm")
    # Hopper on an aarch64 host (GH200): the Spark's target file with sm_90.
    project = tmp_path / "project"
    (project / "targets").mkdir(parents=True)
    spark = (REPO / "targets" / "dgx-spark.toml").read_text()
    (project / "targets" / "gh200.toml").write_text(
        spark.replace('name = "dgx-spark"', 'name = "gh200"').replace('["121"]', '["90"]')
    )
    result = cli("inspect", wheel, "--target", "gh200", "--json", "--project", project)
    hopper = json.loads(result.out)["audits"]["sm_90"]
    # Some kernels have only compute_80 PTX, on Hopper too; the optional modules decide nothing.
    assert result.code == 0 and hopper["verdict"] == "ptx-jit", hopper["reasoning"]
    by_path = {lib["path"]: lib for lib in hopper["libraries"]}
    assert by_path["vllm/_deepselect_C.abi3.so"]["verdict"] == "will-not-run"
    assert by_path["vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"]["verdict"] == "native"

    code, report = inspect(cli, wheel, "dgx-spark")
    audit = report["audits"]["sm_121"]  # type: ignore[index]
    libraries = {lib["path"]: lib for lib in audit["libraries"]}
    deepselect = libraries["vllm/_deepselect_C.abi3.so"]
    assert (deepselect["role"], deepselect["decides"]) == ("per-arch", False)
    assert deepselect["verdict"] == "will-not-run"
    fa3 = libraries["vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"]
    assert (fa3["role"], fa3["decides"], list(fa3["code"])) == ("per-arch", False, ["sm_90a"])
    assert any(line.startswith("not deciding: vllm/_deepselect_C.abi3.so is a per-GPU module for "
                               "other GPU generations")
               for line in audit["reasoning"])  # fmt: skip
    # The core libraries carry sm_120 family code, plus PTX for some kernels; FA2 only
    # sm_80 SASS and compute_80 PTX: on sm_121 the wheel runs through the JIT for those.
    core = libraries["vllm/_C_stable_libtorch.abi3.so"]
    assert core["decides"] and core["verdict"] == "ptx-jit"
    fa2 = libraries["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"]
    assert fa2["decides"] and fa2["verdict"] == "ptx-jit"
    assert "caches the result" in fa2["explanation"]
    assert audit["verdict"] == "ptx-jit" and audit["ok"] and code == 0


def test_a_cpu_only_wheel_fails_a_gpu_target(
    cli: CliRunner, request: pytest.FixtureRequest
) -> None:
    wheel = fetch(request, "torch")
    code, report = inspect(cli, wheel, "dgx-spark")
    audit = report["audits"]["sm_121"]
    assert code == 1 and audit["verdict"] == "no-cuda-code" and not audit["ok"]
    assert audit["reasoning"] == [
        "no file holds CUDA device code: a CPU-only build, which does not use the GPU"
    ]


def test_standalone_cubins_are_read_and_judged_fast(
    cli: CliRunner, request: pytest.FixtureRequest
) -> None:
    """16,000 cubins, each read (SM from e_flags, variant from ptxas's note), in seconds.
    None is for the Spark's 12.x family: the collection will not run there; on a B200
    (sm_100) it runs. (Time is printed, not asserted: docs/benchmarks.md has the figure.)"""
    wheel = fetch(request, "cubins")
    started = time.perf_counter()
    code, report = inspect(cli, wheel, "dgx-spark")
    print(f"inspect of {wheel.name}: {time.perf_counter() - started:.1f} s")
    audit = report["audits"]["sm_121"]
    (body,) = audit["libraries"]
    assert body["role"] == "device-code" and body["path"].startswith(
        "flashinfer_cubin/ (15970 .cubin"
    )
    assert set(body["code"]) == {"sm_100", "sm_100a", "sm_100f", "sm_103", "sm_103a"}
    assert body["code"]["sm_100f"] == 13646
    assert code == 1 and audit["verdict"] == "will-not-run"
