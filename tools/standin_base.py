#!/usr/bin/env python3
"""Build a local stand-in for NVIDIA's CUDA 13 devel image.

Why: ``Dockerfile.builder`` starts ``FROM nvidia/cuda:13.0.1-devel-ubuntu24.04``,
but where no container registry is reachable (the dev/CI machine) that image
cannot be pulled. The builder only needs "a Debian-like root filesystem where
apt-get works, with CUDA at /usr/local/cuda", so this module makes one from
sources that *are* reachable: a Debian root filesystem from Debian's archive
(debootstrap) and nvcc, headers and cudart from PyPI's ``nvidia-*`` wheels,
pinned by sha256.

The image is tagged by the hash of its recipe (the constants below), so it is
built once and reused until the recipe changes::

    python tools/standin_base.py --arch arm64     # prints the image reference

or, from Python (after putting tools/ on ``sys.path``)::

    from standin_base import ensure_standin
    image = ensure_standin("amd64")

Importing this module has no side effects; only ``ensure_standin`` (and the
helpers it names) touch the host: they may ``apt-get install`` podman, runc,
debootstrap and qemu, which needs root.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import standin_traits

# --- the recipe: every constant here is hashed into the image tag -------------

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# minbase already has apt, gpgv and the archive keyring. ca-certificates lets
# apt and pip use https later; g++ is the host compiler nvcc needs to compile
# and link anything (the builder installs build-essential anyway, so shipping
# it here costs nothing there and lets the image prove itself on its own).
DEBIAN_PACKAGES = ("ca-certificates", "g++")
# Left out of the cached tree: the host's resolver and name (the engine supplies
# its own) and apt's downloaded .debs and package lists (≈150 MB; the builder
# runs apt-get update first anyway, as with Debian's own images).
DEBIAN_EXCLUDES = (
    "./etc/hostname", "./etc/resolv.conf", "./var/cache/apt/archives/*.deb",
    "./var/cache/apt/*.bin", "./var/lib/apt/lists/*_*",
)  # fmt: skip

CUDA_DIR = "cuda-13.0"  # /usr/local/cuda-13.0, /usr/local/cuda points at it
CUDA_RELEASE = "release 13.0"  # what `nvcc --version` must print
# Bump when the code that lays out CUDA or configures the image changes what
# lands in it, so that images made by the old code are not reused.
LAYOUT_VERSION = 1
# Bump when the code that makes the Debian tarball changes what it holds
# (2: the root directory is 0755, not the scratch directory's 0700).
DEBIAN_TREE_VERSION = 2

IMAGE_NAME = "localhost/sparkforge-standin"
IMAGE_ENV = (
    ("PATH", "/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("CUDA_HOME", "/usr/local/cuda"),
)


@dataclass(frozen=True)
class WheelPin:
    """One PyPI wheel, pinned by version and by the sha256 of each arch's file."""

    name: str
    version: str
    sha256: tuple[tuple[str, str], ...]  # (arch, sha256) pairs

    def sha256_for(self, arch: str) -> str:
        return dict(self.sha256)[arch]

    def filename_prefix(self) -> str:
        """How the wheel's file name starts (PEP 427 escapes '-' in the name)."""
        return f"{self.name.replace('-', '_')}-{self.version}-"


# nvcc V13.0.88 and its companions: the versions this dev machine's own
# /usr/local/cuda was made from. Hashes as published on pypi.org.
WHEELS = (
    WheelPin("nvidia-cuda-nvcc", "13.0.88", (
        ("amd64", "56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"),
        ("arm64", "c7ff28f86a24effdc6c034fa15230c549a273e4771b10a7fec14996f8cf3307f"),
    )),
    WheelPin("nvidia-cuda-crt", "13.0.88", (
        ("amd64", "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"),
        ("arm64", "ee2ea2a97073e02ee62bb27841f437332be2c248e3eac013df07997ada39c003"),
    )),
    WheelPin("nvidia-cuda-runtime", "13.0.96", (
        ("amd64", "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"),
        ("arm64", "ef9bcbe90493a2b9d810e43d249adb3d02e98dd30200d86607d8d02687c43f55"),
    )),
    WheelPin("nvidia-cuda-cccl", "13.0.85", (
        ("amd64", "e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"),
        ("arm64", "6f0203e29fed809ee2b7fe9b1344df66ecab990c37d6a2e0e189b26d6c97ed7c"),
    )),
    WheelPin("nvidia-nvvm", "13.0.88", (
        ("amd64", "c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"),
        ("arm64", "c4376a291d72d22a315d9d2f69bdae8f8cd83a627f75bad395cee49a0fe65dc1"),
    )),
)  # fmt: skip

