"""Read which CUDA device code a wheel's ELF libraries carry, without a CUDA toolkit.

nvcc stores device code in the ELF section ``.nv_fatbin`` as a run of fatbin
containers. Each container is a 16-byte header followed by entries; each entry
has its own header saying what it is (SASS for one SM, or PTX for one virtual
arch), whether it is compressed, and how long its payload is. We walk those
headers by seeking from one to the next and never read a payload, so a 500 MB
``libtorch_cuda.so`` costs a few thousand small reads.

Layouts below were measured on nvcc 13.0 output and on a CUDA 12 wheel from
PyPI, and cross-checked with ``cuobjdump --list-elf --list-ptx``:

container header (16 bytes, little-endian)::

    0x00 u32 magic 0xBA55ED50   0x04 u16 version (1)   0x06 u16 header size (16)
    0x08 u64 size of the entries that follow

entry header (0x40 bytes or more; only the first 0x30 are read)::

    0x00 u16 kind (1 = PTX, 2 = ELF cubin, 8 = LTO IR)   0x04 u32 header size
    0x08 u64 payload size (padded; next entry = this + header size + payload size)
    0x10 u32 compressed size   0x18 u16,u16 PTX ISA minor, major   0x1C u32 SM (121)
    0x28 u64 flags: 0x2000 LZ4, 0x8000 Zstd, 0x100000 arch-specific ``a``,
                    0x200000 family ``f``

The runtime never loads ``__nv_relfatbin`` (pre-device-link objects kept for
later linking), so only ``.nv_fatbin`` counts, as in cuobjdump's default. The
section is walked rather than following the host-side ``.nvFatBinSegment``
wrappers because not every container has one (libnvjpeg: 11 containers, 10
wrappers, all pointing into ``.nv_fatbin``).
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sparkforge.errors import WheelError

Kind = Literal["sass", "ptx"]
Variant = Literal["", "a", "f"]

ELF_MAGIC = b"\x7fELF"
FATBIN_SECTION = ".nv_fatbin"

_CONTAINER = struct.Struct("<IHHQ")
_CONTAINER_MAGIC = 0xBA55ED50
_CONTAINER_VERSION = 1
# kind, header size, payload size, SM, flags (the skipped bytes are not needed)
_ENTRY = struct.Struct("<H2xIQ12xI8xQ")
_ENTRY_KINDS: dict[int, Kind] = {1: "ptx", 2: "sass"}
_FLAG_COMPRESSED = 0x2000 | 0x8000
_FLAG_ARCH_SPECIFIC = 0x100000
_FLAG_FAMILY = 0x200000
_SPOOL_CHUNK = 1 << 20


@dataclass(frozen=True, order=True)
class CudaCode:
    """One kind of device code: SASS for a real SM or PTX for a virtual arch."""

    kind: Kind
    sm: int
    variant: Variant = ""
    compressed: bool = False

    @property
    def name(self) -> str:
        """The name nvcc uses for it: ``sm_121a`` for SASS, ``compute_120`` for PTX."""
        prefix = "sm" if self.kind == "sass" else "compute"
        return f"{prefix}_{self.sm}{self.variant}"


@dataclass(frozen=True)
class LibraryReport:
    """The device code found in one ELF file of a wheel.

    ``fatbins`` keeps each container's set of code (with how many containers
    share it), because one translation unit built for fewer archs than the rest
    leaves its kernels missing on a GPU that the library as a whole supports.
    """

    path_in_wheel: str
    code: Counter[CudaCode]
    fatbins: Counter[frozenset[CudaCode]] = field(default_factory=Counter)


def read_fatbins(fileobj: BinaryIO, start: int, end: int) -> list[Counter[CudaCode]]:
    """Walk the fatbin containers in ``[start, end)`` of ``fileobj``; one Counter each.

    Zero padding between containers is skipped (the magic's first byte is not
    zero, so stripping leading zeros lands on it); anything else that is not a
    container header is an error, because guessing would let an unknown layout
    pass the audit silently. Offsets in errors are file offsets.
    """
    containers: list[Counter[CudaCode]] = []
    offset = start
    while offset < end:
        header = _read_at(fileobj, offset, min(_CONTAINER.size, end - offset))
        padding = len(header) - len(header.lstrip(b"\0"))
        if padding:
            offset += padding
            continue
        if len(header) < _CONTAINER.size or _CONTAINER.unpack(header)[0] != _CONTAINER_MAGIC:
            raise WheelError(f"no fatbin header at file offset {offset:#x} in {FATBIN_SECTION}")
        _, version, header_size, size = _CONTAINER.unpack(header)
        if version != _CONTAINER_VERSION or header_size < _CONTAINER.size:
            raise WheelError(
                f"fatbin container at file offset {offset:#x} has version {version} and header "
                f"size {header_size}; only version 1 with a 16-byte header is understood"
            )
        payload_end = offset + header_size + size
        if payload_end > end:
            raise WheelError(f"fatbin container at file offset {offset:#x} runs past its section")
        containers.append(Counter(_read_entries(fileobj, offset + header_size, payload_end)))
        offset = payload_end
    return containers


def _read_entries(fileobj: BinaryIO, offset: int, end: int) -> Iterator[CudaCode]:
    """Yield the SASS and PTX entries of one container, seeking over payloads.

    Other kinds (LTO IR) cannot be loaded by the driver, so they are skipped.
    """
    while offset + _ENTRY.size <= end:
        kind, header_size, size, sm, flags = _ENTRY.unpack(_read_at(fileobj, offset, _ENTRY.size))
        if kind == 0 and header_size == 0:
            return  # zero padding at the end of the container
        if header_size < _ENTRY.size or offset + header_size + size > end:
            raise WheelError(f"corrupt fatbin entry header at file offset {offset:#x}")
        if kind in _ENTRY_KINDS:
            yield CudaCode(
                kind=_ENTRY_KINDS[kind],
                sm=sm,
                variant=_variant(flags),
                compressed=bool(flags & _FLAG_COMPRESSED),
            )
        offset += header_size + size


def _variant(flags: int) -> Variant:
    """Map the entry flags to nvcc's suffix: ``a`` (this arch only) or ``f`` (family)."""
    if flags & _FLAG_ARCH_SPECIFIC:
        return "a"
    if flags & _FLAG_FAMILY:
        return "f"
    return ""


