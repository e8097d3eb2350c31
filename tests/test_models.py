"""Targets, recipes and arch names: validation gives one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkforge.config.archs import CudaArch, cmake_architectures, parse_arch, torch_arch_list
from sparkforge.config.recipes import load_recipe
from sparkforge.config.targets import load_target
from sparkforge.util.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_targets_load() -> None:
    spark = load_target(REPO, "dgx-spark")
    assert (spark.platform, spark.machine, spark.python) == ("linux_aarch64", "aarch64", "3.12")
    assert spark.cuda_archs == (CudaArch(12, 1),)
    assert spark.manylinux == "manylinux_2_39_aarch64"
    assert "libcuda.so*" in spark.repair_exclude and "libcudart.so*" in spark.repair_exclude
    hopper = load_target(REPO, "hopper")
    assert (hopper.machine, hopper.cuda_archs) == ("x86_64", (CudaArch(9, 0),))


def test_shipped_probe_recipe_loads() -> None:
    recipe = load_recipe(REPO, "sm121-probe")
    assert recipe.default_version() == "0.1.0"
    assert recipe.source.path == "probe"
    assert recipe.smoke_script.is_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("121", (121, "")),
        ("12.1", (121, "")),
        ("sm_121", (121, "")),
        ("sm_121a", (121, "a")),
        ("121a", (121, "a")),
        ("12.1a", (121, "a")),
        ("120f", (120, "f")),
        ("compute_90", (90, "")),
        ("9.0", (90, "")),
        ("10.3", (103, "")),
        (" SM_100F ", (100, "f")),
    ],
)
def test_parse_arch(text: str, expected: tuple[int, str]) -> None:
    arch = parse_arch(text, where="--cuda-arch")
    assert (arch.sm, arch.variant) == expected


@pytest.mark.parametrize(
    "text",
    ["", "sm", "sm_", "12", "1210", "12.10", "sm_12.1", "121b", "12.1(2.0)", "sm_0", "x121", "1.2"],
)
def test_parse_arch_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_arch(text, where="--cuda-arch")
    assert "\n" not in raised.value.message
    assert raised.value.message.startswith(f"--cuda-arch: '{text}' is not a CUDA architecture")


def test_arch_renderings() -> None:
    archs = (CudaArch(9, 0), CudaArch(12, 1))
    assert cmake_architectures(archs, ptx=False) == "90-real;121-real"
    assert cmake_architectures(archs, ptx=True) == "90-real;121"
    assert torch_arch_list(archs, ptx=False) == "9.0;12.1"
    assert torch_arch_list(archs, ptx=True) == "9.0;12.1+PTX"


def _write_target(project: Path, body: str) -> None:
    (project / "targets" / "bad.toml").write_text(body)


GOOD_TARGET = (
    (REPO / "targets" / "hopper.toml").read_text().replace('name = "hopper"', 'name = "bad"')
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "\ncolour = 'red'\n", "key 'colour': unknown key"),
        (
            lambda t: t.replace('python = "3.12"', "python = 3.12"),
            "key 'python': input should be a valid string",
        ),
        (lambda t: t.replace('python = "3.12"\n', ""), "key 'python': missing required key"),
        (
            lambda t: t.replace('cuda_archs = ["90"]', 'cuda_archs = ["ninety"]'),
            "key 'cuda_archs': 'ninety' is not a CUDA architecture",
        ),
        (
            lambda t: t.replace('platform = "linux_x86_64"', 'platform = "linux_aarch64"'),
            "is not for platform linux_aarch64",
        ),
        (
            lambda t: t.replace('name = "bad"', 'name = "other"'),
            "key 'name': is 'other' but the file is named 'bad.toml'",
        ),
        (lambda t: t + "\n[broken\n", "malformed TOML"),
    ],
)
def test_target_errors_name_file_and_key(project: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _write_target(project, edit(GOOD_TARGET))
    with pytest.raises(ConfigError) as info:
        load_target(project, "bad")
    assert str(info.value).startswith(str(project / "targets" / "bad.toml"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_target_lists_known(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"no target 'nope'.*known targets: dgx-spark, hopper"):
        load_target(project, "nope")


def test_an_unlisted_version_borrows_the_nearest_listed_settings() -> None:
    """Recipe.with_version: the newest listed release not above it; refs renamed; another
    spelling of a listed version refused."""

    project = Path(__file__).resolve().parents[1]
    triton = load_recipe(project, "triton")
    derived = triton.with_version("3.5.2")
    assert derived.derived == {"3.5.2": "3.5.1"}
    assert derived.versions["3.5.2"].ref == "v3.5.2"
    assert not derived.versions["3.5.2"].default
    assert triton.with_version("3.0.0").derived == {"3.0.0": "3.5.0"}  # below all: the oldest
    torch = load_recipe(project, "torch")
    with pytest.raises(ConfigError, match=r"'2\.15' is torch 2\.15\.0, which .* lists"):
        torch.with_version("2.15")
