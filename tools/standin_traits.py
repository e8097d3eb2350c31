"""What makes the stand-in fail where NVIDIA's CUDA base image fails.

``builder.toml`` lists, with sources, what ``nvidia/cuda:13.0.1-devel-ubuntu24.04``
holds beyond "CUDA at /usr/local/cuda": Ubuntu's ``ubuntu`` account at uid/gid
1000, NVIDIA's apt repository with cuBLAS/NCCL held (``apt-mark hold``) at the
image's versions and newer ones on offer, the ``NV_*``/``CUDA_VERSION``
environment, and an entrypoint that prints a banner before every command. This
module turns those facts into a build context (a Containerfile, small ``.deb``
packages and a flat apt repository) that the container engine layers on the
stand-in's root filesystem.

The packages reproduce names, versions, dependencies, holds and *where files
live* (``nccl.h`` in /usr/include, cuDNN's headers in the multiarch directory
with unversioned links beside them, cuSPARSELt's under ``libcusparseLt/13``),
with version headers that say what the package version says; they carry no
library code. Importing this module has no side effects.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: The base image the stand-in stands in for (a key of builder.toml's [bases]).
BASE = "nvidia/cuda:13.0.1-devel-ubuntu24.04"
BUILDER_FACTS = Path(__file__).resolve().parent.parent / "builder.toml"
# Bump when the code below changes what lands in the image.
TRAITS_VERSION = 2
MULTIARCH = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
REPO_DIR = "/var/lib/sparkforge-standin/nvidia-repo"
INSTALLED_DIR = "/var/lib/sparkforge-standin/installed"
ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"
# A stand-in for NVIDIA's entrypoint: a banner on stdout before every command, as theirs.
ENTRYPOINT_SCRIPT = """\
#!/bin/bash
echo "=========="
echo "== CUDA (sparkforge stand-in for ${NVIDIA_PRODUCT_NAME:-CUDA} ${CUDA_VERSION}) =="
echo "=========="
echo
exec "$@"
"""


def load_facts(path: Path = BUILDER_FACTS) -> dict[str, object]:
    """builder.toml's facts about the base image."""
    with path.open("rb") as handle:
        facts: dict[str, object] = tomllib.load(handle)["bases"][BASE]
    return facts


def facts_digest(facts: dict[str, object]) -> str:
    """Names the traits layer: a change to the facts or to this code rebuilds it."""
    blob = json.dumps([facts, TRAITS_VERSION], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Deb:
    """One package: its control fields and the files and links it installs."""

    name: str
    version: str
    arch: str
    depends: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> text
    links: dict[str, str] = field(default_factory=dict)  # absolute path -> target

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _release(version: str) -> list[int]:
    """``2.27.7-1+cuda13.0`` -> [2, 27, 7]; ``9.13.0.50-1`` -> [9, 13, 0, 50]."""
    return [int(part) for part in version.split("-", 1)[0].split(".") if part.isdigit()]


def _package(name: str, version: str, arch: str) -> Deb:
    """The file layout of each package NVIDIA's repository serves for these libraries."""
    triple = MULTIARCH[arch]
    numbers = _release(version) + [0, 0, 0, 0]
    note = {f"/usr/share/doc/{name}/sparkforge-standin": f"{name} {version}: stand-in, no library code\n"}
    same = f"(= {version})"
    if name in ("libnccl2", "libcublas-13-0", "libcudnn9-cuda-13", "libcusparselt0-cuda-13"):
        if name == "libcusparselt0-cuda-13":
            note[f"/usr/lib/{triple}/libcusparseLt/13/sparkforge-standin"] = "libcusparseLt.so.0 lives here\n"
        return Deb(name, version, arch, files=note)
    if name == "libnccl-dev":
        header = "".join(f"#define NCCL_{k} {v}\n" for k, v in zip(("MAJOR", "MINOR", "PATCH"), numbers, strict=False))
        return Deb(name, version, arch, (f"libnccl2 {same}",), {**note, "/usr/include/nccl.h": header})
    if name == "libcublas-dev-13-0":
        return Deb(name, version, arch, (f"libcublas-13-0 {same}",), note)
    if name == "libcudnn9-headers-cuda-13":
        macros = zip(("MAJOR", "MINOR", "PATCHLEVEL"), numbers, strict=False)
        header = "".join(f"#define CUDNN_{k} {v}\n" for k, v in macros)
        return Deb(name, version, arch, files={**note,
                   f"/usr/include/{triple}/cudnn_version_v9.h": header,
                   f"/usr/include/{triple}/cudnn_v9.h": '#include "cudnn_version.h"\n'},
                   links={f"/usr/include/{triple}/cudnn_version.h": "cudnn_version_v9.h",
                          f"/usr/include/{triple}/cudnn.h": "cudnn_v9.h"})  # fmt: skip
    if name == "libcudnn9-dev-cuda-13":
        return Deb(name, version, arch, (f"libcudnn9-cuda-13 {same}", f"libcudnn9-headers-cuda-13 {same}"), note)
    if name == "libcusparselt0-dev-cuda-13":
        macros = zip(("MAJOR", "MINOR", "PATCH", "BUILD"), numbers, strict=False)
        header = "".join(f"#define CUSPARSELT_VER_{k} {v}\n" for k, v in macros)
        return Deb(name, version, arch, (f"libcusparselt0-cuda-13 {same}",),
                   {**note, "/usr/include/libcusparseLt/13/cusparseLt.h": header})  # fmt: skip
    raise ValueError(f"builder.toml names package {name!r}, which the stand-in does not know")


def packages(facts: dict[str, object], arch: str) -> tuple[list[Deb], list[Deb]]:
    """(installed and held, every version the repository offers) for ``arch``."""
    held: dict[str, str] = dict(facts.get("held", {}))  # type: ignore[call-overload]
    offered: dict[str, list[str]] = dict(facts.get("repository", {}))  # type: ignore[call-overload]
    installed = [_package(name, version, arch) for name, version in held.items()]
    repository = [
        _package(name, version, arch)
        for name, versions in offered.items()
        for version in sorted(set(versions) | ({held[name]} if name in held else set()))
    ]
    return installed, repository


def build_deb(deb: Deb, dest: Path, run: Callable[[list[str]], None]) -> Path:
    """``dpkg-deb --build`` one package into ``dest``."""
    root = dest / f".{deb.filename}.tree"
    (root / "DEBIAN").mkdir(parents=True)
    control = [f"Package: {deb.name}", f"Version: {deb.version}", f"Architecture: {deb.arch}",
               "Maintainer: sparkforge stand-in <noreply@localhost>", "Section: libs",
               "Priority: optional", f"Description: stand-in for NVIDIA's {deb.name}"]  # fmt: skip
    if deb.depends:
        control.insert(3, f"Depends: {', '.join(deb.depends)}")
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    for path, text in deb.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for path, link in deb.links.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(link)
    out = dest / deb.filename
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)])
    subprocess.run(["rm", "-rf", str(root)], check=True)
    return out