def _read_at(fileobj: BinaryIO, offset: int, size: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset``; a short read means a truncated file."""
    fileobj.seek(offset)
    data = fileobj.read(size)
    if len(data) != size:
        raise WheelError(f"file ends inside fatbin data at file offset {offset:#x}")
    return data


def scan_fatbins(fileobj: BinaryIO) -> list[Counter[CudaCode]]:
    """Return the code of every fatbin container in an ELF file, or [] if not ELF.

    Containers without SASS or PTX (LTO IR only) are left out: they hold
    nothing the driver could load, so they cannot miss an arch either.
    """
    fileobj.seek(0)
    if fileobj.read(len(ELF_MAGIC)) != ELF_MAGIC:
        return []
    try:
        sections = [
            (section["sh_offset"], section["sh_size"])
            for section in ELFFile(fileobj).iter_sections()
            if section.name == FATBIN_SECTION and section["sh_type"] != "SHT_NOBITS"
        ]
    except (ELFError, struct.error, ValueError) as error:
        raise WheelError(f"unreadable ELF file: {error}") from error
    return [
        container
        for start, size in sections
        for container in read_fatbins(fileobj, start, start + size)
        if container
    ]


def scan_elf(fileobj: BinaryIO) -> dict[CudaCode, int]:
    """Count each kind of device code in an ELF file; empty for non-ELF or host-only files."""
    return dict(_merge(scan_fatbins(fileobj)))


def _merge(containers: list[Counter[CudaCode]]) -> Counter[CudaCode]:
    """Add up the code of all containers of one library."""
    total: Counter[CudaCode] = Counter()
    for container in containers:
        total.update(container)
    return total


def scan_wheel(path: Path) -> list[LibraryReport]:
    """Report the device code of every ELF file in a wheel, or of one bare library.

    Every ELF member counts, whatever its name, since extensions and bundled
    libraries are not always named ``*.so``; other members are skipped.
    """
    try:
        with path.open("rb") as file:
            is_library = file.read(len(ELF_MAGIC)) == ELF_MAGIC
            if is_library:
                return [_report(path.name, file, str(path))]
        if not zipfile.is_zipfile(path):
            raise WheelError(f"{path}: neither a wheel (zip) nor an ELF library")
        with zipfile.ZipFile(path) as wheel:
            members = sorted(wheel.infolist(), key=lambda info: info.filename)
            reports = (_scan_member(wheel, info, path) for info in members if not info.is_dir())
            return [report for report in reports if report is not None]
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise WheelError(f"{path}: cannot read it: {error}") from error


def _scan_member(wheel: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> LibraryReport | None:
    """Scan one wheel member if it is ELF; None otherwise.

    The member is spooled to an anonymous temporary file (deleted on close)
    because seeking backwards in a compressed zip member re-inflates it from
    the start, and reading ELF and fatbin headers seeks back and forth.
    """
    with wheel.open(info) as member:
        head = member.read(len(ELF_MAGIC))
        if head != ELF_MAGIC:
            return None
        with tempfile.TemporaryFile() as spool:
            spool.write(head)
            shutil.copyfileobj(member, spool, _SPOOL_CHUNK)
            return _report(info.filename, spool, f"{path}: {info.filename}")


def _report(name: str, library: BinaryIO, where: str) -> LibraryReport:
    """Scan one library; ``where`` names it (wheel and member) in any error."""
    try:
        containers = scan_fatbins(library)
    except WheelError as error:
        raise WheelError(f"{where}: {error.message}") from error
    fatbins = Counter(frozenset(container) for container in containers)
    return LibraryReport(path_in_wheel=name, code=_merge(containers), fatbins=fatbins)
