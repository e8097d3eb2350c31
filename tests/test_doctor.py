"""``sparkforge doctor`` against fake executables that print what the real tools print.

Each test builds a ``bin/`` of shell scripts (nvcc, nvidia-smi, docker, ccache,
python3.12) and a fake CUDA toolkit, points PATH and the target's cuda_home at
them, and runs the real checks through real subprocesses. Only what cannot be
faked with files (free disk, MemAvailable, the machine) is passed in through
``Host``. One test looks at this machine as it is.
"""

from __future__ import annotations

import functools
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import CliRunner, copy_project
from sparkforge.config.recipes import load_recipe
from sparkforge.config.targets import load_target
from sparkforge.verify import doctor
from sparkforge.verify.doctor import Check, Context, Host, diagnose, doctor_command

NAMES = [
    "nvcc on PATH",
    "CUDA toolkit",
    "driver",
    "GPU",
    "disk",
    "memory",
    "container engine",
    "ccache",
    "emulation",
    "Python",
]

# `nvcc --version` of CUDA 13.0 (copied from /usr/local/cuda/bin/nvcc) and of
# Ubuntu 24.04's nvidia-cuda-toolkit package (/usr/bin/nvcc).
NVCC_13_0 = """\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""
NVCC_12_0 = """\
nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2023 NVIDIA Corporation
Built on Fri_Jan__6_16:45:21_PST_2023
Cuda compilation tools, release 12.0, V12.0.140
Build cuda_12.0.r12.0/compiler.32267302_0
"""

# Plain `nvidia-smi`, laid out as on the H200 machine (driver 580.159.04).
SMI_HEADER = """\
Sun Nov 22 02:33:43 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver:<22}Driver Version: {driver:<15}CUDA Version: {cuda:<9}|
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  {gpu:<26}On  |   00000000:00:06.0 Off |                    0 |
| N/A   40C    P0            129W /  700W |       0MiB / 143771MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+

+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |
|        ID   ID                                                               Usage      |
|=========================================================================================|
|  No running processes found                                                             |
+-----------------------------------------------------------------------------------------+
"""
SMI_QUERY = "--query-gpu=name,compute_cap --format=csv,noheader"
SMI_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)

DOCKER_INFO = "info --format {{json .Runtimes}}"
RUNTIMES_RUNC = (
    '{"io.containerd.runc.v2":{"path":"runc","status":{"org.opencontainers.runtime-spec.features":"{}"}},'
    '"runc":{"path":"runc"}}\n'
)
RUNTIMES_NVIDIA = (
    '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"},'
    '"runc":{"path":"runc"}}\n'
)
DOCKER_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?\n"
)
CCACHE_VERSION = """\
ccache version 4.9.1
Features: file-storage http-storage redis-storage

Copyright (C) 2002-2007 Andrew Tridgell
Copyright (C) 2009-2024 Joel Rosdahl and other contributors
"""
# /proc/sys/fs/binfmt_misc/qemu-aarch64 as qemu-user-static registers it on Ubuntu 24.04.
BINFMT_AARCH64 = """\
enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POCF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


@dataclass(frozen=True)
class Reply:
    stdout: str = ""
    stderr: str = ""
    code: int = 0


def write_tool(directory: Path, name: str, replies: dict[str, Reply]) -> Path:
    """A shell script that answers each argument string ("$*") with a canned reply."""
    lines = ["#!/bin/sh", f"# fake {name} for sparkforge's doctor tests", 'case "$*" in']
    for args, reply in replies.items():
        lines.append(f"  {shlex.quote(args)})")
        if reply.stdout:
            lines.append(f"    printf '%s' {shlex.quote(reply.stdout)}")
        if reply.stderr:
            lines.append(f"    printf '%s' {shlex.quote(reply.stderr)} >&2")
        lines.append(f"    exit {reply.code} ;;")
    lines += [f'  *) echo "fake {name}: unexpected arguments: $*" >&2; exit 64 ;;', "esac", ""]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    return path