# --- facts about architectures and this kind of host (not part of the recipe) --

ARCHES = ("amd64", "arm64")
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}  # Debian arch -> uname -m / qemu
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
# nvcc.profile finds headers and libraries under targets/<this>/ (SBSA on arm64).
CUDA_TARGET_DIR = {"amd64": "x86_64-linux", "arm64": "sbsa-linux"}
# pip does not widen --platform to older manylinux tags by itself; these cover
# every tag the pinned wheels carry (nvvm on x86_64 is manylinux2010).
PIP_PLATFORMS = ("manylinux_2_12", "manylinux2010", "manylinux_2_17", "manylinux2014")

# crun fails on some nested cgroup layouts (this dev machine's among them);
# runc works there once the ulimits are below the host's hard limits.
PODMAN_GLOBAL_FLAGS = ("--runtime", "runc")
PODMAN_RUN_FLAGS = ("--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:4096")

# Host tools: the command (or file) that must exist -> the Debian package with it.
ENGINE_TOOLS = {"podman": "podman", "runc": "runc"}
BUILD_TOOLS = {"debootstrap": "debootstrap", DEBIAN_KEYRING: "debian-archive-keyring"}
EMULATION_TOOLS = {"update-binfmts": "binfmt-support"}  # + qemu-<machine>-static
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")

# Must exist after the wheels are laid out: what nvcc runs, includes and links.
CUDA_REQUIRED = (
    "bin/nvcc", "bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink",
    "bin/cudafe++", "bin/bin2c", "bin/crt/link.stub", "nvvm/bin/cicc",
    "nvvm/libdevice/libdevice.10.bc", "include/cuda_runtime.h", "include/crt/host_defines.h",
    "include/cccl/cuda/std/version", "lib/libcudart.so.13", "lib/libcudart_static.a",
    "lib/libcudadevrt.a", "lib/libnvvm.so.4",
)  # fmt: skip
CUDA_SYMLINKS = (  # (link, target) inside /usr/local/cuda-13.0, as NVIDIA lays them out
    ("lib64", "lib"),
    ("lib/libcudart.so", "libcudart.so.13"),
    ("lib/libnvvm.so", "libnvvm.so.4"),
    ("nvvm/lib64", "../lib"),
)

# Compiled and run inside the new image: proves nvcc, cicc, ptxas, the host
# compiler and the cudart link work together for the DGX Spark's sm_121. With
# no GPU driver the launch fails cleanly; running the binary is what counts.
PROBE_CU = """\
#include <cstdio>
#include <cuda_runtime.h>
__global__ void add_one(int *x) { *x += 1; }
int main() {
    add_one<<<1, 1>>>(nullptr);
    std::printf("standin probe ran: %s\\n", cudaGetErrorString(cudaGetLastError()));
    return 0;
}
"""
PROBE_SCRIPT = "cat > /tmp/probe.cu && cd /tmp && nvcc -arch=sm_121 -o probe probe.cu && ./probe"


