"""Read which CUDA device code a wheel carries, without a CUDA toolkit.

Three places hold device code:

- host ELF libraries: nvcc stores it in the section ``.nv_fatbin`` as a run of
  fatbin containers;
- standalone cubins (``.cubin``): an ELF file for the CUDA machine (``EM_CUDA``)
  holding SASS for one SM, loaded at run time by ``cuModuleLoad``;
- standalone ``.fatbin`` files (fatbin containers) and ``.ptx`` text.

A fatbin container is a 16-byte header followed by entries; each entry has its
own header saying what it is (SASS for one SM, or PTX for one virtual arch),
whether it is compressed, and how long its payload is. We walk those headers
and never read a payload, so a 500 MB ``libtorch_cuda.so`` costs a few
thousand small preads.

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

A standalone cubin names its SM in ``e_flags`` (bits 8-15 in the ELF ABI
version 8 that CUDA 13 writes, bits 0-7 before) and its variant only in the
ptxas command line recorded in the note ``.note.nv.tkinfo`` (``-arch sm_121a``);
a cubin without that note is reported as plain SASS.

The runtime never loads ``__nv_relfatbin`` (pre-device-link objects kept for
later linking), so only ``.nv_fatbin`` counts, as in cuobjdump's default. The
section is walked rather than following the host-side ``.nvFatBinSegment``
wrappers because not every container has one (libnvjpeg: 11 containers, 10
wrappers, all pointing into ``.nv_fatbin``).

ELF headers are read here with :mod:`struct` rather than pyelftools: only the
section table is needed, and importing pyelftools alone cost more than a whole
``sparkforge inspect`` of libtorch_cuda.so is allowed to (docs/inspect.md).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple, Protocol

from sparkforge.util.errors import WheelError

if TYPE_CHECKING:
    import zipfile

Kind = Literal["sass", "ptx"]
Variant = Literal["", "a", "f"]
FileKind = Literal["library", "cubin", "fatbin", "ptx"]

ELF_MAGIC = b"\x7fELF"
FATBIN_SECTION = ".nv_fatbin"
TKINFO_SECTION = ".note.nv.tkinfo"
EM_X86_64 = 62
EM_AARCH64 = 183
EM_CUDA = 190
MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}

_CONTAINER = struct.Struct("<IHHQ")
_CONTAINER_MAGIC = 0xBA55ED50
_CONTAINER_MAGIC_BYTES = struct.pack("<I", _CONTAINER_MAGIC)
_CONTAINER_VERSION = 1
# kind, header size, payload size, SM, flags (the skipped bytes are not needed)
_ENTRY = struct.Struct("<H2xIQ12xI8xQ")
_ENTRY_KINDS: dict[int, Kind] = {1: "ptx", 2: "sass"}
_FLAG_COMPRESSED = 0x2000 | 0x8000
_FLAG_ARCH_SPECIFIC = 0x100000
_FLAG_FAMILY = 0x200000
_HEAD = 64  # bytes read from every wheel member to decide what it is
_IN_MEMORY = 16 << 20  # larger members are spooled to a temporary file and mapped
_SPOOL_CHUNK = 1 << 20
_PTX_TARGET = re.compile(rb"^\s*\.target\s+(?:sm|compute)_(\d+)([af]?)\b", re.MULTILINE)
_TK_ARCH = re.compile(rb"-arch[= ]+sm_(\d+)([af]?)\b")
_SHN_XINDEX = 0xFFFF
_SHT_NOBITS = 8


class Buffer(Protocol):
    """What the walkers read from: bytes, a memory map, or a test's recording wrapper."""

    def __getitem__(self, key: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


class CudaCode(NamedTuple):
    """One kind of device code: SASS for a real SM or PTX for a virtual arch.

    A named tuple (hashed and compared in C): a large library has thousands of entries,
    each counted; it orders by kind, then SM, variant and compression."""

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
    """The device code found in one file of a wheel.

    ``fatbins`` keeps each container's set of code (with how many containers
    share it), because one translation unit built for fewer archs than the rest
    leaves its kernels missing on a GPU that the library as a whole supports.
    ``machine`` is the CPU a host library is built for (None for device-only
    files); ``kind`` says whether it is a host library or standalone device code.
    """

    path_in_wheel: str
    code: Counter[CudaCode]
    fatbins: Counter[frozenset[CudaCode]] = field(default_factory=Counter)
    kind: FileKind = "library"
    machine: str | None = None


@dataclass(frozen=True)
class _Section:
    name: str
    kind: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Elf:
    machine: int
    flags: int
    abi_version: int
    sections: tuple[_Section, ...]

    def section(self, name: str) -> _Section | None:
        return next((s for s in self.sections if s.name == name), None)


def _unpack(layout: struct.Struct, data: Buffer, offset: int) -> tuple[int, ...]:
    chunk = data[offset : offset + layout.size]
    if len(chunk) != layout.size:
        raise WheelError(f"unreadable ELF file: it ends inside a header at offset {offset:#x}")
    return layout.unpack(chunk)


def read_elf(data: Buffer) -> _Elf:
    """The ELF header fields and section table the readers need (32/64-bit, either endian)."""
    ident = data[0:16]
    if (
        len(ident) < 16
        or ident[:4] != ELF_MAGIC
        or ident[4] not in (1, 2)
        or ident[5] not in (1, 2)
    ):
        raise WheelError("unreadable ELF file: bad ELF identification bytes")
    endian = "<" if ident[5] == 1 else ">"
    wide = ident[4] == 2
    header = struct.Struct(endian + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"))
    entry = struct.Struct(endian + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"))
    (_, machine, _, _, _, shoff, flags, _, _, _, shentsize, shnum, shstrndx) = _unpack(
        header, data, 16
    )
    if shoff == 0:
        return _Elf(machine, flags, ident[8], ())
    if shentsize < entry.size:
        raise WheelError(f"unreadable ELF file: section header size {shentsize}")
    first = _unpack(entry, data, shoff)
    count = shnum or first[5]  # more than 0xff00 sections: the count is in section 0
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]
    if shoff + count * shentsize > len(data):
        raise WheelError(
            f"unreadable ELF file: {count} section headers at {shoff:#x} run past its end"
        )
    raw = [_unpack(entry, data, shoff + i * shentsize) for i in range(count)]
    if not 0 <= shstrndx < count:
        raise WheelError(f"unreadable ELF file: section name table index {shstrndx}")
    names_at, names_size = raw[shstrndx][4], raw[shstrndx][5]
    names = data[names_at : names_at + names_size]
    sections = []
    for name_offset, kind, _, _, offset, size, *_ in raw:
        end = names.find(b"\0", name_offset)
        name = names[name_offset : end if end >= 0 else None].decode("latin-1")
        sections.append(_Section(name, kind, offset, size))
    return _Elf(machine, flags, ident[8], tuple(sections))


def read_fatbins(data: Buffer, start: int, end: int) -> list[Counter[CudaCode]]:
    """Walk the fatbin containers in ``[start, end)`` of ``data``; one Counter each.

    Zero padding between containers is skipped (the magic's first byte is not
    zero, so stripping leading zeros lands on it); anything else that is not a
    container header is an error, because guessing would let an unknown layout
    pass the audit silently. Offsets in errors are file offsets.
    """
    containers: list[Counter[CudaCode]] = []
    offset = start
    while offset < end:
        header = _read_at(data, offset, min(_CONTAINER.size, end - offset))
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
        containers.append(Counter(_read_entries(data, offset + header_size, payload_end)))
        offset = payload_end
    return containers


def _read_entries(data: Buffer, offset: int, end: int) -> Iterator[CudaCode]:
    """Yield the SASS and PTX entries of one container, skipping over payloads.

    Other kinds (LTO IR) cannot be loaded by the driver, so they are skipped.
    """
    while offset + _ENTRY.size <= end:
        kind, header_size, size, sm, flags = _ENTRY.unpack(_read_at(data, offset, _ENTRY.size))
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


def _read_at(data: Buffer, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset``; a short read means a truncated file."""
    chunk = data[offset : offset + size]
    if len(chunk) != size:
        raise WheelError(f"file ends inside fatbin data at file offset {offset:#x}")
    return chunk


def _fatbins_of(data: Buffer, elf: _Elf) -> list[Counter[CudaCode]]:
    """The non-empty containers of every loaded ``.nv_fatbin`` section.

    Containers without SASS or PTX (LTO IR only) are left out: they hold
    nothing the driver could load, so they cannot miss an arch either.
    """
    return [
        container
        for section in elf.sections
        if section.name == FATBIN_SECTION and section.kind != _SHT_NOBITS
        for container in read_fatbins(data, section.offset, section.offset + section.size)
        if container
    ]


def scan_fatbins(fileobj: BinaryIO) -> list[Counter[CudaCode]]:
    """Return the code of every fatbin container in an ELF file, or [] if not ELF."""
    data = _view(fileobj)
    if data[0:4] != ELF_MAGIC:
        return []
    return _fatbins_of(data, read_elf(data))


def scan_elf(fileobj: BinaryIO) -> dict[CudaCode, int]:
    """Count each kind of device code in an ELF file; empty for non-ELF or host-only files."""
    return dict(_merge(scan_fatbins(fileobj)))


class _FileSlices:
    """Slices of an open file (or of a window of it) read with pread: thread-safe, and the
    pages read are page cache, not this process's memory (a memory map of a 1 GB wheel
    would count them)."""

    def __init__(self, fileobj: BinaryIO, start: int = 0, end: int | None = None) -> None:
        self._fd = fileobj.fileno()
        self._base = start
        self._size = (os.fstat(self._fd).st_size if end is None else end) - start

    def window(self, start: int, end: int) -> _FileSlices:
        """The bytes ``[start, end)`` of this view, as a view of their own."""
        view = object.__new__(_FileSlices)
        view._fd, view._base, view._size = self._fd, self._base + start, end - start
        return view

    def __getitem__(self, key: slice, /) -> bytes:
        start, stop, _ = key.indices(self._size)
        chunks, offset = [], start
        while offset < stop:  # one pread returns at most about 2 GiB on Linux
            chunk = os.pread(self._fd, stop - offset, self._base + offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def __len__(self) -> int:
        return self._size


def _view(fileobj: BinaryIO) -> Buffer:
    """A read-only view of a whole file: pread slices when it has a descriptor, else its
    bytes (the caller keeps the file open while the view is used)."""
    try:
        fileobj.fileno()
    except (OSError, AttributeError):
        fileobj.seek(0)
        return fileobj.read()
    return _FileSlices(fileobj)


def _merge(containers: Sequence[Counter[CudaCode]]) -> Counter[CudaCode]:
    """Add up the code of all containers of one library."""
    total: Counter[CudaCode] = Counter()
    for container in containers:
        total.update(container)
    return total


def scan_wheel(path: Path) -> list[LibraryReport]:
    """Report the device code of every file in a wheel that can hold it, or of one bare file.

    Every ELF member counts, whatever its name, since extensions and bundled
    libraries are not always named ``*.so``; so do fatbin and ``.ptx`` files.
    Other members are skipped after inflating their first bytes. Members are
    read with pread and inflated several at a time (zlib releases the GIL): a
    wheel of 16,000 standalone cubins is mostly inflating.
    """
    import zipfile  # a bare library is read without it (start-up time)

    try:
        with path.open("rb") as file:
            head = file.read(_HEAD)
            if head[:4] == ELF_MAGIC or head[:4] == _CONTAINER_MAGIC_BYTES or _is_ptx(path.name):
                report = _report(path.name, head, _view(file), str(path))
                return [report] if report is not None else []
        if not zipfile.is_zipfile(path):
            raise WheelError(f"{path}: neither a wheel (zip) nor an ELF, fatbin or PTX file")
        with zipfile.ZipFile(path) as wheel, path.open("rb") as file:
            data = _FileSlices(file)
            members = sorted(
                (info for info in wheel.infolist() if not info.is_dir()),
                key=lambda info: info.filename,
            )
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                reports = pool.map(lambda info: _scan_member(wheel, data, info, path), members)
                return [report for report in reports if report is not None]
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise WheelError(f"{path}: cannot read it: {error}") from error


def _is_ptx(name: str) -> bool:
    return name.endswith(".ptx")


def _raw_span(data: Buffer, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the member's stored bytes lie in the wheel (after its local header)."""
    local = _read_at(data, info.header_offset, 30)
    if local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    name_length, extra_length = struct.unpack_from("<HH", local, 26)
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.compress_size > len(data):
        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the archive")
    return start, start + info.compress_size


def _scan_member(
    wheel: zipfile.ZipFile, data: Buffer, info: zipfile.ZipInfo, path: Path
) -> LibraryReport | None:
    """Scan one wheel member if it can hold device code; None otherwise.

    Stored and deflated members (all that wheels use) are read from the map
    directly. A large one is inflated chunk by chunk into an anonymous temporary
    file (deleted on close) and mapped, because the section table of an ELF file
    is at its end; memory stays at a few chunks whatever the member's size.
    """
    import tempfile
    import zipfile

    where = f"{path}: {info.filename}"
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        try:
            with wheel.open(info) as member:  # other methods: zipfile's own reader
                content = member.read()
        except NotImplementedError as error:  # e.g. deflate64: zipfile cannot read it
            raise WheelError(f"{where}: {error}") from None
        return _classify(info.filename, content[:_HEAD], content, where)
    start, end = _raw_span(data, info)
    if method == zipfile.ZIP_STORED:
        head = data[start : start + _HEAD]
        if not _may_hold_code(head, info.filename):
            return None
        view = data.window(start, end) if isinstance(data, _FileSlices) else data[start:end]
        return _report(info.filename, head, view, where)
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start : start + (1 << 16)], _HEAD)
    if not _may_hold_code(head, info.filename):
        return None
    if info.file_size <= _IN_MEMORY:
        return _report(
            info.filename, head, zlib.decompress(data[start:end], -zlib.MAX_WBITS), where
        )
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    with tempfile.TemporaryFile() as spool:
        for offset in range(start, end, _SPOOL_CHUNK):
            pending = data[offset : min(offset + _SPOOL_CHUNK, end)]
            while pending:  # bounded output per call, however well the chunk compresses
                spool.write(inflate.decompress(pending, _SPOOL_CHUNK * 4))
                pending = inflate.unconsumed_tail
        spool.write(inflate.flush())
        spool.flush()
        return _report(info.filename, head, _view(spool), where)


