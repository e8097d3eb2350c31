"""Repair and normalization of real wheels: zip bytes, RECORD, auditwheel, pip install.

The helpers at the top (``make_wheel``, ``build_extension_wheel``,
``fresh_venv``, ``pip_install``) are imported by ``test_index.py`` too.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import platform
import stat
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import WheelError
from sparkforge.wheel.repair import normalize, read_metadata, repair

EPOCH = 1_700_000_001  # odd on purpose: zip keeps 2-second steps
MACHINE = platform.machine()
CP_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
ISOLATED_PIP_ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull}


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    requires: Sequence[str] = (),
    executable: Sequence[str] = (),
) -> Path:
    """Write a valid wheel the way a sloppy backend would: unsorted, local times, odd modes."""
    stem = f"{name}-{version}"
    metadata = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}\n")
    metadata.extend(f"Requires-Dist: {requirement}\n" for requirement in requires)
    metadata.append("\nA test project.\nVersion: not-a-header\n")
    purelib = "true" if tag.endswith("-any") else "false"
    contents = dict(files)
    contents[f"{stem}.dist-info/METADATA"] = "".join(metadata).encode()
    contents[f"{stem}.dist-info/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n"
    ).encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{stem}.dist-info/RECORD", "", ""])
    contents[f"{stem}.dist-info/RECORD"] = record.getvalue().encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{stem}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for index, (path, data) in enumerate(reversed(contents.items())):
            info = zipfile.ZipInfo(path, (2024, 5, 6, 7, 8, 10 + index * 2))
            mode = 0o775 if path in executable else 0o664
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.extra = b"\xca\xfe\x00\x00"  # an empty extra field record
            archive.writestr(info, data)
    return wheel


def build_extension_wheel(directory: Path, *, helper: Path | None = None) -> Path:
    """A CPython extension wheel (``sfdemo._demo.exp`` calls libm's ``exp``), tag linux_<arch>.

    With ``helper`` the extension also links ``libsfhelper.so`` from that
    directory, which is outside every manylinux policy, so repair must graft it
    or be told to exclude it.
    """
    source = directory / "demo.c"
    source.write_text(
        """
#include <Python.h>
#include <math.h>
#ifdef WITH_HELPER
int sf_helper(void);
#else
static int sf_helper(void) { return 0; }
#endif
static PyObject *demo_exp(PyObject *self, PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(exp(x) + sf_helper());
}
static PyMethodDef methods[] = {{"exp", demo_exp, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_demo", NULL, -1, methods};
PyMODINIT_FUNC PyInit__demo(void) { return PyModule_Create(&module); }
"""
    )
    extension = directory / f"_demo{sysconfig.get_config_var('EXT_SUFFIX')}"
    flags = ["-DWITH_HELPER"] if helper else []
    libraries = [f"-L{helper}", f"-Wl,-rpath,{helper}", "-lsfhelper"] if helper else []
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", f"-I{sysconfig.get_paths()['include']}", *flags,
         str(source), "-o", str(extension), *libraries, "-lm"],
        check=True,
    )  # fmt: skip
    return make_wheel(
        directory / "raw",
        "sfdemo",
        "1.0",
        {"sfdemo/__init__.py": b"", f"sfdemo/{extension.name}": extension.read_bytes()},
        tag=f"{CP_TAG}-{CP_TAG}-linux_{MACHINE}",
    )


def build_helper_library(directory: Path) -> Path:
    directory.mkdir()
    source = directory / "helper.c"
    source.write_text("int sf_helper(void) { return 2; }\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libsfhelper.so", str(source), "-o",
         str(directory / "libsfhelper.so")],
        check=True,
    )  # fmt: skip
    return directory


def fresh_venv(directory: Path) -> Path:
    """A venv without pip (fast); pip installs into it with ``--python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    return directory / "bin" / "python"


def pip_install(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pip with no user or site configuration (this machine's adds extra indexes)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--isolated",
         "--no-cache-dir", "--disable-pip-version-check", *args],
        env=ISOLATED_PIP_ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip


def run_python(python: Path, code: str) -> str:
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    return result.stdout.strip()


def record_rows(archive: zipfile.ZipFile) -> list[list[str]]:
    (record,) = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
    return list(csv.reader(io.StringIO(archive.read(record).decode())))


@pytest.fixture
def sample_wheel(tmp_path: Path) -> Path:
    elf = b"\x7fELF\x02\x01\x01" + bytes(57)
    return make_wheel(
        tmp_path / "raw",
        "sfdemo",
        "1.0",
        {
            "sfdemo/__init__.py": b"VALUE = 1\n",
            "sfdemo/zz_last.py": b"",
            "sfdemo/_native.so": elf,
            "sfdemo/tool.sh": b"#!/bin/sh\necho hi\n",
            "sfdemo/run.py": b"print('x')\n",
            "sfdemo-1.0.data/scripts/sfdemo-hello": b"#!python\nprint('hello')\n",
        },
        executable=["sfdemo/run.py"],
    )


def test_normalize_is_deterministic_and_idempotent(sample_wheel: Path, tmp_path: Path) -> None:
    first = normalize(sample_wheel, out_dir=tmp_path / "a", source_date_epoch=EPOCH)
    second = normalize(sample_wheel, out_dir=tmp_path / "b", source_date_epoch=EPOCH)
    again = normalize(first, out_dir=tmp_path / "c", source_date_epoch=EPOCH)

    assert first.name == sample_wheel.name
    assert first.read_bytes() == second.read_bytes() == again.read_bytes()
    assert first.read_bytes() != sample_wheel.read_bytes()
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]


def test_normalize_order_times_modes_and_compression(sample_wheel: Path, tmp_path: Path) -> None:
    out = normalize(sample_wheel, out_dir=tmp_path / "out", source_date_epoch=EPOCH)

    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    dist_info = [n for n in names if n.startswith("sfdemo-1.0.dist-info/")]
    assert names == sorted(n for n in names if n not in dist_info) + dist_info
    assert dist_info == [
        "sfdemo-1.0.dist-info/METADATA",
        "sfdemo-1.0.dist-info/WHEEL",
        "sfdemo-1.0.dist-info/RECORD",
    ]
    modes = {info.filename: info.external_attr >> 16 for info in infos}
    executable = {"sfdemo/_native.so", "sfdemo/tool.sh", "sfdemo/run.py",
                  "sfdemo-1.0.data/scripts/sfdemo-hello"}  # fmt: skip
    for name, mode in modes.items():
        assert stat.S_ISREG(mode)
        assert stat.S_IMODE(mode) == (0o755 if name in executable else 0o644), name
    for info in infos:
        assert info.date_time == (2023, 11, 14, 22, 13, 20)  # EPOCH rounded down to 2 s
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.extra == b""
        assert info.create_system == 3


def test_normalize_clamps_time_to_zip_floor(sample_wheel: Path, tmp_path: Path) -> None:
    out = normalize(sample_wheel, out_dir=tmp_path / "out", source_date_epoch=0)

    with zipfile.ZipFile(out) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_normalize_regenerates_a_record_that_verifies(sample_wheel: Path, tmp_path: Path) -> None:
    out = normalize(sample_wheel, out_dir=tmp_path / "out", source_date_epoch=EPOCH)

    with zipfile.ZipFile(out) as archive:
        rows = record_rows(archive)
        assert [row[0] for row in rows] == archive.namelist()
        assert rows[-1] == ["sfdemo-1.0.dist-info/RECORD", "", ""]
        for path, hash_field, size in rows[:-1]:
            data = archive.read(path)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert hash_field == f"sha256={digest.decode()}"
            assert int(size) == len(data)


def test_local_version_renames_everything_and_installs(sample_wheel: Path, tmp_path: Path) -> None:
    out = normalize(
        sample_wheel, out_dir=tmp_path / "out", source_date_epoch=EPOCH, local_version="cu130"
    )

    assert out.name == "sfdemo-1.0+cu130-py3-none-any.whl"
    assert str(parse_wheel_filename(out.name)[1]) == "1.0+cu130"
    with zipfile.ZipFile(out) as archive, zipfile.ZipFile(sample_wheel) as original:
        names = archive.namelist()
        assert not [n for n in names if n.startswith(("sfdemo-1.0.dist-info", "sfdemo-1.0.data"))]
        assert "sfdemo-1.0+cu130.data/scripts/sfdemo-hello" in names
        assert archive.read("sfdemo-1.0+cu130.dist-info/WHEEL") == original.read(
            "sfdemo-1.0.dist-info/WHEEL"
        )
        assert record_rows(archive)[-1][0] == "sfdemo-1.0+cu130.dist-info/RECORD"
    metadata = read_metadata(out).decode()
    assert "\nVersion: 1.0+cu130\n" in metadata
    assert metadata.endswith("Version: not-a-header\n")  # the body is not a header

    python = fresh_venv(tmp_path / "venv")
    result = pip_install(python, "--no-index", str(out))
    assert result.returncode == 0, result.stderr
    code = "import importlib.metadata as m, sfdemo; print(m.version('sfdemo'), sfdemo.VALUE)"
    assert run_python(python, code) == "1.0+cu130 1"
    hello = subprocess.run([str(python.parent / "sfdemo-hello")], capture_output=True, text=True)
    assert hello.stdout == "hello\n"


def test_local_version_extends_an_existing_label(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "raw", "sfdemo", "2.0+abc", {"sfdemo/__init__.py": b""})

    out = normalize(wheel, out_dir=tmp_path / "out", source_date_epoch=EPOCH, local_version="cu130")

    assert out.name == "sfdemo-2.0+abc.cu130-py3-none-any.whl"
    assert b"\nVersion: 2.0+abc.cu130\n" in read_metadata(out)


def test_invalid_local_label_is_refused(sample_wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(WheelError, match="local version label 'cu 130!'"):
        normalize(sample_wheel, out_dir=tmp_path, source_date_epoch=EPOCH, local_version="cu 130!")


@pytest.mark.parametrize("member", ["../evil.py", "/etc/evil.py", "sfdemo/../../evil.py"])
def test_member_outside_install_dir_is_refused(tmp_path: Path, member: str) -> None:
    wheel = make_wheel(tmp_path / "raw", "sfdemo", "1.0", {member: b"boom", "sfdemo/x.py": b""})
    out_dir = tmp_path / "out"

    with pytest.raises(WheelError) as caught:
        normalize(wheel, out_dir=out_dir, source_date_epoch=EPOCH)

    assert "points outside the install directory" in caught.value.message
    assert "\n" not in caught.value.message
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_member_altered_after_build_is_refused(sample_wheel: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered" / sample_wheel.name
    tampered.parent.mkdir()
    with zipfile.ZipFile(sample_wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"VALUE = 2\n" if info.filename == "sfdemo/__init__.py" else data)
    out_dir = tmp_path / "out"

    with pytest.raises(WheelError, match=r"sfdemo/__init__\.py does not match its RECORD hash"):
        normalize(tampered, out_dir=out_dir, source_date_epoch=EPOCH)
    assert not list(out_dir.iterdir())  # the temp file is gone too


def test_sha256_file_and_read_metadata(sample_wheel: Path) -> None:
    assert sha256_file(sample_wheel) == hashlib.sha256(sample_wheel.read_bytes()).hexdigest()
    assert read_metadata(sample_wheel).startswith(b"Metadata-Version: 2.1\nName: sfdemo\n")


def test_repair_tags_exactly_the_policy_and_is_reproducible(tmp_path: Path) -> None:
    raw = build_extension_wheel(tmp_path)
    policy = f"manylinux_2_35_{MACHINE}"
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    lines: list[str] = []

    first = repair(
        raw, policy=policy, excludes=[], out_dir=tmp_path / "a", env=env, log=lines.append
    )
    second = repair(raw, policy=policy, excludes=[], out_dir=tmp_path / "b", env=env)

    assert first.name == f"sfdemo-1.0-{CP_TAG}-{CP_TAG}-{policy}.whl"
    assert first.read_bytes() == second.read_bytes()
    assert any("Fixed-up wheel written to" in line for line in lines)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]
    with zipfile.ZipFile(first) as archive:
        wheel_file = archive.read("sfdemo-1.0.dist-info/WHEEL").decode()
        archive.extractall(tmp_path / "unpacked")
    assert f"Tag: {CP_TAG}-{CP_TAG}-{policy}\n" in wheel_file
    value = run_python(
        Path(sys.executable), f"import sys; sys.path.insert(0, {str(tmp_path / 'unpacked')!r}); "
        "from sfdemo import _demo; print(_demo.exp(0.0))",
    )  # fmt: skip
    assert value == "1.0"


def test_repair_grafts_a_foreign_library_unless_excluded(tmp_path: Path) -> None:
    raw = build_extension_wheel(tmp_path, helper=build_helper_library(tmp_path / "helper"))
    policy = f"manylinux_2_35_{MACHINE}"

    grafted = repair(raw, policy=policy, excludes=[], out_dir=tmp_path / "grafted")
    excluded = repair(raw, policy=policy, excludes=["libsfhelper.so*"], out_dir=tmp_path / "ex")

    with zipfile.ZipFile(grafted) as archive:
        assert [n for n in archive.namelist() if n.startswith("sfdemo.libs/libsfhelper")]
    with zipfile.ZipFile(excluded) as archive:
        assert not [n for n in archive.namelist() if ".libs/" in n]
    assert excluded.name.endswith(f"-{policy}.whl")


def test_repair_to_an_older_policy_than_the_symbols_fails_in_one_line(tmp_path: Path) -> None:
    raw = build_extension_wheel(tmp_path)  # exp@GLIBC_2.29
    out_dir = tmp_path / "out"

    with pytest.raises(WheelError) as caught:
        repair(raw, policy=f"manylinux_2_17_{MACHINE}", excludes=[], out_dir=out_dir)

    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"auditwheel could not repair {raw} to manylinux_2_17_{MACHINE}:")
    assert "too-recent versioned symbols" in message
    assert not list(out_dir.iterdir())


def test_repair_copies_a_wheel_without_elf_files(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "raw", "sfpure", "1.0", {"sfpure/__init__.py": b""})

    out = repair(wheel, policy=f"manylinux_2_35_{MACHINE}", excludes=[], out_dir=tmp_path / "o")

    assert out == tmp_path / "o" / wheel.name
    assert out.read_bytes() == wheel.read_bytes()