class StandinError(RuntimeError):
    """A step of the stand-in build failed; the message is one line saying what to do."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; its digest names the image."""

    arch: str
    suite: str = DEBIAN_SUITE
    mirror: str = DEBIAN_MIRROR
    packages: tuple[str, ...] = DEBIAN_PACKAGES
    excludes: tuple[str, ...] = DEBIAN_EXCLUDES
    wheels: tuple[WheelPin, ...] = WHEELS
    layout_version: int = LAYOUT_VERSION
    env: tuple[tuple[str, str], ...] = IMAGE_ENV
    # builder.toml's facts about NVIDIA's base (account, held packages, repository, env).
    traits: str = field(default_factory=lambda: standin_traits.facts_digest(standin_traits.load_facts()))

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise StandinError(f"arch must be one of {', '.join(ARCHES)}, got {self.arch!r}")

    def debian_digest(self) -> str:
        """Names the debootstrap cache: a change to the wheels does not redo Debian."""
        packages, excludes = list(self.packages), list(self.excludes)
        return _digest([self.arch, self.suite, self.mirror, "minbase", packages, excludes,
                        DEBIAN_TREE_VERSION])

    def digest(self) -> str:
        """Names the image: only this arch's wheel hashes count."""
        wheels = [[w.name, w.version, w.sha256_for(self.arch)] for w in self.wheels]
        env = [list(pair) for pair in self.env]
        return _digest(
            [self.debian_digest(), wheels, CUDA_DIR, self.layout_version, env, self.traits]
        )

    def image_ref(self) -> str:
        return f"{IMAGE_NAME}:{self.arch}-{self.digest()[:12]}"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def recipe_hash(arch: str, **overrides: object) -> str:
    """The recipe digest for ``arch``; ``overrides`` replace :class:`Recipe` fields."""
    return Recipe(arch, **overrides).digest()  # type: ignore[arg-type]


def image_ref(arch: str) -> str:
    """The reference the current recipe's image has (whether or not it exists yet)."""
    return Recipe(arch).image_ref()


def host_arch() -> str:
    """This machine's Debian architecture name."""
    for arch, machine in MACHINE.items():
        if platform.machine() == machine:
            return arch
    raise StandinError(f"unsupported host machine {platform.machine()!r}: use x86_64 or aarch64")


def _is_docker(engine: str) -> bool:
    return Path(engine).name == "docker"


def podman_run_argv(
    image: str, arch: str, *command: str, engine: str = "podman", extra: Sequence[str] = ()
) -> list[str]:
    """``<engine> run`` with the flags this kind of host needs, for ``image`` of ``arch``.

    The image's entrypoint (a banner before every command, as NVIDIA's) is kept;
    pass ``--entrypoint=`` in ``extra`` to read a command's output alone."""
    if _is_docker(engine):
        return [engine, "run", "--rm", "--platform", f"linux/{arch}", *extra, image, *command]
    return [
        engine, *PODMAN_GLOBAL_FLAGS, "run", "--rm", "--arch", arch, *PODMAN_RUN_FLAGS,
        *extra, image, *command,
    ]  # fmt: skip


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sparkforge/standin"


# --- running commands ----------------------------------------------------------


class _Steps:
    """Progress lines (one per step, with elapsed seconds) and the command log."""

    def __init__(self, arch: str, log_path: Path, log: Callable[[str], None]) -> None:
        self.arch = arch
        self.log_path = log_path
        self.log = log
        self.start = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, what: str) -> None:
        self.log(f"standin {self.arch} [{time.monotonic() - self.start:6.1f}s] {what}")

    def run(self, argv: Sequence[str], *, what: str, hint: str, stdin: str | None = None) -> str:
        """Run ``argv`` with its output streamed to the log; returns that output.

        Streaming lets a long step (debootstrap) be followed with ``tail -f``;
        a failure is one line naming the command's last words and the log.
        """
        with self.log_path.open("a") as log_file:
            log_file.write(f"\n$ {' '.join(argv)}\n")
            log_file.flush()
            start = log_file.tell()
            try:
                done = subprocess.run(
                    list(argv), input=stdin, stdout=log_file, stderr=subprocess.STDOUT, text=True
                )
            except FileNotFoundError:
                raise StandinError(f"{what}: {argv[0]} not found; {hint}") from None
        with self.log_path.open(errors="replace") as log_file:
            log_file.seek(start)
            output = log_file.read()
        if done.returncode != 0:
            raise StandinError(
                f"{what} failed (exit {done.returncode}): {_last_line(output)}"
                f"; full log: {self.log_path}; {hint}"
            )
        return output


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# --- host preparation ----------------------------------------------------------