def _may_hold_code(head: bytes, name: str) -> bool:
    return head[:4] in (ELF_MAGIC, _CONTAINER_MAGIC_BYTES) or _is_ptx(name)


def _classify(name: str, head: bytes, content: Buffer, where: str) -> LibraryReport | None:
    return _report(name, head, content, where) if _may_hold_code(head, name) else None


def _report(name: str, head: bytes, data: Buffer, where: str) -> LibraryReport | None:
    """Scan one file; ``where`` names it (wheel and member) in any error."""
    try:
        if head[:4] == ELF_MAGIC:
            elf = read_elf(data)
            if elf.machine == EM_CUDA:
                sass = _cubin_code(data, elf)
                return LibraryReport(name, Counter([sass]), Counter([frozenset([sass])]), "cubin")
            containers = _fatbins_of(data, elf)
            machine = MACHINES.get(elf.machine)  # other machines (AMDGPU, BPF…): not compared
            fatbins = Counter(frozenset(container) for container in containers)
            return LibraryReport(name, _merge(containers), fatbins, "library", machine)
        if head[:4] == _CONTAINER_MAGIC_BYTES:
            containers = [c for c in read_fatbins(data, 0, len(data)) if c]
            fatbins = Counter(frozenset(container) for container in containers)
            return LibraryReport(name, _merge(containers), fatbins, "fatbin")
        code = _ptx_code(data)
        if code is None:
            return None
        return LibraryReport(name, Counter([code]), Counter([frozenset([code])]), "ptx")
    except WheelError as error:
        raise WheelError(f"{where}: {error.message}") from error


def _cubin_code(data: Buffer, elf: _Elf) -> CudaCode:
    """The SASS a standalone cubin holds: SM from ``e_flags``, variant from ptxas's note."""
    sm = (elf.flags >> 8) & 0xFF if elf.abi_version >= 8 else elf.flags & 0xFF
    variant: Variant = ""
    note = elf.section(TKINFO_SECTION)
    if note is not None:
        found = _TK_ARCH.search(data[note.offset : note.offset + note.size])
        if found and int(found[1]) == sm:
            variant = found[2].decode()  # type: ignore[assignment]
    return CudaCode(kind="sass", sm=sm, variant=variant)


def _ptx_code(data: Buffer) -> CudaCode | None:
    """The virtual arch of a PTX file, from its ``.target`` directive (None if it has none)."""
    found = _PTX_TARGET.search(data[0 : 1 << 16])
    if found is None:
        return None
    return CudaCode(kind="ptx", sm=int(found[1]), variant=found[2].decode())  # type: ignore[arg-type]
