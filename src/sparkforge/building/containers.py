"""Container engines (docker, podman) and the builder image.

Everything engine-specific is data: the flags a host needs (podman with runc and
lowered ulimits on nested hosts, GPU flags per engine) come from an engine
settings file, never from special cases in code. The builder image is built
from ``Dockerfile.builder`` and tagged by the hash of what went into it, so it
is reused until the Dockerfile, the base image or a build argument changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from sparkforge.util.errors import ConfigError, SparkforgeError, telling_line
from sparkforge.util.models import StrictModel, load_model

ENGINES = ("docker", "podman")
ENGINES_ENV = "SPARKFORGE_ENGINES"


class ContainerError(SparkforgeError):
    """The container engine is missing, unusable, or failed to build the image."""


class EngineSettings(StrictModel):
    global_args: list[str] = Field(default_factory=list)
    run_args: list[str] = Field(default_factory=list)
    build_args: list[str] = Field(default_factory=list)
    gpu_args: list[str] = Field(default_factory=list)


class EnginesFile(StrictModel):
    docker: EngineSettings = EngineSettings(gpu_args=["--gpus", "all"])
    podman: EngineSettings = EngineSettings(gpu_args=["--device", "nvidia.com/gpu=all"])


def load_engine_settings(project: Path, override: Path | None = None) -> EnginesFile:
    """``--engines FILE``, else ``$SPARKFORGE_ENGINES``, else ``<project>/engines.toml``."""
    env = os.environ.get(ENGINES_ENV)
    path = override or (Path(env) if env else project / "engines.toml")
    if not path.is_file():
        if override or env:
            raise ConfigError(f"{path}: engine settings file not found")
        return EnginesFile()
    return load_model(EnginesFile, path, what="engine settings")


@dataclass(frozen=True)
class Engine:
    name: str  # "docker" or "podman"
    path: str
    settings: EngineSettings

    def argv(self, *args: str) -> list[str]:
        return [self.path, *self.settings.global_args, *args]

    def output(self, *args: str, timeout: float = 120) -> str:
        """stdout of an engine command; a failure is a ContainerError with its last line."""
        try:
            done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(
                f"`{self.name} {args[0]}` did not answer in {timeout:.0f} s"
            ) from None
        if done.returncode != 0:
            raise ContainerError(
                f"`{self.name} {' '.join(args[:2])}` failed: {_last_line(done.stderr)}"
            )
        return done.stdout

    def version(self) -> str:
        return self.output("version", "--format", "{{.Client.Version}}").strip()


def _last_line(text: str) -> str:
    return telling_line(text.splitlines()).rstrip(".")


def find_engine(choice: str | None, settings: EnginesFile, *, required: bool = True) -> Engine:
    """The engine to use: ``--engine`` if given, else docker, else podman (on PATH).

    With ``required=False`` (dry runs) a missing engine is named but not looked up."""
    if choice is not None and choice not in ENGINES:
        raise ConfigError(f"--engine: '{choice}' is not one of {', '.join(ENGINES)}")
    for name in [choice] if choice else ENGINES:
        assert name is not None
        path = shutil.which(name)
        if path:
            return Engine(name, path, getattr(settings, name))
    if not required:
        name = choice or ENGINES[0]
        return Engine(name, name, getattr(settings, name))
    wanted = choice or "docker or podman"
    raise ContainerError(
        f"no container engine found ({wanted} is not on PATH): install one (on a DGX Spark: "
        "docker with the NVIDIA Container Toolkit) or build with --runner host"
    )


def check_usable(engine: Engine, image: str, platform: str) -> None:
    """Start a trivial container: catches daemons that are down and hosts where the
    runtime cannot start containers (cgroup or ulimit errors)."""
    argv = engine.argv("run", "--rm", *engine.settings.run_args, "--platform", platform,
                       "--network", "none", image, "true")  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ContainerError(
            f"{engine.name} cannot start a container here: {_last_line(done.stderr)}. If this host "
            f"needs other runtime flags (e.g. podman --runtime runc and lower ulimits in nested "
            f"containers), set them in engines.toml or ${ENGINES_ENV} (see ci/engines.toml)"
        )


@dataclass(frozen=True)
class BuilderImage:
    tag: str
    image_id: str
    base_image: str
    base_digest: str
    platform: str


@dataclass
class ImageSpec:
    dockerfile: Path
    base_image: str
    platform: str  # linux/arm64, linux/amd64
    build_args: dict[str, str] = field(default_factory=dict)
    tools: Path | None = None  # builder-tools.txt: hashed requirements staged into the context
    tools_wheels: Path | None = None  # where those wheels were staged for this platform

    def tag(self) -> str:
        tools = hashlib.sha256(self.tools.read_bytes()).hexdigest() if self.tools else ""
        blob = json.dumps({
            "dockerfile": hashlib.sha256(self.dockerfile.read_bytes()).hexdigest(),
            "base": self.base_image, "platform": self.platform, "args": self.build_args,
            "tools": tools,
        }, sort_keys=True)  # fmt: skip
        return f"{BUILDER_REPOSITORY}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


BUILDER_REPOSITORY = "localhost/sparkforge-builder"


@dataclass(frozen=True)
class StoredImage:
    """A builder image the engine holds: its tag, id, size and creation time."""

    ref: str
    image_id: str
    size: int
    created: float  # seconds since the epoch


def builder_images(engine: Engine) -> list[StoredImage]:
    """The builder images sparkforge made (``localhost/sparkforge-builder:*``)."""
    listed = engine.output("image", "ls", "--filter", f"reference={BUILDER_REPOSITORY}",
                           "--format", "{{.Repository}}:{{.Tag}}")  # fmt: skip
    images = []
    for ref in sorted(set(listed.split())):
        if not ref.startswith(f"{BUILDER_REPOSITORY}:"):
            continue
        fields = engine.output("image", "inspect", "--format", "{{.Id}}|{{.Size}}|{{.Created}}",
                               ref).strip().split("|")  # fmt: skip
        if len(fields) != 3 or not fields[1].isdigit():
            raise ContainerError(f"`{engine.name} image inspect {ref}` answered {fields!r}")
        images.append(StoredImage(ref, fields[0], int(fields[1]), _created(fields[2])))
    return images


def _created(text: str) -> float:
    """docker's ``2026-11-30T17:00:00.1Z`` and podman's ``2026-11-30 17:00:00.1 +0100 CET``
    (its offset: local time)."""
    stamp = text.strip().replace("T", " ")[:19]
    offset = re.search(r" ([+-])(\d{2})(\d{2})\b", text)
    try:
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ContainerError(f"cannot read an image's creation time {text!r}") from None
    if offset:
        sign = 1 if offset[1] == "+" else -1
        when -= sign * (int(offset[2]) * 3600 + int(offset[3]) * 60)
    return when


def running_builds(engine: Engine) -> list[str]:
    """Ids of the build containers sparkforge runs now (named ``sparkforge-…``)."""
    return engine.output("ps", "--quiet", "--filter", "name=sparkforge-").split()


def remove_image(engine: Engine, ref: str) -> None:
    engine.output("image", "rm", ref)


def image_id(engine: Engine, ref: str) -> str | None:
    done = subprocess.run(engine.argv("image", "inspect", "--format", "{{.Id}}", ref),
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def base_digest(engine: Engine, ref: str) -> str:
    """What pins a base image: its registry digest, or the image id of a local-only image."""
    out = engine.output("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    digests = [d for d in json.loads(out or "null") or [] if "@sha256:" in d]
    if digests:
        return str(digests[0].split("@", 1)[1])
    found = image_id(engine, ref)
    if not found:
        raise ContainerError(
            f"base image {ref} is not available to {engine.name}; pull or build it first"
        )
    return found if found.startswith("sha256:") else f"sha256:{found}"


def ensure_image(
    engine: Engine,
    spec: ImageSpec,
    *,
    locked_digest: str | None,
    allow_unpinned: bool,
    sink: Callable[[str], None],
) -> BuilderImage:
    """The builder image for ``spec``: reused when its tag exists, else built.

    The base image must be pinned in lock.toml (``[builder]``) unless
    ``allow_unpinned``; a base that differs from its pin is refused.
    """
    if locked_digest is None and not allow_unpinned:
        raise ContainerError(
            f"builder base image {spec.base_image} is not pinned in lock.toml; run "
            f"`nox -s lock -- --builder --base-image {spec.base_image}` (pulls it if needed and "
            "adds its digest to lock.toml's [builder] table, nothing else), or pass "
            "--allow-unpinned-base (recorded in provenance)"
        )
    if image_id(engine, spec.base_image) is None:
        sink(f"[sparkforge] pulling {spec.base_image}")
        engine.output("pull", "--platform", spec.platform, spec.base_image, timeout=3600)
    digest = base_digest(engine, spec.base_image)
    if locked_digest is not None and digest != locked_digest:
        raise ContainerError(
            f"builder base image {spec.base_image} is {digest[:19]}…, lock.toml pins "
            f"{locked_digest[:19]}…; pull the pinned image or re-lock with `nox -s lock -- --builder`"
        )
    tag = spec.tag()
    if image_id(engine, tag) is None:
        _build_image(engine, spec, tag, sink)
    built = image_id(engine, tag)
    if built is None:
        raise ContainerError(f"{engine.name} reported success but image {tag} does not exist")
    return BuilderImage(tag, built, spec.base_image, digest, spec.platform)


def _build_image(engine: Engine, spec: ImageSpec, tag: str, sink: Callable[[str], None]) -> None:
    args: list[str] = []
    for key, value in {"BASE_IMAGE": spec.base_image, **spec.build_args}.items():
        args += ["--build-arg", f"{key}={value}"]
    with tempfile.TemporaryDirectory(prefix="sparkforge-image-") as context:
        staged = Path(context) / "tools-wheels"
        if spec.tools_wheels is not None and spec.tools is not None:
            shutil.copytree(spec.tools_wheels, staged)
            shutil.copy2(spec.tools, staged / "requirements.txt")
        else:
            staged.mkdir()
        argv = engine.argv("build", *engine.settings.build_args, "--platform", spec.platform,
                           "-f", str(spec.dockerfile), "-t", tag, *args, context)  # fmt: skip
        sink(f"[sparkforge] $ {' '.join(argv)}")
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", stdin=subprocess.DEVNULL)  # fmt: skip
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            sink(line.rstrip("\n"))
            tail = [*tail[-20:], line.strip()]
        if process.wait() != 0:
            reason = next(
                (t for t in reversed(tail) if "error" in t.lower()), _last_line("\n".join(tail))
            )
            raise ContainerError(
                f"building the builder image {tag} from {spec.dockerfile.name} failed: {reason}"
            )


def run_argv(
    engine: Engine,
    image: BuilderImage,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    mounts: Sequence[Path],
    gpus: bool,
    network: bool,
    name: str,
) -> list[str]:
    """The engine command line that runs ``argv`` in the builder image, as container
    ``name`` (so that stopping the build can remove it, see :func:`remove_container`)."""
    options = ["run", "--rm", "--name", name, *engine.settings.run_args, "--platform",
               image.platform, "--user", f"{os.getuid()}:{os.getgid()}", "--workdir", str(cwd)]  # fmt: skip
    if not network:
        options += ["--network", "none"]
    if gpus:
        options += engine.settings.gpu_args
    for path in dict.fromkeys(mounts):
        options += ["--volume", f"{path}:{path}"]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    return engine.argv(*options, image.tag, *argv)


def container_name() -> str:
    """A name for one build command's container, unique on this host."""
    return f"sparkforge-{uuid.uuid4().hex[:16]}"


