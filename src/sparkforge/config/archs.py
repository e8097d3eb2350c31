"""CUDA architecture names and the spellings each build system wants.

One arch is written ``121`` (SASS for sm_121), ``121a`` / ``120f`` (arch-specific
or family SASS) in targets, recipes and on the command line; ``12.1`` and
``sm_121`` are accepted too. Renderers turn a list of them into what CMake,
PyTorch and nvcc expect, always explicitly (never auto-detected).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparkforge.util.errors import ConfigError

# "121" / "sm_121a" / "compute_120f" (SM number) or "12.1" / "12.1a" (major.minor).
# CC 1.x is left out so that "12" is an error, not a guess at sm_12.
_ARCH = re.compile(
    r"(?:(?:sm_|compute_)?(?P<sm>[2-9]\d|[1-9]\d\d)|(?P<major>[2-9]|[1-9]\d)\.(?P<minor>\d))"
    r"(?P<variant>[af]?)"
)


@dataclass(frozen=True, order=True)
class CudaArch:
    """One GPU architecture to emit SASS for (and optionally PTX)."""

    major: int
    minor: int
    variant: str = ""  # "", "a" (arch-specific) or "f" (family)

    @property
    def sm(self) -> int:
        return self.major * 10 + self.minor

    @property
    def name(self) -> str:
        return f"sm_{self.sm}{self.variant}"

    @property
    def cmake(self) -> str:
        return f"{self.sm}{self.variant}"

    @property
    def torch(self) -> str:
        return f"{self.major}.{self.minor}{self.variant}"

    def __str__(self) -> str:
        return self.cmake


def parse_arch(text: str, *, where: str) -> CudaArch:
    """Parse ``121``, ``12.1``, ``sm_121a``, ``120f``; ``where`` names the file/key or flag."""
    match = _ARCH.fullmatch(text.strip().lower())
    if not match:
        raise ConfigError(
            f"{where}: '{text}' is not a CUDA architecture; write e.g. '121', '121a', '120f' or '12.1'"
        )
    if match["sm"] is not None:  # "90" is 9.0 and "121" is 12.1: the last digit is the minor
        sm = int(match["sm"])
        return CudaArch(sm // 10, sm % 10, match["variant"])
    return CudaArch(int(match["major"]), int(match["minor"]), match["variant"])


def check_arch(text: str) -> str:
    """Validator form of :func:`parse_arch` for pydantic, which reports ValueError with the key."""
    try:
        parse_arch(text, where="value")
    except ConfigError:
        raise ValueError(
            f"'{text}' is not a CUDA architecture; write e.g. '121', '121a' or '120f'"
        ) from None
    return text


# The SASS each CUDA version's nvcc builds (`nvcc --list-gpu-code` of CUDA 13.0.88); the
# arch-specific `a` variants exist from sm_90, the family `f` variants from sm_100 (nvcc
# refuses sm_89a and sm_90f). A CUDA version not listed here is not checked.
KNOWN_SASS: dict[str, frozenset[int]] = {
    "13.0": frozenset({75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121}),
}


def unknown_archs(archs: tuple[CudaArch, ...], cuda_version: str) -> list[CudaArch]:
    """The archs that CUDA ``cuda_version`` cannot build (none when it is not in the table)."""
    known = KNOWN_SASS.get(cuda_version)
    if known is None:
        return []
    return [
        a for a in archs
        if a.sm not in known or (a.variant == "a" and a.sm < 90) or (a.variant == "f" and a.sm < 100)
    ]  # fmt: skip


def merge_archs(*groups: tuple[CudaArch, ...]) -> tuple[CudaArch, ...]:
    """Union of arch lists, sorted, without duplicates."""
    return tuple(sorted({arch for group in groups for arch in group}))


def cmake_architectures(archs: tuple[CudaArch, ...], *, ptx: bool) -> str:
    """``CMAKE_CUDA_ARCHITECTURES``: SASS only (``-real``), PTX of the newest if asked."""
    items = [f"{a.cmake}-real" for a in archs]
    if ptx and archs:
        items[-1] = archs[-1].cmake
    return ";".join(items)


def arch_list_a(archs: tuple[CudaArch, ...]) -> str:
    """FlashInfer's form: space-separated X.Y, arch-specific (``a``) from 9.0 on."""
    return " ".join(
        dict.fromkeys(f"{a.major}.{a.minor}{'a' if a.major >= 9 else ''}" for a in archs)
    )


def torch_arch_list(archs: tuple[CudaArch, ...], *, ptx: bool) -> str:
    """``TORCH_CUDA_ARCH_LIST`` (``9.0;12.1``, ``+PTX`` on the newest if asked)."""
    items = [a.torch for a in archs]
    if ptx and items:
        items[-1] += "+PTX"
    return ";".join(items)
