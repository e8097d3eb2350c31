"""Content hashes: sparkforge pins by sha256; sha1 only where an upstream manifest
gives nothing else (onnxruntime's cmake/deps.txt)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    return _file_digest(path, hashlib.sha256())


def sha1_file(path: Path) -> str:
    """Hex sha1 of a file (to check an upstream manifest's pin, never to make one)."""
    return _file_digest(path, hashlib.sha1(usedforsecurity=False))


def _file_digest(path: Path, digest: hashlib._Hash) -> str:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: A full git commit id (or sha1 digest): 40 lower-case hex digits.
SHA1_HEX = re.compile(r"^[0-9a-f]{40}$")
