"""The reproducibility report: identical wheels, and which members and ELF sections differ."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from sparkforge.verify.repro import compare_wheels


def _so(tmp_path: Path, text: str) -> bytes:
    source = tmp_path / "lib.c"
    source.write_text(f'const char *message(void) {{ return "{text}"; }}\n')
    out = tmp_path / f"lib-{len(text)}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(source)], check=True)
    return out.read_bytes()


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in sorted(members.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
    return path


def test_identical_wheels(tmp_path: Path) -> None:
    members = {"pkg/__init__.py": b"x = 1\n"}
    a = _wheel(tmp_path / "a.whl", members)
    b = _wheel(tmp_path / "b.whl", members)
    diff = compare_wheels(a, b)
    assert diff.identical and diff.lines()[0].startswith("reproducible: a.whl sha256 ")


def test_report_names_members_and_elf_sections(tmp_path: Path) -> None:
    common = {"pkg/__init__.py": b"x = 1\n"}
    a = _wheel(
        tmp_path / "a.whl", {**common, "pkg/lib.so": _so(tmp_path, "one"), "pkg/old.txt": b"old"}
    )
    b = _wheel(
        tmp_path / "b.whl", {**common, "pkg/lib.so": _so(tmp_path, "three"), "pkg/new.txt": b"new"}
    )
    diff = compare_wheels(a, b)
    assert not diff.identical
    changes = {m.name: m.change for m in diff.members}
    assert changes == {"pkg/lib.so": "changed", "pkg/new.txt": "added", "pkg/old.txt": "removed"}
    lib = next(m for m in diff.members if m.name == "pkg/lib.so")
    assert ".rodata" in lib.elf_sections and ".text" not in lib.elf_sections
    text = "\n".join(diff.lines())
    assert "NOT reproducible: a.whl" in text and "ELF sections that differ: " in text


def test_same_members_in_another_container(tmp_path: Path) -> None:
    a = _wheel(tmp_path / "a.whl", {"pkg/a.py": b"1", "pkg/b.py": b"2"})
    with zipfile.ZipFile(tmp_path / "b.whl", "w") as archive:  # other order and timestamps
        archive.writestr("pkg/b.py", b"2")
        archive.writestr("pkg/a.py", b"1")
    diff = compare_wheels(a, tmp_path / "b.whl")
    assert not diff.identical and not diff.members
    assert "every member is identical: the zip container differs" in "\n".join(diff.lines())
