"""The stand-in base image (tools/standin_base.py): what the container tier builds FROM here.

The recipe-hash tests need nothing. The image tests build a real Debian root
filesystem with CUDA from PyPI wheels and run nvcc in it under podman; they
skip, naming why, where podman or debootstrap cannot be installed or used.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sparkforge.wheel.cudabin import scan_elf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import standin_base
from standin_base import Recipe, StandinError, ensure_standin, podman_run_argv, recipe_hash

KERNEL = """\
#include <cstdio>
__global__ void scale(float *x, float a) { x[threadIdx.x] *= a; }
int main() { std::printf("built\\n"); return 0; }
"""


def _with_sha(arch: str, sha: str) -> tuple[standin_base.WheelPin, ...]:
    """The pinned wheels with the first one's ``arch`` sha256 replaced."""
    first, *rest = standin_base.WHEELS
    shas = tuple((a, sha if a == arch else s) for a, s in first.sha256)
    return (replace(first, sha256=shas), *rest)


def test_recipe_hash_is_stable_and_per_arch() -> None:
    assert recipe_hash("amd64") == recipe_hash("amd64")
    assert recipe_hash("amd64") != recipe_hash("arm64")
    assert Recipe("arm64").image_ref().startswith("localhost/sparkforge-standin:arm64-")


@pytest.mark.parametrize(
    "override",
    [
        {"suite": "trixie"},
        {"mirror": "http://ftp.de.debian.org/debian"},
        {"packages": ("ca-certificates",)},
        {"excludes": ()},
        {"wheels": _with_sha("amd64", "0" * 64)},
        {"wheels": standin_base.WHEELS[:-1]},
        {"layout_version": standin_base.LAYOUT_VERSION + 1},
        {"env": (("CUDA_HOME", "/opt/cuda"),)},
    ],
    ids=lambda override: next(iter(override)),
)
def test_recipe_hash_changes_with_each_pinned_constant(override: dict[str, object]) -> None:
    assert recipe_hash("amd64", **override) != recipe_hash("amd64")


def test_other_arch_pins_do_not_rebuild_this_arch() -> None:
    """A new arm64 wheel hash must not throw away the amd64 image (and vice versa)."""
    assert recipe_hash("amd64", wheels=_with_sha("arm64", "0" * 64)) == recipe_hash("amd64")


def test_wheel_changes_keep_the_debootstrap_cache() -> None:
    """Debian's tree is cached by its own digest: new wheels do not redo debootstrap."""
    changed = Recipe("arm64", wheels=_with_sha("arm64", "0" * 64))
    assert changed.debian_digest() == Recipe("arm64").debian_digest()
    assert changed.digest() != Recipe("arm64").digest()


def test_unknown_arch_is_one_clear_line() -> None:
    with pytest.raises(StandinError, match="arch must be one of amd64, arm64, got 'armhf'"):
        recipe_hash("armhf")


@pytest.fixture(scope="module")
def standin_tools() -> None:
    """podman, runc and debootstrap, installed if missing; the image tests skip without them."""
    try:
        standin_base.ensure_tools(log=lambda line: None)
    except StandinError as error:
        pytest.skip(f"podman/debootstrap unavailable: {error}")
    probe = subprocess.run(
        ["podman", *standin_base.PODMAN_GLOBAL_FLAGS, "info"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"podman is not usable here: {probe.stderr.strip().splitlines()[-1:]}")


@pytest.fixture(scope="module")
def amd64_image(standin_tools: None) -> str:
    """Built once per machine and recipe (minutes cold); later runs find it in podman."""
    return ensure_standin("amd64", log=print)


def _run(image: str, *command: str, stdin: str | None = None, volume: Path | None = None) -> str:
    mount = ["-v", f"{volume}:/out"] if volume else []
    # --entrypoint= skips the base's banner entrypoint (as NVIDIA's), so stdout is the command's
    extra = ["-i", "--network=none", "--entrypoint=", *mount]
    argv = podman_run_argv(image, "amd64", *command, extra=extra)
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.network
def test_amd64_standin_is_cached(amd64_image: str) -> None:
    assert amd64_image == standin_base.image_ref("amd64")
    start = time.monotonic()
    assert ensure_standin("amd64", log=print) == amd64_image
    assert time.monotonic() - start < 5


@pytest.mark.slow
@pytest.mark.network
def test_amd64_standin_has_nvcc_13_0(amd64_image: str) -> None:
    version = _run(amd64_image, "nvcc", "--version")
    assert "release 13.0" in version
    assert _run(amd64_image, "sh", "-c", "echo $CUDA_HOME; readlink /usr/local/cuda").split() == [
        "/usr/local/cuda",
        "cuda-13.0",
    ]


@pytest.mark.slow
@pytest.mark.network
def test_amd64_standin_compiles_for_sm90_and_sm121(amd64_image: str, tmp_path: Path) -> None:
    script = (
        "cat > /tmp/k.cu && cd /tmp && nvcc -o /out/k k.cu"
        " -gencode arch=compute_90,code=sm_90 -gencode arch=compute_121,code=sm_121 && /out/k"
    )
    assert _run(amd64_image, "sh", "-c", script, stdin=KERNEL, volume=tmp_path) == "built\n"
    with (tmp_path / "k").open("rb") as binary:
        code = scan_elf(binary)
    assert sorted(c.name for c in code) == ["sm_121", "sm_90"]
