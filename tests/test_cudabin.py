"""The fatbin reader against real nvcc output, cuobjdump, and a CUDA wheel from PyPI."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import as_cuobjdump, cuobjdump_listing, locked
from sparkforge.util.errors import WheelError
from sparkforge.wheel.compat import Status, audit
from sparkforge.wheel.cudabin import (
    FATBIN_SECTION,
    MACHINES,
    CudaCode,
    read_elf,
    read_fatbins,
    scan_elf,
    scan_wheel,
)

KERNEL = "__global__ void scale(float *x, float v) { x[threadIdx.x] *= v; }\n"


def gencode(arch: str, code: str) -> list[str]:
    return ["-gencode", f"arch={arch},code={code}"]


# name -> (extra nvcc flags, the code the reader must find)
LIBRARIES: dict[str, tuple[list[str], set[CudaCode]]] = {
    # every variant, nothing compressed
    "mixed": (
        [
            "-no-compress",
            *gencode("compute_90", "sm_90"),
            *gencode("compute_90a", "sm_90a"),
            *gencode("compute_120", "compute_120"),
            *gencode("compute_121a", "sm_121a"),
            *gencode("compute_120f", "sm_120f"),
        ],
        {
            CudaCode("sass", 90),
            CudaCode("sass", 90, "a"),
            CudaCode("ptx", 120),
            CudaCode("sass", 121, "a"),
            CudaCode("sass", 120, "f"),
        },
    ),
    # the same, all compressed with Zstd (the default algorithm)
    "zstd": (
        [
            "-Xfatbin",
            "-compress-all",
            *gencode("compute_90", "sm_90"),
            *gencode("compute_90a", "sm_90a"),
            *gencode("compute_120", "compute_120"),
            *gencode("compute_121a", "sm_121a"),
            *gencode("compute_120f", "sm_120f"),
        ],
        {
            CudaCode("sass", 90, "", True),
            CudaCode("sass", 90, "a", True),
            CudaCode("ptx", 120, "", True),
            CudaCode("sass", 121, "a", True),
            CudaCode("sass", 120, "f", True),
        },
    ),
    # PTX of each variant plus plain SASS, compressed with LZ4
    "lz4": (
        [
            "-compress-mode=speed",
            "-Xfatbin",
            "-compress-all",
            *gencode("compute_121", "[sm_121,compute_121]"),
            *gencode("compute_120f", "compute_120f"),
            *gencode("compute_121a", "compute_121a"),
            *gencode("compute_100f", "sm_100f"),
        ],
        {
            CudaCode("sass", 121, "", True),
            CudaCode("ptx", 121, "", True),
            CudaCode("ptx", 120, "f", True),
            CudaCode("ptx", 121, "a", True),
            CudaCode("sass", 100, "f", True),
        },
    ),
}


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") or shutil.which("nvcc", path=f"{cuda_home}/bin")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Compile the LIBRARIES (in parallel) plus a host-only library; ~5 s on 2 cores."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or PATH)")
    out = tmp_path_factory.mktemp("cudabin")
    source = out / "kernel.cu"
    source.write_text(KERNEL)
    host = out / "host.c"
    host.write_text("int answer(void) { return 42; }\n")
    commands = {
        name: [
            nvcc,
            "-shared",
            "-Xcompiler",
            "-fPIC",
            "-o",
            str(out / f"{name}.so"),
            str(source),
            *flags,
        ]
        for name, (flags, _) in LIBRARIES.items()
    }
    commands["host"] = ["cc", "-shared", "-fPIC", "-o", str(out / "host.so"), str(host)]
    run_all(commands)
    return {name: out / f"{name}.so" for name in commands}


def run_all(commands: dict[str, list[str]]) -> None:
    """Run the compile commands in parallel; each must succeed."""
    running = {
        name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    for name, process in running.items():
        output, _ = process.communicate()
        assert process.returncode == 0, f"{name}: {output}"


def scan_path(path: Path) -> dict[CudaCode, int]:
    with path.open("rb") as file:
        return scan_elf(file)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LIBRARIES))
def test_finds_exactly_what_nvcc_built(built: dict[str, Path], name: str) -> None:
    assert set(scan_path(built[name])) == LIBRARIES[name][1]


@pytest.mark.slow
def test_host_only_and_non_elf_have_no_code(built: dict[str, Path]) -> None:
    assert scan_path(built["host"]) == {}
    assert scan_elf(io.BytesIO(b"#!/bin/sh\necho not elf\n")) == {}
    assert scan_elf(io.BytesIO(b"")) == {}


def fatbin_section(path: Path) -> tuple[int, int]:
    with path.open("rb") as file:
        section = ELFFile(file).get_section_by_name(FATBIN_SECTION)
        assert section is not None
        return section["sh_offset"], section["sh_size"]


class RecordingBuffer:
    """Bytes that remember which ranges were sliced (the readers only slice)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key: slice, /) -> bytes:
        chunk = self.data[key]
        self.reads.append((key.start or 0, len(chunk)))
        return chunk

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.slow
def test_reads_headers_not_payloads(built: dict[str, Path]) -> None:
    """Within .nv_fatbin only container (16 B) and entry (48 B) headers are read."""
    path = built["mixed"]
    start, size = fatbin_section(path)
    recording = RecordingBuffer(path.read_bytes())
    containers = read_fatbins(recording, start, start + size)
    inside = [n for offset, n in recording.reads if start <= offset < start + size]
    assert inside.count(16) == len(containers) >= 1
    assert inside == [n for n in inside if n in (16, 48)]
    assert inside.count(48) == sum(sum(c.values()) for c in containers)
    assert sum(inside) < size // 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed", "host"])
