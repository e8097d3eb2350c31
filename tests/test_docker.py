"""docker for real: the DGX Spark's engine. Debian's docker.io daemon runs here (no
iptables, no bridge, vfs storage); the amd64 stand-in is imported into it, the stand-in
fails where NVIDIA's base fails, Dockerfile.builder builds on it, and the container runner
builds the probe with docker to the same bytes as the host runner."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, build_with_runners, copy_project
from sparkforge.building.containers import BuilderImage, find_engine, load_engine_settings
from sparkforge.building.runners import ContainerRunner
from sparkforge.util.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.network]

sys.path.insert(0, str(REPO / "tools"))
from standin_base import ensure_standin, podman_run_argv  # noqa: E402

SOCKET = Path("/var/run/docker.sock")
DAEMON = ["dockerd", "--iptables=false", "--bridge=none", "--storage-driver=vfs",
          "--data-root", "/var/lib/sparkforge-docker", "--exec-root", "/run/sparkforge-docker",
          "-H", f"unix://{SOCKET}"]  # fmt: skip


def _docker_answers(docker: str) -> bool:
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


def _buildkit_client() -> str | None:
    """A docker client that builds with BuildKit, as Docker's own packages on a Spark do:
    one with the buildx plugin, or a client before 23.0 (BuildKit built in, e.g. Debian's
    docker.io). Without BuildKit every Dockerfile instruction copies the whole image on
    vfs storage, which turns minutes into half an hour."""
    for client in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        if not Path(client).exists():
            continue
        if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
            return client
        done = subprocess.run([client, "version", "--format", "{{.Client.Version}}"],
                              capture_output=True, text=True)  # fmt: skip
        major = done.stdout.strip().split(".")[0]
        if major.isdigit() and int(major) < 23:
            return client
    return None


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker client whose daemon answers (started here, as root, when it is not running),
    first on PATH for sparkforge's engine lookup, with BuildKit on."""
    if not shutil.which("dockerd"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("docker.io is not installed and cannot be installed here")
        subprocess.run(["apt-get", "install", "-y", "-qq", "docker.io"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    client = _buildkit_client()
    if client is None:
        pytest.skip("no docker client with BuildKit (buildx plugin, or Debian's docker.io)")
    if not _docker_answers(client):
        log = open("/tmp/sparkforge-dockerd.log", "ab")  # noqa: SIM115 (the daemon outlives this)
        subprocess.Popen(DAEMON, stdout=log, stderr=log, start_new_session=True)
        for _ in range(60):
            if _docker_answers(client):
                break
            time.sleep(1)
        else:
            pytest.fail("dockerd did not answer in 60 s; see /tmp/sparkforge-dockerd.log")
    shim = tmp_path_factory.mktemp("docker-client")
    (shim / "docker").symlink_to(client)
    saved = {key: os.environ.get(key) for key in ("PATH", "DOCKER_BUILDKIT")}
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ['PATH']}"
    os.environ["DOCKER_BUILDKIT"] = "1"
    yield str(shim / "docker")
    # vfs storage keeps a full copy of every layer: drop what this module built (the
    # stand-in stays, tagged and reused) and BuildKit's cache.
    for argv in (["image", "rm", "-f", "sparkforge-test-old"], ["image", "prune", "-f"],
                 ["builder", "prune", "-af"]):  # fmt: skip
        subprocess.run([client, *argv], capture_output=True)
    built = subprocess.run([client, "images", "-q", "localhost/sparkforge-builder"],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    if built:
        subprocess.run([client, "rmi", "-f", *built], capture_output=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def standin(docker: str) -> str:
    return ensure_standin("amd64", engine=docker, log=lambda line: print(line, flush=True))


def _build(
    docker: str, base: str, dockerfile: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\n{dockerfile}\n")
    return subprocess.run([docker, "build", "--network", "host", "-t", "sparkforge-test-old",
                           str(tmp_path)], capture_output=True, text=True)  # fmt: skip


def test_the_standin_refuses_a_second_uid_1000_account(
    docker: str, standin: str, tmp_path: Path
) -> None:
    """Ubuntu 24.04 images already have `ubuntu` at uid 1000: the old builder's useradd fails."""
    done = _build(docker, standin, "RUN useradd --create-home --uid 1000 --shell /bin/bash builder",
                  tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "UID 1000 is not unique" in done.stdout + done.stderr


def test_the_standin_refuses_an_unpinned_held_package(
    docker: str, standin: str, tmp_path: Path
) -> None:
    """NVIDIA holds libnccl-dev; naming it again with -y stops apt once the repo has a newer one."""
    done = _build(docker, standin, "RUN apt-get update && apt-get install -y libnccl-dev", tmp_path)
    assert done.returncode != 0
    assert "held broken packages" in done.stdout + done.stderr


def test_the_standin_offers_a_newer_cudnn_than_the_wheels_pin(docker: str, standin: str) -> None:
    """Installing "the newest" cuDNN gives one newer than torch's runtime pin (9.13.0.50)."""
    argv = podman_run_argv(standin, "amd64", "sh", "-c",
                           "apt-get update -qq 2>/dev/null; apt-cache policy libcudnn9-dev-cuda-13",
                           engine=docker, extra=["--entrypoint="])  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "Candidate: 9.14.0.64-1" in out and "9.13.0.50-1" in out


def test_docker_container_build_equals_the_host_build(
    docker: str, standin: str, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    common = ["sm121-probe", "--target", "hopper", "--cuda-arch", "121", "--python", "3.11",
              "--project", str(project), "--workspace", str(tmp_path / "ws")]  # fmt: skip
    wheels = build_with_runners(common, {
        "host": ["--runner", "host"],
        "docker": ["--runner", "container", "--engine", "docker", "--engines",
                   str(REPO / "ci" / "engines.toml"), "--base-image", standin,
                   "--allow-unpinned-base"],
    }, tmp_path)  # fmt: skip
    assert wheels["host"].name == wheels["docker"].name
    digests = {k: hashlib.sha256(v.read_bytes()).hexdigest() for k, v in wheels.items()}
    assert digests["host"] == digests["docker"], digests
    provenance = (
        wheels["docker"].parent / (wheels["docker"].name + ".provenance.json")
    ).read_text()
    assert '"engine": "docker"' in provenance


def test_stopping_a_container_command_removes_the_container(
    docker: str, standin: str, tmp_path: Path
) -> None:
    """A build command in a container, stopped by Ctrl-C once it runs (SIGTERM, SIGHUP and
    the time limit take the same path): the container is removed with what runs in it,
    instead of compiling on after the engine client is gone."""
    settings = load_engine_settings(REPO, REPO / "ci" / "engines.toml")
    engine = find_engine("docker", settings)
    image_id = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", standin],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    runner = ContainerRunner(engine=engine, dockerfile=REPO / "Dockerfile.builder",
                             base_image=standin, locked_digest=None, allow_unpinned=True,
                             workspace=Workspace(tmp_path / "ws"))  # fmt: skip
    runner.image = BuilderImage(tag=standin, image_id=image_id, base_image=standin,
                                base_digest=image_id, platform="linux/amd64")  # fmt: skip
    (tmp_path / "ws").mkdir()
    ours = ["--filter", "name=sparkforge-", "--filter", f"ancestor={standin}"]
    earlier = subprocess.run([docker, "ps", "--all", "--quiet", *ours], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    if earlier:  # left by a run stopped while docker was still creating its container
        subprocess.run([docker, "rm", "--force", *earlier], capture_output=True, check=True)
    lines: list[str] = []

    def watch(line: str) -> None:  # Ctrl-C a second after the command printed "started"
        lines.append(line)
        if line == "started":
            main = threading.main_thread().ident
            assert main is not None
            threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT)).start()

    # pytest-xdist workers start with SIGINT ignored: Ctrl-C's handler, for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(["sh", "-c", "echo started; sleep 300"], env={}, cwd=tmp_path / "ws",
                       sink=watch, timeout=600)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "started" in lines
    left = subprocess.run([docker, "ps", "--all", "--quiet", "--filter", "name=sparkforge-",
                           "--filter", f"ancestor={standin}"], capture_output=True, text=True,
                          check=True).stdout.split()  # fmt: skip
    assert left == [], "the container outlived the stopped command"