def nvidia_smi(gpu: str, compute_cap: str, driver: str, cuda: str) -> dict[str, Reply]:
    return {
        "": Reply(SMI_HEADER.format(driver=driver, cuda=cuda, gpu=gpu)),
        SMI_QUERY: Reply(f"{gpu}, {compute_cap}\n"),
    }


GB10 = nvidia_smi("NVIDIA GB10", "12.1", "580.95.05", "13.0")
H200 = nvidia_smi("NVIDIA H200", "9.0", "580.159.04", "13.0")


class Machine:
    """A fake host: bin/ on PATH, a CUDA toolkit, binfmt and CDI directories."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.bin = root / "bin"
        self.cuda_home = root / "cuda"
        self.binfmt = root / "binfmt_misc"
        self.cdi = root / "cdi" / "nvidia.yaml"
        self.project = copy_project(root / "project")
        for target in (self.project / "targets").glob("*.toml"):
            text = target.read_text()
            assert 'cuda_home = "/usr/local/cuda"' in text
            target.write_text(
                text.replace('cuda_home = "/usr/local/cuda"', f'cuda_home = "{self.cuda_home}"')
            )
        self.binfmt.mkdir()
        (self.binfmt / "status").write_text("enabled\n")
        monkeypatch.setenv("PATH", str(self.bin))
        monkeypatch.delenv("SPARKFORGE_PYTHON", raising=False)
        monkeypatch.setenv("PYENV_ROOT", str(root / "no-pyenv"))
        # Everything a DGX Spark ready to build has.
        write_tool(self.cuda_home / "bin", "nvcc", {"--version": Reply(NVCC_13_0)})
        self.tool("nvcc", {"--version": Reply(NVCC_13_0)})
        self.tool("nvidia-smi", GB10)
        self.tool("docker", {DOCKER_INFO: Reply(RUNTIMES_NVIDIA)})
        self.tool("ccache", {"--version": Reply(CCACHE_VERSION)})
        self.python = write_tool(self.bin, "python3.12", {})
        self.python.write_text("#!/bin/sh\necho 3.12\n")

    def tool(self, name: str, replies: dict[str, Reply]) -> Path:
        return write_tool(self.bin, name, replies)

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()

    def host(self, **overrides: Any) -> Host:
        fields: dict[str, Any] = {
            "disk_free_gb": lambda path: 500.0,
            "mem_available_gb": lambda: 100.0,
            "jobs": lambda per_job: 8,
            "machine": lambda: "aarch64",
            "binfmt_dir": self.binfmt,
            "cdi_specs": (self.cdi,),
            "timeout_s": 5.0,
        }
        return Host(**(fields | overrides))

    def check(
        self, target: str = "dgx-spark", recipes: tuple[str, ...] = ("sm121-probe",), **host: Any
    ) -> dict[str, Check]:
        context = Context(
            target=load_target(self.project, target),
            recipes=tuple(load_recipe(self.project, r) for r in recipes),
            workspace=self.root / "workspace",
            wheelhouse=self.project / "wheelhouse",
            host=self.host(**host),
        )
        checks = diagnose(context)
        assert [c.name for c in checks] == NAMES
        return {c.name: c for c in checks}

    def patch_host(self, monkeypatch: pytest.MonkeyPatch, **host: Any) -> None:
        """Make the CLI's default Host this fake one."""
        monkeypatch.setattr(doctor, "Host", functools.partial(self.host, **host))


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    return Machine(tmp_path, monkeypatch)


def statuses(checks: dict[str, Check]) -> dict[str, str]:
    return {name: c.status for name, c in checks.items()}