def test_section_table_agrees_with_pyelftools(built: dict[str, Path], name: str) -> None:
    """The struct-based ELF reader finds the sections pyelftools finds, at the same places."""
    data = built[name].read_bytes()
    with built[name].open("rb") as file:
        expected = [(s.name, s["sh_offset"], s["sh_size"]) for s in ELFFile(file).iter_sections()]
    ours = read_elf(data)
    assert [(s.name, s.offset, s.size) for s in ours.sections] == expected
    assert MACHINES[ours.machine] == "x86_64"


def split_containers(region: bytes) -> list[bytes]:
    """Cut a .nv_fatbin section into its containers (16-byte header: magic, ver, hsize, size)."""
    containers = []
    offset = 0
    while offset < len(region):
        _, _, header_size, size = struct.unpack_from("<IHHQ", region, offset)
        containers.append(region[offset : offset + header_size + size])
        offset += header_size + size
    return containers


@pytest.mark.slow
def test_zero_padding_between_containers_is_skipped(built: dict[str, Path]) -> None:
    path = built["lz4"]
    start, size = fatbin_section(path)
    region = path.read_bytes()[start : start + size]
    containers = split_containers(region)
    padded = b"\0" * 8 + (b"\0" * 24).join(containers) + b"\0" * 40
    expected = read_fatbins(region, 0, len(region))
    assert len(expected) == len(containers)
    assert read_fatbins(padded, 0, len(padded)) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("offset", "patch", "message"),
    [
        (0, b"JUNK", "no fatbin header at file offset {at:#x} in .nv_fatbin"),
        (4, struct.pack("<H", 2), "at file offset {at:#x} has version 2"),
        (8, struct.pack("<Q", 1 << 40), "at file offset {at:#x} runs past its section"),
        (16 + 4, struct.pack("<I", 8), "corrupt fatbin entry header at file offset {at:#x}"),
    ],
)
def test_corrupt_fatbin_is_a_wheel_error(
    built: dict[str, Path], tmp_path: Path, offset: int, patch: bytes, message: str
) -> None:
    source = built["mixed"]
    start, _ = fatbin_section(source)
    data = bytearray(source.read_bytes())
    data[start + offset : start + offset + len(patch)] = patch
    broken = tmp_path / "_broken.so"
    broken.write_bytes(bytes(data))
    with pytest.raises(WheelError) as raised:
        scan_wheel(broken)
    assert raised.value.message.startswith(f"{broken}: ")
    container_or_entry = start if offset < 16 else start + 16
    assert message.format(at=container_or_entry) in raised.value.message


def test_truncated_elf_is_a_wheel_error(tmp_path: Path) -> None:
    truncated = tmp_path / "libcut.so"
    # a valid ELF64 header whose 30 section headers would lie past the end of the file
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, 4096, 0, 64, 56, 0, 64, 30, 29)
    truncated.write_bytes(ident + header)
    with pytest.raises(WheelError, match=r"libcut\.so: unreadable ELF file"):
        scan_wheel(truncated)