def packages_index(debs: list[tuple[Deb, Path]]) -> str:
    """A flat repository's ``Packages`` file (what ``deb [trusted=yes] file:DIR ./`` reads)."""
    stanzas = []
    for deb, path in debs:
        data = path.read_bytes()
        lines = [f"Package: {deb.name}", f"Version: {deb.version}", f"Architecture: {deb.arch}"]
        if deb.depends:
            lines.append(f"Depends: {', '.join(deb.depends)}")
        lines += [f"Filename: ./{path.name}", f"Size: {len(data)}",
                  f"SHA256: {hashlib.sha256(data).hexdigest()}",
                  f"Description: stand-in for NVIDIA's {deb.name}"]  # fmt: skip
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + "\n"


def write_context(context: Path, base_ref: str, facts: dict[str, object], arch: str,
                  run: Callable[[list[str]], None]) -> Path:  # fmt: skip
    """The build context that layers the facts on ``base_ref``; returns its Containerfile."""
    installed, repository = packages(facts, arch)
    # Everything the layer adds, laid out as it lands: one COPY (each instruction is a full
    # copy of the root filesystem on a vfs-backed docker without BuildKit).
    root = context / "root"
    staged = root / INSTALLED_DIR.lstrip("/")
    repo = root / REPO_DIR.lstrip("/")
    staged.mkdir(parents=True)
    repo.mkdir(parents=True)
    for deb in installed:
        build_deb(deb, staged, run)
    built = [(deb, build_deb(deb, repo, run)) for deb in repository]
    (repo / "Packages").write_text(packages_index(built))
    entrypoint = root / ENTRYPOINT.lstrip("/")
    entrypoint.parent.mkdir(parents=True)
    entrypoint.write_text(ENTRYPOINT_SCRIPT)
    entrypoint.chmod(0o755)
    # COPY root/ / may give / the mode of root/ (BuildKit does): every directory 0755, as
    # in the base, whatever the umask or the scratch directory's mode.
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    users: dict[str, int] = dict(facts.get("user", {}))  # type: ignore[call-overload]
    env = {**dict(facts.get("env", {})), **dict(dict(facts.get("arch_env", {})).get(arch, {}))}  # type: ignore[call-overload]
    held = " ".join(dict(facts.get("held", {})))  # type: ignore[call-overload]
    accounts = " && ".join(
        f"groupadd --gid {uid} {name} && useradd --uid {uid} --gid {uid} --create-home --shell /bin/bash {name}"
        for name, uid in users.items()
    )
    lines = [
        f"FROM {base_ref}",
        "COPY root/ /",
        # NVIDIA's repository is configured in /etc/apt/sources.list.d/cuda.list; here it is a
        # local copy, so apt behaves the same offline.
        f"RUN {accounts} \\\n && dpkg -i {INSTALLED_DIR}/*.deb && rm -rf {INSTALLED_DIR}"
        f" \\\n && apt-mark hold {held}"
        f" \\\n && echo 'deb [trusted=yes] file:{REPO_DIR} ./' > /etc/apt/sources.list.d/cuda.list",
        "ENV " + " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in env.items()),
        f'ENTRYPOINT ["{ENTRYPOINT}"]',
        'CMD ["/bin/bash"]',
        f"LABEL org.sparkforge.standin.traits={facts_digest(facts)}",
    ]
    containerfile = context / "Containerfile"
    containerfile.write_text("\n".join(lines) + "\n")
    return containerfile
