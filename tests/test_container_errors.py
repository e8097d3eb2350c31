"""The container runner's failure modes, each one clear line: no engine, an engine
that cannot start containers, a failed image build, an unpinned or changed base.

The engines here are small shell scripts standing in for docker/podman on PATH
(real subprocesses; the real podman is exercised in tests/test_container.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import CliRunner, one_error_line, snapshot

pytestmark = pytest.mark.network  # the tiny lock resolves flit_core from PyPI once

FAKE_PODMAN = """#!/bin/sh
# A stand-in podman: behaviour chosen by FAKE_MODE.
case "$*" in
  *"image inspect --format {{.Id}} localhost/base"*) echo "sha256:1111111111111111111111111111111111111111111111111111111111111111" ;;
  *"image inspect --format {{json .RepoDigests}}"*) echo "[]" ;;
  *"image inspect --format {{.Id}} localhost/sparkforge-builder"*)
      [ -f "$FAKE_STATE/built" ] && echo "sha256:2222222222222222222222222222222222222222222222222222222222222222" || exit 125 ;;
  *"image inspect"*) exit 125 ;;
  "build "*|*" build "*)
      if [ "$FAKE_MODE" = "build-fails" ]; then
        echo "STEP 3/6: RUN apt-get update"; echo "E: Unable to locate package libcudnn9-dev-cuda-13" >&2
        echo "Error: building at STEP \\"RUN apt-get update\\": exit status 100" >&2; exit 1
      fi
      touch "$FAKE_STATE/built" ;;
  "run "*|*" run "*)
      echo "Error: crun: creating cgroup directory: Read-only file system: OCI runtime error" >&2; exit 126 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def fake_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "podman"
    script.write_text(FAKE_PODMAN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("FAKE_STATE", str(state))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return script


def _container_build(cli: CliRunner, tiny: Path, workspace: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("build", "tiny", "--target", "hopper", "--runner", "container", "--engine", "podman",
               "--base-image", "localhost/base:1", "--project", tiny, "--workspace", workspace, *extra)  # fmt: skip


def test_no_engine_installed(
    cli: CliRunner, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = cli("build", "tiny", "--target", "hopper", "--runner", "container", "--project", tiny,
                 "--workspace", tmp_path / "ws")  # fmt: skip
    one_error_line(
        result,
        r"no container engine found \(docker or podman is not on PATH\): install one .* or build with --runner host",
    )


def test_unpinned_base_is_refused(
    cli: CliRunner, tiny: Path, tmp_path: Path, fake_podman: Path
) -> None:
    before = snapshot(tiny / "wheelhouse")
    result = _container_build(cli, tiny, tmp_path / "ws")
    one_error_line(
        result,
        r"builder base image localhost/base:1 is not pinned in lock\.toml; run "
        r"`nox -s lock -- --builder --base-image localhost/base:1`",
    )
    assert snapshot(tiny / "wheelhouse") == before


def test_the_way_from_an_unpinned_base_to_a_pinned_one(
    cli: CliRunner, tiny: Path, tmp_path: Path, fake_podman: Path
) -> None:
    """The command the refusal names pins the base (only lock.toml's [builder] changes),
    and the same build then gets past the pin check (to the fake engine's next refusal)."""
    lock = tiny / "lock.toml"
    before = lock.read_text()
    pinned = cli("lock", "--builder", "--base-image", "localhost/base:1", "--engine", "podman",
                 "--project", tiny, "--workspace", tmp_path / "ws")  # fmt: skip
    assert pinned.code == 0, pinned.err
    assert "pinned builder base localhost/base:1: sha256:1111" in pinned.out
    after = lock.read_text()
    added = '[builder]\n"localhost/base:1" = "sha256:' + "1" * 64 + '"\n'
    assert added in after and after.replace(added, "").replace("\n\n\n", "\n\n") == before
    result = _container_build(cli, tiny, tmp_path / "ws")
    one_error_line(result, r"podman cannot start a container here")  # past the pin check


def test_base_image_without_builder_is_one_line(cli: CliRunner, tiny: Path) -> None:
    result = cli("lock", "--base-image", "localhost/base:1", "--project", tiny)
    one_error_line(result, r"lock --base-image: add --builder")


def test_changed_base_is_refused(
    cli: CliRunner, tiny: Path, tmp_path: Path, fake_podman: Path
) -> None:
    lock = tiny / "lock.toml"
    lock.write_text(
        lock.read_text().replace(
            "format = 1\n",
            'format = 1\n\n[builder]\n"localhost/base:1" = "sha256:' + "9" * 64 + '"\n',
        )
    )
    result = _container_build(cli, tiny, tmp_path / "ws")
    one_error_line(
        result,
        r"builder base image localhost/base:1 is sha256:111111111111…, lock\.toml pins sha256:999999999999…",
    )


def test_image_build_failure(cli: CliRunner, tiny: Path, tmp_path: Path, fake_podman: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_MODE", "build-fails")
    result = _container_build(cli, tiny, tmp_path / "ws", "--allow-unpinned-base")
    one_error_line(
        result,
        r"building the builder image localhost/sparkforge-builder:[0-9a-f]{12} from Dockerfile\.builder failed: Error: building at STEP",
    )
    assert not (tiny / "wheelhouse").exists()


def test_engine_that_cannot_start_containers(
    cli: CliRunner, tiny: Path, tmp_path: Path, fake_podman: Path
) -> None:
    result = _container_build(cli, tiny, tmp_path / "ws", "--allow-unpinned-base")
    line = one_error_line(
        result, r"podman cannot start a container here: Error: crun: creating cgroup directory"
    )
    assert "engines.toml" in line and "ci/engines.toml" in line
    assert os.path.exists(tiny / "Dockerfile.builder")


def test_smoke_without_gpu_runtime(cli: CliRunner, tiny: Path, tmp_path: Path, shared_workspace: Path,
                                   fake_podman: Path) -> None:  # fmt: skip
    assert (
        cli(
            "build",
            "tiny",
            "--target",
            "hopper",
            "--project",
            tiny,
            "--workspace",
            shared_workspace,
        ).code
        == 0
    )
    result = cli("smoke", "tiny", "--target", "hopper", "--runner", "container", "--engine", "podman",
                 "--base-image", "localhost/base:1", "--allow-unpinned-base", "--project", tiny,
                 "--workspace", tmp_path / "ws")  # fmt: skip
    one_error_line(
        result,
        r"podman has no NVIDIA CDI spec \(/etc/cdi/nvidia\.yaml\), so no GPU for the smoke test: install the NVIDIA Container Toolkit",
    )