@pytest.mark.slow
def test_scan_wheel_reads_elf_members_only(built: dict[str, Path], tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(built["mixed"], "pkg/_mixed.cpython-311-x86_64-linux-gnu.so")
        archive.write(built["lz4"], "pkg/bin/kernels")  # ELF without a .so name
        archive.write(built["host"], "pkg.libs/libhost-1a2b3c.so.1", zipfile.ZIP_STORED)
        archive.writestr("pkg/__init__.py", "")
        archive.writestr("pkg/data.so", "not an ELF file despite the name")
        archive.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
    reports = scan_wheel(wheel)
    assert [r.path_in_wheel for r in reports] == [
        "pkg.libs/libhost-1a2b3c.so.1",
        "pkg/_mixed.cpython-311-x86_64-linux-gnu.so",
        "pkg/bin/kernels",
    ]
    assert reports[0].code == Counter()
    assert reports[1].code == Counter(scan_path(built["mixed"]))
    assert set(reports[2].code) == LIBRARIES["lz4"][1]
    assert sum(reports[1].fatbins.values()) >= 1

    result = audit(reports, 121)
    assert [lib.verdict.status for lib in result.libraries] == [
        Status.NO_CUDA_CODE,
        Status.NATIVE,
        Status.NATIVE,
    ]
    assert audit(reports, 90).status is Status.WILL_NOT_RUN  # lz4 has nothing for Hopper


@pytest.mark.slow
def test_scan_wheel_accepts_a_bare_library(built: dict[str, Path]) -> None:
    (report,) = scan_wheel(built["zstd"])
    assert report.path_in_wheel == "zstd.so"
    assert set(report.code) == LIBRARIES["zstd"][1]


# Standalone device code: what nvcc writes for cuModuleLoad (cubins, fatbins, PTX).
DEVICE_FILES = {
    "k_sm121a.cubin": (["-cubin", "-arch=sm_121a"], CudaCode("sass", 121, "a")),
    "k_sm120f.cubin": (["-cubin", "-arch=sm_120f"], CudaCode("sass", 120, "f")),
    "k_sm90.cubin": (["-cubin", "-arch=sm_90"], CudaCode("sass", 90)),
    "k.ptx": (["-ptx", "-arch=compute_100f"], CudaCode("ptx", 100, "f")),
    "k.fatbin": (["-fatbin", *gencode("compute_120", "[sm_120,compute_120]")], None),
}


@pytest.fixture(scope="session")
def device_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME or PATH)")
    out = tmp_path_factory.mktemp("device")
    source = out / "kernel.cu"
    source.write_text(KERNEL)
    run_all({name: [nvcc, *flags, "-o", str(out / name), str(source)]
             for name, (flags, _) in DEVICE_FILES.items()})  # fmt: skip
    return {name: out / name for name in DEVICE_FILES}


@pytest.mark.slow
def test_standalone_device_code_is_read(device_files: dict[str, Path]) -> None:
    """Cubins (SM from e_flags, variant from ptxas's note), PTX (.target) and fatbin files."""
    for name, (_, expected) in DEVICE_FILES.items():
        (report,) = scan_wheel(device_files[name])
        if expected is None:
            assert {c.name for c in report.code} == {"sm_120", "compute_120"}
            assert report.kind == "fatbin"
        else:
            assert set(report.code) == {expected}, name
            assert report.kind == ("ptx" if name.endswith(".ptx") else "cubin")
        assert report.machine is None


@pytest.mark.slow
def test_standalone_files_are_judged_as_one_body(
    device_files: dict[str, Path], tmp_path: Path
) -> None:
    """A cubin collection runs where some of its files run; the others are a warning."""
    wheel = tmp_path / "kernels-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("k_sm121a.cubin", "k_sm90.cubin", "k.ptx"):
            archive.write(device_files[name], f"kernels/cubins/{name}")
    reports = scan_wheel(wheel)
    assert len(reports) == 3
    spark = audit(reports, 121, machine="aarch64")
    (body,) = spark.libraries
    assert body.role == "device-code" and body.decides
    assert body.path_in_wheel == "kernels/ (2 .cubin, 1 .ptx files)"
    assert spark.status is Status.NATIVE and spark.ok
    assert any("2 of 3 files have nothing for sm_121" in w for w in body.warnings)
    assert audit(reports, 100, machine="aarch64").status is Status.PTX_JIT
    assert audit(reports, 80, machine="aarch64").status is Status.WILL_NOT_RUN


def test_scan_wheel_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(WheelError, match="neither a wheel"):
        scan_wheel(text)
    with pytest.raises(WheelError, match="cannot read it"):
        scan_wheel(tmp_path / "missing.whl")


# --- cross-checks against NVIDIA's cuobjdump (PyPI) -------------------------------------

REAL_WHEEL = "nvidia-nvjpeg-cu12==12.4.0.76"
# machine -> sha256 of its manylinux_2_17 wheel (pinned by content; the reader ignores the host)
REAL_WHEEL_SHA256 = {
    "x86_64": "3888f10b32fbd58e80166c48e01073732d752fa5f167b7cb5b9615f1c6375a20",
    "aarch64": "f52c5ef7cf56e8bffac8903a59f14494017a52e4fe89d5a1d16c1e88d7bbf194",
}


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("name", sorted(LIBRARIES))
def test_matches_cuobjdump_on_nvcc_output(
    built: dict[str, Path], cuobjdump: Path, name: str
) -> None:
    assert as_cuobjdump(scan_path(built[name])) == cuobjdump_listing(cuobjdump, built[name])