def _apt_install(packages: Sequence[str], steps: _Steps) -> None:
    """Install Debian packages on the host; only root can, so say so otherwise."""
    listed = " ".join(packages)
    if os.geteuid() != 0:
        raise StandinError(f"{listed} missing and not root: run `apt-get install {listed}` as root")
    if shutil.which("apt-get") is None:
        raise StandinError(f"{listed} missing and no apt-get here: install them by hand")
    steps.step(f"apt-get install {listed}")
    hint = f"run `apt-get update && apt-get install {listed}` by hand to see why"
    steps.run(["apt-get", "update", "-qq"], what="apt-get update", hint=hint)
    steps.run(
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", *packages],
        what="apt-get install",
        hint=hint,
    )


def _install_missing(tools: dict[str, str], steps: _Steps) -> None:
    """apt-get install the package of each tool (a command or a file path) not here."""
    missing = {
        package: None
        for tool, package in tools.items()
        if not (Path(tool).is_file() if tool.startswith("/") else shutil.which(tool))
    }
    if missing:
        _apt_install(list(missing), steps)


def _ensure_engine(engine: str, steps: _Steps) -> None:
    if _is_docker(engine):
        done = subprocess.run([engine, "info"], capture_output=True, text=True)
        if done.returncode != 0:
            raise StandinError(
                f"docker cannot reach its daemon ({_last_line(done.stderr)}); start dockerd (where "
                "it runs inside a container: dockerd --iptables=false --bridge=none "
                "--storage-driver=vfs) or use podman"
            )
        return
    if Path(engine).name != "podman":
        raise StandinError(f"engine {engine!r}: use podman or docker")
    _install_missing({**ENGINE_TOOLS, engine: "podman"}, steps)


def ensure_tools(engine: str = "podman", log: Callable[[str], None] = print) -> None:
    """Make sure podman, runc, debootstrap and Debian's keyring are here (installs them)."""
    steps = _Steps(host_arch(), default_cache_dir() / "logs/tools.log", log)
    _ensure_engine(engine, steps)
    _install_missing(BUILD_TOOLS, steps)