def remove_container(engine: Engine, name: str) -> None:
    """Stop and remove container ``name`` with everything running in it (``rm -f``).

    Stopping the engine client is not enough: the container, and the compilers in it,
    would go on. A container already gone is fine."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(engine.argv("rm", "--force", name), capture_output=True, timeout=60)


CDI_SPECS = (Path("/etc/cdi/nvidia.yaml"), Path("/var/run/cdi/nvidia.yaml"))


def check_gpu_runtime(engine: Engine) -> None:
    """GPUs reach containers only through the NVIDIA Container Toolkit: docker's
    ``nvidia`` runtime, or a CDI spec for podman. Say so before a smoke run."""
    fix = ("install the NVIDIA Container Toolkit (and for podman run `nvidia-ctk cdi generate "
           "--output=/etc/cdi/nvidia.yaml`), or run the smoke test with --runner host")  # fmt: skip
    if engine.name == "podman":
        if not any(path.is_file() for path in CDI_SPECS):
            raise ContainerError(
                f"podman has no NVIDIA CDI spec ({CDI_SPECS[0]}), so no GPU for the smoke test: {fix}"
            )
        return
    runtimes = engine.output("info", "--format", "{{json .Runtimes}}")
    if "nvidia" not in runtimes:
        raise ContainerError(f"docker has no nvidia runtime, so no GPU for the smoke test: {fix}")
