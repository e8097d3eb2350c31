"""Reproducibility: compare a rebuilt wheel with the published one.

Identical sha256 is the goal. Otherwise the report says which members differ
(size and hash), and for ELF members which sections differ; when diffoscope is
installed its report is written too.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sparkforge.util.digest import sha256_file


@dataclass(frozen=True)
class MemberDiff:
    name: str
    change: str  # "added", "removed" or "changed"
    sizes: tuple[int | None, int | None]
    hashes: tuple[str | None, str | None]
    elf_sections: tuple[str, ...] = ()


@dataclass(frozen=True)
class WheelDiff:
    published: Path
    rebuilt: Path
    published_sha256: str
    rebuilt_sha256: str
    members: tuple[MemberDiff, ...] = field(default_factory=tuple)

    @property
    def identical(self) -> bool:
        return self.published_sha256 == self.rebuilt_sha256

    def lines(self) -> list[str]:
        """The human report, one line per finding."""
        if self.identical:
            return [
                f"reproducible: {self.published.name} sha256 {self.published_sha256} (both builds)"
            ]
        out = [
            f"NOT reproducible: {self.published.name}",
            f"  published sha256 {self.published_sha256}",
            f"  rebuilt   sha256 {self.rebuilt_sha256}",
        ]
        if not self.members:
            out.append(
                "  every member is identical: the zip container differs (order, timestamps, modes)"
            )
        for member in self.members:
            a, b = member.sizes
            line = f"  {member.change:8} {member.name}  size {a} -> {b}"
            if member.change == "changed":
                line += f"  sha256 {str(member.hashes[0])[:12]}… -> {str(member.hashes[1])[:12]}…"
            out.append(line)
            if member.elf_sections:
                out.append(f"           ELF sections that differ: {', '.join(member.elf_sections)}")
        return out


def _members(archive: zipfile.ZipFile) -> dict[str, bytes]:
    return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


def elf_sections_that_differ(left: bytes, right: bytes) -> tuple[str, ...]:
    """Names of sections whose contents differ (or exist on one side only)."""
    try:
        a, b = ELFFile(io.BytesIO(left)), ELFFile(io.BytesIO(right))
        sections_a = {
            s.name: hashlib.sha256(s.data()).hexdigest() for s in a.iter_sections() if s.name
        }
        sections_b = {
            s.name: hashlib.sha256(s.data()).hexdigest() for s in b.iter_sections() if s.name
        }
    except ELFError:
        return ()
    names = sorted(set(sections_a) | set(sections_b))
    return tuple(name for name in names if sections_a.get(name) != sections_b.get(name))


def compare_wheels(published: Path, rebuilt: Path) -> WheelDiff:
    """Compare two wheels: sha256 first, then member by member."""
    digest_a, digest_b = sha256_file(published), sha256_file(rebuilt)
    if digest_a == digest_b:
        return WheelDiff(published, rebuilt, digest_a, digest_b)
    with zipfile.ZipFile(published) as za, zipfile.ZipFile(rebuilt) as zb:
        a, b = _members(za), _members(zb)
    diffs: list[MemberDiff] = []
    for name in sorted(set(a) | set(b)):
        left, right = a.get(name), b.get(name)
        if left == right:
            continue
        change = "added" if left is None else "removed" if right is None else "changed"
        sections = (
            elf_sections_that_differ(left, right)
            if left and right and left[:4] == b"\x7fELF"
            else ()
        )
        diffs.append(MemberDiff(
            name, change,
            (None if left is None else len(left), None if right is None else len(right)),
            (None if left is None else hashlib.sha256(left).hexdigest(),
             None if right is None else hashlib.sha256(right).hexdigest()),
            sections,
        ))  # fmt: skip
    return WheelDiff(published, rebuilt, digest_a, digest_b, tuple(diffs))


def diffoscope_report(published: Path, rebuilt: Path, out: Path) -> Path | None:
    """diffoscope's text report when diffoscope is installed, else None."""
    tool = shutil.which("diffoscope")
    if tool is None:
        return None
    subprocess.run([tool, "--text", str(out), str(published), str(rebuilt)], capture_output=True)
    return out if out.exists() else None