def _ensure_emulation(arch: str, steps: _Steps) -> None:
    """Let this kernel run ``arch`` binaries through qemu (debootstrap and podman need it).

    The binfmt entry must carry the F flag: the kernel then opens qemu once at
    registration, so it works inside chroots and containers that lack qemu.
    """
    machine = MACHINE[arch]
    qemu = f"qemu-{machine}"
    what = f"emulation of {arch} ({qemu})"
    hint = (
        f"apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc "
        f"{BINFMT_DIR}; update-binfmts --enable {qemu}"
    )
    _install_missing({**EMULATION_TOOLS, f"{qemu}-static": "qemu-user-static"}, steps)
    if not (BINFMT_DIR / "status").exists():
        steps.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], what=what, hint=hint
        )
    entry = BINFMT_DIR / qemu
    if not entry.exists() or "enabled" not in entry.read_text().splitlines()[0]:
        steps.run(["update-binfmts", "--enable", qemu], what=what, hint=hint)
    if not entry.exists():
        raise StandinError(f"{what}: {entry} is missing after update-binfmts; {hint}")
    text = entry.read_text()
    flags = next(
        (line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags:")), ""
    )
    if not text.startswith("enabled") or "F" not in flags:
        raise StandinError(
            f"{what}: {entry} is not enabled with the F flag ({text.splitlines()[0]}, flags:{flags}); "
            "reinstall qemu-user-static (it registers with F)"
        )


# --- step: Debian root filesystem ----------------------------------------------


def _debootstrap(recipe: Recipe, cache_dir: Path, steps: _Steps) -> Path:
    """A tarball of the debootstrapped tree, cached by the Debian part of the recipe.

    Cached as a tarball rather than a tree so that a failure in a later step
    never re-runs debootstrap (minutes when emulated) and the cache needs no cleaning.
    """
    tarball = (
        cache_dir / f"debootstrap-{recipe.arch}-{recipe.suite}-{recipe.debian_digest()[:12]}.tar"
    )
    if tarball.is_file():
        steps.step(f"Debian {recipe.suite} root filesystem: cached {tarball.name}")
        return tarball
    emulated = " (emulated: minutes)" if recipe.arch != host_arch() else ""
    steps.step(
        f"debootstrap {recipe.suite} {recipe.arch} minbase + {','.join(recipe.packages)}{emulated}"
    )
    with _scratch_dir(cache_dir, f"debootstrap-{recipe.arch}-") as tree:
        steps.run(
            [
                "debootstrap", f"--arch={recipe.arch}", "--variant=minbase",
                f"--keyring={DEBIAN_KEYRING}", f"--include={','.join(recipe.packages)}",
                recipe.suite, str(tree), recipe.mirror,
            ],
            what=f"debootstrap {recipe.suite} {recipe.arch}",
            hint=f"check that {recipe.mirror} is reachable and has {recipe.suite} for {recipe.arch}",
        )  # fmt: skip
        # The scratch directory is 0700 and tar records "./" as it is: a root filesystem
        # that only root can enter (an engine imports it as is, and builds run as uid 1000).
        tree.chmod(0o755)
        partial = tarball.with_suffix(".tar.partial")
        excludes = [f"--exclude={pattern}" for pattern in recipe.excludes]
        steps.run(
            ["tar", "--numeric-owner", "--anchored", *excludes, "-C", str(tree), "-cf", str(partial), "."],
            what="tar of the Debian tree",
            hint=f"check free space in {cache_dir}",
        )  # fmt: skip
        partial.replace(tarball)
    return tarball


@contextmanager
def _scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        _remove_tree(path)


def _remove_tree(tree: Path) -> None:
    """Delete a scratch tree, but never through a mount point left inside it.

    debootstrap mounts /proc (and may bind /dev) in the target; after a failed
    run those can stay mounted, and deleting through them would delete the host's.
    """
    for mount in sorted(_mounts_under(tree), reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True)
    left = _mounts_under(tree)
    if left:
        raise StandinError(
            f"{tree} still has mounts ({', '.join(left)}): umount them, then delete it"
        )
    shutil.rmtree(tree, ignore_errors=True)


def _mounts_under(tree: Path) -> list[str]:
    root = str(tree.resolve())
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")  # \040 for a space
        if point == root or point.startswith(root + "/"):
            mounts.append(point)
    return mounts


# --- step: CUDA from PyPI wheels ----------------------------------------------


def _fetch_wheels(recipe: Recipe, cache_dir: Path, steps: _Steps) -> list[Path]:
    """The pinned wheels for the recipe's arch, downloaded once and always verified."""
    dest = cache_dir / "wheels" / recipe.arch
    dest.mkdir(parents=True, exist_ok=True)
    missing = [pin for pin in recipe.wheels if _cached_wheel(pin, recipe.arch, dest) is None]
    if missing:
        steps.step(f"pip download {len(missing)} pinned nvidia-* wheels for {recipe.arch}")
        platforms = [f"--platform={tag}_{MACHINE[recipe.arch]}" for tag in PIP_PLATFORMS]
        steps.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                *platforms, "--dest", str(dest), *(f"{pin.name}=={pin.version}" for pin in missing),
            ],
            what="pip download of the nvidia-* wheels",
            hint="check that PyPI (or your pip index) is reachable and has these versions",
        )  # fmt: skip
    else:
        steps.step(f"nvidia-* wheels for {recipe.arch}: cached in {dest}")
    return [_checked_wheel(pin, recipe.arch, dest) for pin in recipe.wheels]


def _cached_wheel(pin: WheelPin, arch: str, dest: Path) -> Path | None:
    """The cached file of ``pin`` if its sha256 is the pinned one; stale files are deleted."""
    for candidate in sorted(dest.glob(f"{pin.filename_prefix()}*.whl")):
        if _sha256(candidate) == pin.sha256_for(arch):
            return candidate
        candidate.unlink()
    return None