def test_ready_dgx_spark_exits_0(
    machine: Machine, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.patch_host(monkeypatch)
    result = cli("doctor", "--project", machine.project, "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [r["name"] for r in rows] == NAMES
    assert {r["status"] for r in rows} == {"ok"}, rows
    by_name = {r["name"]: r for r in rows}
    assert by_name["nvcc on PATH"]["finding"] == f"{machine.bin}/nvcc (CUDA 13.0.88)"
    assert by_name["driver"]["finding"] == "driver 580.95.05, supports CUDA 13.0"
    assert "NVIDIA GB10 (12.1)" in by_name["GPU"]["finding"]
    assert "sm121-probe 8 jobs of 1.5 GB" in by_name["memory"]["finding"]
    assert "share this memory" in by_name["memory"]["finding"]
    assert by_name["ccache"]["finding"] == f"ccache version 4.9.1 at {machine.bin}/ccache"
    assert by_name["emulation"]["finding"] == "native build (aarch64)"
    assert by_name["Python"]["finding"] == f"Python 3.12 at {machine.python}"


def test_distro_nvcc_first_on_path_is_a_blocker(
    machine: Machine, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    distro = write_tool(machine.root / "usr-bin", "nvcc", {"--version": Reply(NVCC_12_0)})
    monkeypatch.setenv("PATH", f"{distro.parent}:{machine.bin}")
    machine.patch_host(monkeypatch)
    result = cli("doctor", "--project", machine.project, "--target", "dgx-spark")
    assert result.code == 1
    checks = machine.check()
    nvcc = checks["nvcc on PATH"]
    assert nvcc.status == "blocker"
    assert f"{distro} (CUDA 12.0.140) comes first on PATH" in nvcc.finding
    assert f"{machine.cuda_home}/bin/nvcc is 13.0.88" in nvcc.finding
    assert f"put {machine.cuda_home}/bin first on PATH" in nvcc.fix
    # sparkforge itself uses cuda_home, which is fine; the human table says so too.
    assert checks["CUDA toolkit"].status == "ok"
    assert "blocker" in result.out and "nvcc on PATH" in result.out


def test_no_nvcc_on_path_is_a_warning_when_cuda_home_is_fine(machine: Machine) -> None:
    machine.remove("nvcc")
    nvcc = machine.check()["nvcc on PATH"]
    assert nvcc.status == "warn"
    assert f"{machine.cuda_home}/bin/nvcc is 13.0.88" in nvcc.finding
    assert nvcc.fix == f"export PATH={machine.cuda_home}/bin:$PATH"


def test_toolkit_missing_or_of_another_version(machine: Machine) -> None:
    write_tool(machine.cuda_home / "bin", "nvcc", {"--version": Reply(NVCC_12_0)})
    toolkit = machine.check()["CUDA toolkit"]
    assert toolkit.status == "blocker"
    assert f"{machine.cuda_home} holds CUDA 12.0.140" in toolkit.finding
    (machine.cuda_home / "bin" / "nvcc").unlink()
    toolkit = machine.check()["CUDA toolkit"]
    assert toolkit.status == "blocker"
    assert f"no nvcc at {machine.cuda_home}/bin/nvcc" in toolkit.finding
    assert "cuda-toolkit-13-0" in toolkit.fix


def test_driver_older_than_the_toolkit_is_a_blocker(machine: Machine) -> None:
    machine.tool("nvidia-smi", nvidia_smi("NVIDIA GB10", "12.1", "570.133.20", "12.8"))
    driver = machine.check()["driver"]
    assert driver.status == "blocker"
    assert "driver 570.133.20 supports CUDA 12.8, older than the toolkit (13.0)" in driver.finding
    assert "R580 or newer" in driver.fix


def test_driver_of_an_older_minor_version_is_a_warning(machine: Machine) -> None:
    write_tool(
        machine.cuda_home / "bin",
        "nvcc",
        {"--version": Reply(NVCC_13_0.replace("13.0", "13.1"))},
    )
    target = machine.project / "targets" / "dgx-spark.toml"
    target.write_text(target.read_text().replace('cuda_version = "13.0"', 'cuda_version = "13.1"'))
    driver = machine.check()["driver"]
    assert driver.status == "warn"
    assert "minor-version compatibility" in driver.finding


def test_no_driver_only_warns(machine: Machine) -> None:
    machine.remove("nvidia-smi")
    checks = machine.check()
    assert statuses(checks)["driver"] == "warn"
    assert "smoke tests will skip" in checks["driver"].finding
    assert statuses(checks)["GPU"] == "warn"
    assert "blocker" not in statuses(checks).values()


def test_driver_that_cannot_talk_to_the_gpu_only_warns(machine: Machine) -> None:
    machine.tool(
        "nvidia-smi", {"": Reply(SMI_NO_DRIVER, code=9), SMI_QUERY: Reply(SMI_NO_DRIVER, code=9)}
    )
    checks = machine.check()
    assert checks["driver"].status == "warn"
    assert "couldn't communicate with the NVIDIA driver" in checks["driver"].finding
    assert checks["GPU"].status == "warn"


def test_another_gpu_means_other_gpu_mode(machine: Machine) -> None:
    machine.tool("nvidia-smi", H200)
    gpu = machine.check("dgx-spark")["GPU"]
    assert gpu.status == "warn"
    assert "NVIDIA H200 (9.0), not dgx-spark's 12.1 (sm_121)" in gpu.finding
    assert "other-GPU mode" in gpu.finding
    gpu = machine.check("hopper", machine=lambda: "x86_64")["GPU"]
    assert gpu.status == "ok"
    assert gpu.finding == "NVIDIA H200 (9.0): the target's GPU (sm_90)"


def test_findings_are_shown_verbatim(machine: Machine) -> None:
    # nvidia-smi prints "[N/A]" for a field the driver cannot report, and paths may hold
    # brackets: the table shows them as text, never as rich markup.
    machine.tool("nvidia-smi", GB10 | {SMI_QUERY: Reply("NVIDIA GB10, [N/A]\n")})
    workspace = machine.root / "cache[old]"
    out = io.StringIO()
    code = doctor_command(
        load_target(machine.project, "dgx-spark"),
        [load_recipe(machine.project, "sm121-probe")],
        workspace,
        machine.project / "wheelhouse",
        as_json=False,
        console=Console(file=out, width=250),
        host=machine.host(),
    )
    assert code == 0, out.getvalue()
    assert "NVIDIA GB10 ([N/A]), not dgx-spark's 12.1 (sm_121)" in out.getvalue()
    assert f"workspace {workspace}:" in out.getvalue()


def test_not_enough_disk_is_a_blocker(
    machine: Machine, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = machine.project / "recipes" / "sm121-probe" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("disk_gb = 1\n", "disk_gb = 1000000\n"))
    # The real disk probe, on directories that do not exist yet.
    machine.patch_host(monkeypatch, disk_free_gb=Host().disk_free_gb)
    result = cli(
        "doctor",
        "sm121-probe",
        "--project",
        machine.project,
        "--workspace",
        machine.root / "not" / "yet",
        "--json",
    )
    assert result.code == 1
    disk = {r["name"]: r for r in json.loads(result.out)}["disk"]
    assert disk["status"] == "blocker"
    assert f"workspace {machine.root / 'not' / 'yet'}:" in disk["finding"]
    assert "less than the 1000000 GB the build needs (sm121-probe 1000000 GB)" in disk["finding"]
    assert "workspace and wheelhouse" in disk["fix"]
    recipe.write_text(recipe.read_text().replace("disk_gb = 1000000\n", "disk_gb = 1\n"))
    checks = machine.check(disk_free_gb=lambda p: 0.5 if "wheelhouse" in str(p) else 9.0)
    assert checks["disk"].status == "blocker"
    assert "move the wheelhouse" in checks["disk"].fix


def test_not_enough_memory_for_one_job_is_a_blocker(machine: Machine) -> None:
    memory = machine.check(mem_available_gb=lambda: 1.0)["memory"]
    assert memory.status == "blocker"
    assert "MemAvailable 1.0 GB < 1.5 GB for one sm121-probe compile job" in memory.finding
    assert "CPU and GPU share" in memory.fix


def test_aarch64_target_on_x86_64_needs_emulation(machine: Machine) -> None:
    x86 = {"machine": lambda: "x86_64"}
    emulation = machine.check(**x86)["emulation"]
    assert emulation.status == "blocker"
    assert "qemu-aarch64 is not registered" in emulation.finding
    assert "update-binfmts --enable qemu-aarch64" in emulation.fix
    (machine.binfmt / "status").unlink()
    assert "binfmt_misc is not mounted" in machine.check(**x86)["emulation"].finding
    (machine.binfmt / "qemu-aarch64").write_text(BINFMT_AARCH64.replace("enabled", "disabled"))
    assert machine.check(**x86)["emulation"].status == "blocker"
    (machine.binfmt / "qemu-aarch64").write_text(BINFMT_AARCH64.replace("POCF", "POC"))
    assert machine.check(**x86)["emulation"].status == "warn"
    (machine.binfmt / "qemu-aarch64").write_text(BINFMT_AARCH64)
    emulation = machine.check(**x86)["emulation"]
    assert emulation.status == "ok"
    assert "through qemu" in emulation.finding


def test_docker_without_the_nvidia_runtime_warns(machine: Machine) -> None:
    machine.tool("docker", {DOCKER_INFO: Reply(RUNTIMES_RUNC)})
    engine = machine.check()["container engine"]
    assert engine.status == "warn"
    assert "no nvidia runtime" in engine.finding
    assert "NVIDIA Container Toolkit" in engine.fix
    assert "nvidia-ctk runtime configure --runtime=docker" in engine.fix


def test_docker_daemon_down_warns_with_its_message(machine: Machine) -> None:
    machine.tool("docker", {DOCKER_INFO: Reply("null\n", DOCKER_DOWN, code=1)})
    engine = machine.check()["container engine"]
    assert engine.status == "warn"
    assert "Cannot connect to the Docker daemon" in engine.finding
    assert "systemctl start docker" in engine.fix


def test_a_hanging_docker_is_cut_off(machine: Machine) -> None:
    (machine.bin / "docker").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    engine = machine.check(timeout_s=0.5)["container engine"]
    assert engine.status == "warn"
    assert "docker did not answer in 0.5 s" in engine.finding


def test_podman_with_a_cdi_spec_or_none(machine: Machine) -> None:
    machine.remove("docker")
    machine.tool("podman", {"info": Reply("host:\n  arch: arm64\n")})
    engine = machine.check()["container engine"]
    assert engine.status == "warn"
    assert "no NVIDIA CDI spec" in engine.finding
    assert "nvidia-ctk cdi generate" in engine.fix
    machine.cdi.parent.mkdir()
    machine.cdi.write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    engine = machine.check()["container engine"]
    assert engine.status == "ok"
    assert str(machine.cdi) in engine.finding


def test_no_container_engine_warns(machine: Machine) -> None:
    machine.remove("docker")
    engine = machine.check()["container engine"]
    assert engine.status == "warn"
    assert "host runner needs none" in engine.finding


def test_no_ccache_warns(machine: Machine) -> None:
    machine.remove("ccache")
    ccache = machine.check()["ccache"]
    assert ccache.status == "warn"
    assert "apt-get install ccache" in ccache.fix


def test_missing_python_is_a_blocker(machine: Machine) -> None:
    machine.remove("python3.12")
    python = machine.check()["Python"]
    assert python.status == "blocker"
    assert "no Python 3.12" in python.finding
    assert "SPARKFORGE_PYTHON" in python.fix


def test_unknown_recipe_is_one_line_of_bad_input(machine: Machine, cli: CliRunner) -> None:
    result = cli("doctor", "--project", machine.project, "no-such-recipe")
    assert result.code == 2
    assert result.err.startswith("error: no recipe 'no-such-recipe'")


@pytest.mark.parametrize("target", ["hopper", "dgx-spark"])
def test_this_machine_as_it_is(tmp_path: Path, cli: CliRunner, target: str) -> None:
    project = copy_project(tmp_path / "project")
    table = cli("doctor", "--project", project, "--target", target)
    assert table.code in (0, 1), table.err
    assert all(name in table.out for name in NAMES), table.out
    rows = json.loads(cli("doctor", "--project", project, "--target", target, "--json").out)
    assert [r["name"] for r in rows] == NAMES
    assert all(r["status"] in ("ok", "warn", "blocker") and r["finding"] for r in rows)
    assert table.code == int(any(r["status"] == "blocker" for r in rows))