@pytest.fixture(scope="session", params=sorted(REAL_WHEEL_SHA256))
def real_wheel(request: pytest.FixtureRequest) -> Path:
    """A small CUDA 12 wheel from PyPI (5 MB, LZ4-compressed cubins for sm_50..sm_121)."""
    machine: str = request.param
    cache = request.config.cache.mkdir("sparkforge-wheels")
    with locked(cache):  # pytest-xdist workers share this cache
        pattern = f"nvidia_nvjpeg_cu12-12.4.0.76-*_{machine}.whl"
        found = sorted(cache.glob(pattern))
        if not found:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    f"--platform=manylinux_2_17_{machine}",
                    "--python-version=3.11",
                    f"--dest={cache}",
                    REAL_WHEEL,
                ],
                check=True,
            )
            found = sorted(cache.glob(pattern))
        assert hashlib.sha256(found[0].read_bytes()).hexdigest() == REAL_WHEEL_SHA256[machine]
        return found[0]


@pytest.mark.network
def test_real_wheel_matches_cuobjdump(real_wheel: Path, cuobjdump: Path, tmp_path: Path) -> None:
    (report,) = scan_wheel(real_wheel)
    assert report.path_in_wheel == "nvidia/nvjpeg/lib/libnvjpeg.so.12"
    with zipfile.ZipFile(real_wheel) as archive:
        library = Path(archive.extract(report.path_in_wheel, tmp_path))
    assert as_cuobjdump(dict(report.code)) == cuobjdump_listing(cuobjdump, library)
    assert any(c.compressed for c in report.code)

    for target in (121, 90):
        result = audit([report], target)
        assert result.status is Status.NATIVE
        assert result.libraries[0].fatbins_without_target_code == 0


# More shapes of real CUDA code from PyPI, each pinned by sha256:
# bitsandbytes ships one library per CUDA version: uncompressed fatbins up to CUDA 12.8
# and Zstd-compressed ones for 13.x, SASS only; curand ships SASS and PTX, compressed.
# nvidia-cufft is here because its kernels are not in .nv_fatbin at all: the reader and
# cuobjdump must both say "no device code".
SHAPES = {
    "bitsandbytes==0.50.2": (
        "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl",
        "55348a9a4a21bfd99cf8c7b32fe67b4030ae5c2a05738e03c1747f65fa6ec283",
    ),
    "nvidia-curand==10.4.5.25": (
        "nvidia_curand-10.4.5.25-py3-none-manylinux_2_27_x86_64.whl",
        "22bb226a857e5888fe6b54ae465fc4371296bcff13a35f79e19691bcf454f529",
    ),
}


@pytest.fixture(scope="session", params=sorted(SHAPES))
def shaped_wheel(request: pytest.FixtureRequest) -> Path:
    filename, sha256 = SHAPES[request.param]
    cache = request.config.cache.mkdir("sparkforge-wheels")
    with locked(cache):  # pytest-xdist workers share this cache
        wheel = cache / filename
        if not wheel.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--platform=manylinux_2_28_x86_64", "--platform=manylinux_2_27_x86_64",
                 "--platform=manylinux_2_24_x86_64", "--python-version=3.12", f"--dest={cache}",
                 request.param],
                check=True,
            )  # fmt: skip
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha256
        return wheel


@pytest.mark.network
def test_other_real_wheels_match_cuobjdump(
    shaped_wheel: Path, cuobjdump: Path, tmp_path: Path
) -> None:
    reports = [report for report in scan_wheel(shaped_wheel) if report.code]
    assert reports
    with zipfile.ZipFile(shaped_wheel) as archive:
        for report in reports:
            library = Path(archive.extract(report.path_in_wheel, tmp_path))
            if library.name == "libbitsandbytes_cuda121.so":
                # cuobjdump 13.5 lists its first cubin, then stops with "Invalid ELF"; the
                # reader walks only headers and finds the same archs as the CUDA 12.4 build.
                with pytest.raises(subprocess.CalledProcessError):
                    cuobjdump_listing(cuobjdump, library)
                twin = next(r for r in reports if r.path_in_wheel.endswith("_cuda124.so"))
                assert as_cuobjdump(dict(report.code)) == as_cuobjdump(dict(twin.code))
                continue
            listed = cuobjdump_listing(cuobjdump, library)
            assert as_cuobjdump(dict(report.code)) == listed, report.path_in_wheel
    shapes = {(c.kind, c.compressed) for report in reports for c in report.code}
    if "bitsandbytes" in shaped_wheel.name:
        assert shapes == {("sass", False), ("sass", True)}
        cuda130 = next(r for r in reports if r.path_in_wheel.endswith("_cuda130.so"))
        assert audit([cuda130], 121).libraries[0].verdict.runs == CudaCode("sass", 120, "", True)
    else:
        assert ("ptx", True) in shapes and ("sass", True) in shapes