def _checked_wheel(pin: WheelPin, arch: str, dest: Path) -> Path:
    """The downloaded file of ``pin``; any other content is an error, never used."""
    found = sorted(dest.glob(f"{pin.filename_prefix()}*.whl"))
    for candidate in found:
        if _sha256(candidate) == pin.sha256_for(arch):
            return candidate
    got = ", ".join(f"{path.name} (sha256 {_sha256(path)})" for path in found) or "no file"
    raise StandinError(
        f"{pin.name}=={pin.version} for {arch}: pip gave {got}, the pin is sha256 "
        f"{pin.sha256_for(arch)}; if PyPI really changed, update WHEELS in {__file__}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lay_out_cuda(wheels: Sequence[Path], arch: str, root: Path) -> Path:
    """Unpack the wheels' ``nvidia/cu13/`` trees to ``root/usr/local/cuda-13.0``.

    Mirrors a CUDA toolkit: lib64 -> lib, unversioned .so links, nvvm/lib64, and
    targets/<x86_64-linux|sbsa-linux>/{include,lib}, where nvcc.profile looks.
    """
    cuda = root / "usr/local" / CUDA_DIR
    for wheel in wheels:
        _extract_cu13(wheel, cuda)
    for link, target in CUDA_SYMLINKS:
        (cuda / link).symlink_to(target)
    targets = cuda / "targets" / CUDA_TARGET_DIR[arch]
    targets.mkdir(parents=True)
    for name in ("include", "lib"):
        (targets / name).symlink_to(f"../../{name}")
    (root / "usr/local/cuda").symlink_to(CUDA_DIR)
    missing = [name for name in CUDA_REQUIRED if not (cuda / name).exists()]
    if missing:
        raise StandinError(
            f"the nvidia-* wheels lack {', '.join(missing)}: the pinned set is incomplete"
        )
    _check_elf_machine(cuda / "bin/nvcc", arch)
    return cuda


def _extract_cu13(wheel: Path, cuda: Path) -> None:
    """Extract one wheel, keeping exec bits (zipfile drops them, the wheel records them)."""
    prefix = "nvidia/cu13/"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            name = member.filename
            if member.is_dir() or not name.startswith(prefix) or "/.metadata/" in name:
                continue
            relative = Path(name.removeprefix(prefix))
            if ".." in relative.parts or relative.is_absolute():
                raise StandinError(f"{wheel.name}: unsafe member path {name!r}")
            target = cuda / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            target.chmod(0o755 if (member.external_attr >> 16) & 0o111 else 0o644)


def _check_elf_machine(path: Path, arch: str) -> None:
    """Refuse a wrong-arch nvcc.

    An x86 nvcc in an "arm64" image would run natively and pass every later
    check while the image proves nothing about aarch64.
    """
    header = path.read_bytes()[:20]
    machine = int.from_bytes(header[18:20], "little")
    if header[:4] != b"\x7fELF" or machine != ELF_MACHINE[arch]:
        raise StandinError(f"{path} is not an {arch} ELF binary (e_machine {machine})")


def _write_manifest(recipe: Recipe, wheels: Sequence[Path], cuda: Path) -> None:
    """Record in the image which wheels (by sha256) and which recipe made it."""
    manifest = {
        "recipe": recipe.digest(),
        "debian": {
            "suite": recipe.suite,
            "mirror": recipe.mirror,
            "packages": list(recipe.packages),
        },
        "wheels": [{"file": w.name, "sha256": _sha256(w)} for w in wheels],
    }
    (cuda / "sparkforge-standin.json").write_text(json.dumps(manifest, indent=2) + "\n")


# --- step: image ----------------------------------------------------------------


def _assemble(base_tar: Path, stage: Path, out: Path, steps: _Steps) -> None:
    """The root filesystem tarball: Debian's tree plus the CUDA tree appended."""
    shutil.copyfile(base_tar, out)
    steps.run(
        [
            "tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(stage),
            "-rf", str(out), f"./usr/local/{CUDA_DIR}", "./usr/local/cuda",
        ],
        what="tar of the CUDA tree",
        hint=f"check free space in {out.parent}",
    )  # fmt: skip


def _import(engine: str, tarball: Path, ref: str, recipe: Recipe, steps: _Steps) -> None:
    changes = [f"ENV {key}={value}" for key, value in recipe.env]
    changes += [f"LABEL org.sparkforge.standin.recipe={recipe.digest()}", 'CMD ["/bin/bash"]']
    platform = (["--platform", f"linux/{recipe.arch}"] if _is_docker(engine)
                else ["--arch", recipe.arch, "--os", "linux"])  # fmt: skip
    steps.run(
        [
            engine, "import", *platform,
            *(arg for change in changes for arg in ("--change", change)),
            "--message", f"sparkforge stand-in for nvidia/cuda 13.0 devel ({recipe.arch})",
            str(tarball), ref,
        ],
        what=f"{engine} import",
        hint=f"check `{engine} info` and free space in its storage",
    )  # fmt: skip


def _verify(engine: str, ref: str, arch: str, steps: _Steps) -> None:
    """nvcc runs in the image and builds and links an sm_121 executable that runs."""
    shell = podman_run_argv(ref, arch, "bash", engine=engine, extra=["-it"])
    hint = f"look inside with `{' '.join(shell)}`"
    version = steps.run(
        podman_run_argv(ref, arch, "nvcc", "--version", engine=engine, extra=["--network=none"]),
        what="nvcc --version in the new image",
        hint=hint,
    )
    if CUDA_RELEASE not in version:
        raise StandinError(f"nvcc in {ref} does not report {CUDA_RELEASE}: {_last_line(version)}")
    probe = steps.run(
        podman_run_argv(
            ref, arch, "sh", "-c", PROBE_SCRIPT, engine=engine, extra=["-i", "--network=none"]
        ),
        what="compiling, linking and running an sm_121 probe in the new image",
        hint=hint,
        stdin=PROBE_CU,
    )
    if "standin probe ran" not in probe:
        raise StandinError(f"the sm_121 probe in {ref} printed no result: {_last_line(probe)}")
    facts = standin_traits.load_facts()
    traits = steps.run(
        # As uid 1000, as builds run: a root filesystem only root can enter fails here.
        podman_run_argv(ref, arch, "sh", "-c", "getent passwd 1000; apt-mark showhold",
                        engine=engine, extra=["--network=none", "--entrypoint=", "--user=1000:1000"]),
        what="reading the account and held packages of the new image",
        hint=hint,
    )  # fmt: skip
    wanted = [*(f"{name}:x:{uid}:" for name, uid in dict(facts["user"]).items()),  # type: ignore[call-overload]
              *dict(facts["held"])]  # type: ignore[call-overload]
    missing = [item for item in wanted if item not in traits]
    if missing:
        raise StandinError(f"{ref} lacks {missing[0]!r} (from builder.toml): {_last_line(traits)}")


def _image_exists(engine: str, ref: str) -> bool:
    return subprocess.run([engine, "image", "inspect", ref], capture_output=True).returncode == 0


def _untag(engine: str, ref: str, steps: _Steps) -> None:
    argv = [engine, "rmi", ref] if _is_docker(engine) else [engine, "untag", ref, ref]
    steps.run(argv, what=f"{engine} untag {ref}", hint="see the log")


def _traits(engine: str, base: str, ref: str, arch: str, cache_dir: Path, steps: _Steps) -> None:
    """Layer builder.toml's facts about NVIDIA's image on ``base`` (see standin_traits)."""
    facts = standin_traits.load_facts()
    with _scratch_dir(cache_dir, f"traits-{arch}-") as context:

        def run(argv: list[str]) -> None:
            steps.run(argv, what=argv[0], hint="install dpkg (dpkg-deb)")

        containerfile = standin_traits.write_context(context, base, facts, arch, run)
        if _is_docker(engine):
            argv = [engine, "build", "--network", "none", "--platform", f"linux/{arch}"]
        else:
            argv = [engine, *PODMAN_GLOBAL_FLAGS, "build", "--format", "docker", "--network",
                    "none", "--arch", arch, *PODMAN_RUN_FLAGS]  # fmt: skip
        steps.run([*argv, "-t", ref, "-f", str(containerfile), str(context)],
                  what=f"{engine} build of the CUDA image's traits",
                  hint="see the log; the Containerfile is generated by tools/standin_traits.py")  # fmt: skip


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per arch at a time: concurrent test runs share the cache and tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _rootfs(recipe: Recipe, cache_dir: Path, steps: _Steps) -> Path:
    """The assembled root filesystem tarball, cached so that each engine imports the same one."""
    tarball = cache_dir / f"rootfs-{recipe.arch}-{recipe.digest()[:12]}.tar"
    if tarball.is_file():
        steps.step(f"root filesystem: cached {tarball.name}")
        return tarball
    base_tar = _debootstrap(recipe, cache_dir, steps)
    wheels = _fetch_wheels(recipe, cache_dir, steps)
    with _scratch_dir(cache_dir, f"image-{recipe.arch}-") as work:
        steps.step(f"lay out CUDA at /usr/local/{CUDA_DIR} from {len(wheels)} verified wheels")
        cuda = lay_out_cuda(wheels, recipe.arch, work / "stage")
        _write_manifest(recipe, wheels, cuda)
        steps.step("assemble the root filesystem tarball")
        _assemble(base_tar, work / "stage", work / "rootfs.tar", steps)
        (work / "rootfs.tar").replace(tarball)
    # Older recipes' tarballs (hundreds of MB each) are of no further use.
    for stale in cache_dir.glob(f"rootfs-{recipe.arch}-*.tar"):
        if stale != tarball:
            stale.unlink()
    for stale in cache_dir.glob(f"debootstrap-{recipe.arch}-*.tar"):
        if stale != base_tar:
            stale.unlink()
    return tarball


def _build(recipe: Recipe, engine: str, cache_dir: Path, steps: _Steps) -> None:
    ref = recipe.image_ref()
    _install_missing({**BUILD_TOOLS, "dpkg-deb": "dpkg"}, steps)
    tarball = _rootfs(recipe, cache_dir, steps)
    rootfs, unverified = f"{ref}-rootfs", f"{ref}-unverified"
    steps.step(f"{engine} import as {rootfs}")
    _import(engine, tarball, rootfs, recipe, steps)
    steps.step("layer the CUDA image's traits (account, apt repository, held packages, env)")
    _traits(engine, rootfs, unverified, recipe.arch, cache_dir, steps)
    _untag(engine, rootfs, steps)
    steps.step("verify: nvcc --version, an sm_121 probe, uid 1000, the held packages")
    _verify(engine, unverified, recipe.arch, steps)
    steps.run([engine, "tag", unverified, ref], what=f"{engine} tag", hint="see the log")
    _untag(engine, unverified, steps)


def ensure_standin(
    arch: str,
    *,
    engine: str = "podman",
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """The stand-in image for ``arch`` ("amd64" or "arm64"), built if it is not there yet.

    Returns ``localhost/sparkforge-standin:<arch>-<hash12>``; the hash is the
    recipe's, so a changed recipe builds a new image and an unchanged one is
    returned at once. Raises :class:`StandinError` (one line) when a step fails.
    """
    recipe = Recipe(arch)
    ref = recipe.image_ref()
    cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(arch, cache_dir / "logs" / f"{arch}-{recipe.digest()[:12]}.log", log)
    _ensure_engine(engine, steps)
    if arch != host_arch():  # also for a cached image: it is of no use without emulation
        _ensure_emulation(arch, steps)
    if _image_exists(engine, ref):
        return ref
    with _locked(cache_dir / f"{arch}.lock"):
        if _image_exists(engine, ref):  # built by a concurrent caller meanwhile
            return ref
        steps.log_path.write_text(f"sparkforge stand-in {ref}, build started {time.ctime()}\n")
        _build(recipe, engine, cache_dir, steps)
    steps.step(f"ready: {ref}")
    return ref


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", required=True, choices=ARCHES)
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        ref = ensure_standin(
            args.arch,
            engine=args.engine,
            cache_dir=args.cache_dir,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except StandinError as error:
        print(f"standin_base: error: {error}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
