"""What a newcomer hits first: SIGTERM and SIGHUP stop a build like Ctrl-C (the whole
process tree of the running build command goes, the wheelhouse is untouched, one line
says so, the exit status is the signal's); one line for an OSError; suggestions for
misspelled names; build-all --dry-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CliRunner

# The build command starts a grandchild that would run for five minutes, records its pid
# and waits: what a compiler tree under make/ninja looks like to the pipeline.
SLEEPER = """command = ["sh -c 'sleep 300 & echo $! > {build_dir}/sleeper.pid; wait'"]"""


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_whole_build_tree(
    tiny: Path, shared_workspace: Path, sig: signal.Signals, status: int
) -> None:
    recipe = tiny / "recipes" / "tiny" / "recipe.toml"
    text = recipe.read_text()
    start = text.index("command = [")
    recipe.write_text(text[:start] + SLEEPER + text[text.index("\n", start) :])
    process = subprocess.Popen(
        [sys.executable, "-m", "sparkforge.cli", "build", "tiny", "--target", "hopper",
         "--project", str(tiny), "--workspace", str(shared_workspace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    pid_files: list[Path] = []
    while not pid_files and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        pid_files = [p for p in shared_workspace.glob("builds/*/sleeper.pid") if p.read_text()]
    assert pid_files, process.communicate(timeout=30)
    sleeper = int(pid_files[0].read_text())
    assert _alive(sleeper)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == status, out + err
    assert f"terminated ({sig.name})" in err and "Traceback" not in err
    for _ in range(50):  # the group got SIGTERM; give it a moment to go
        if not _alive(sleeper):
            break
        time.sleep(0.1)
    assert not _alive(sleeper), "the build's grandchild survived"
    assert not list((tiny / "wheelhouse").glob("files/*.whl"))
    pid_files[0].unlink()


def test_an_unwritable_wheelhouse_is_one_line(cli: CliRunner, tiny: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the wheelhouse should be")
    result = cli("index", "--wheelhouse", blocker / "house", "--project", tiny)
    lines = result.err.strip().splitlines()
    assert result.code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [(["biuld", "tiny"], "did you mean 'build'?"),
     (["build", "tinny", "--dry-run"], "did you mean 'tiny'?"),
     (["build", "tiny", "--target", "hoper", "--dry-run"], "did you mean 'hopper'?"),
     (["build", "tiny", "--dryrun"], "did you mean '--dry-run' for '--dryrun'?"),
     (["build-all", "--no-preflite"], "did you mean '--no-preflight' for '--no-preflite'?")],
)  # fmt: skip
def test_misspelled_names_get_a_suggestion(
    cli: CliRunner, tiny: Path, argv: list[str], hint: str
) -> None:
    result = cli(*argv, "--project", tiny)
    assert result.code == 2 and hint in result.err, result.err


def test_build_all_dry_run_plans_everything_and_runs_nothing(
    cli: CliRunner, tmp_path: Path
) -> None:
    from conftest import copy_project

    project = copy_project(tmp_path / "project")
    result = cli("build-all", "--dry-run", "--json", "--target", "hopper", "--project", project,
                 "--workspace", tmp_path / "ws")  # fmt: skip
    assert result.code == 0, result.err
    rows = {row["recipe"]: row for row in json.loads(result.out)["recipes"]}
    assert rows["sm121-probe"]["action"] == "build" and rows["sm121-probe"]["preflight"]
    assert rows["triton"]["action"] == "cannot plan"  # 3.5.0 is not locked here
    assert "no lock entry for triton 3.5.0" in rows["triton"]["blocked_by"]
    assert rows["vllm"]["needs"] == {"torch": False}
    assert not (project / "wheelhouse").exists() or not list(
        (project / "wheelhouse").rglob("*.whl")
    )


def test_list_and_clean(cli: CliRunner, tiny: Path, tmp_path: Path) -> None:
    """`list` shows what the wheelhouse holds; `clean` removes kept build trees (a dry run
    first), never the wheelhouse."""
    workspace = tmp_path / "ws"
    common = ["--project", tiny, "--workspace", workspace]
    built = cli("build", "tiny", "--target", "hopper", "--keep-build-dir", *common)
    assert built.code == 0, built.err
    assert "next: nox -s smoke-tiny -- --target hopper" in built.out
    assert "it installs on any Python 3, any" in built.out
    listing = cli("list", "--json", *common)
    (row,) = json.loads(listing.out)["wheels"]
    assert (row["project"], row["version"], row["target"]) == ("sf-tiny", "1.0.0", "hopper")
    assert len(row["build_key"]) == 64 and row["audit"] == {"sm_90": "no-cuda-code"}
    assert "sf-tiny" in cli("list", *common).out
    kept = list((workspace / "builds").iterdir())
    assert kept
    dry = cli("clean", "--dry-run", *common)
    assert dry.code == 0 and f"would remove {kept[0]}" in dry.out
    assert kept[0].exists()
    done = cli("clean", *common)
    assert done.code == 0 and "freed" in done.out
    assert not kept[0].exists()
    assert len(list((tiny / "wheelhouse" / "files").glob("*.whl"))) == 1
    bad = cli("clean", "--older-than", "-1", *common)
    assert bad.code == 2 and "is not a number of days" in bad.err


FAKE_ENGINE = """#!/bin/sh
# A stand-in docker holding two builder images and an unrelated one; `image rm` is recorded.
case "$*" in
  *"image ls --filter reference=localhost/sparkforge-builder"*)
      printf 'localhost/sparkforge-builder:aaaaaaaaaaaa\\nlocalhost/sparkforge-builder:bbbbbbbbbbbb\\n' ;;
  *"image inspect --format {{.Id}}|{{.Size}}|{{.Created}} localhost/sparkforge-builder:aaaaaaaaaaaa"*)
      echo "sha256:aa|9000000000|2020-01-02T03:04:05.123456789Z" ;;
  *"image inspect --format {{.Id}}|{{.Size}}|{{.Created}} localhost/sparkforge-builder:bbbbbbbbbbbb"*)
      echo "sha256:bb|5000000|$(date -u -d '1 day ago' '+%Y-%m-%d %H:%M:%S').5 +0000 UTC" ;;
  *"image rm "*) echo "$*" >> "$FAKE_STATE/removed" ;;
  *"ps --quiet --filter name=sparkforge-"*) if [ -n "$FAKE_RUNNING" ]; then echo 0123456789ab; fi ;;
  *) exit 1 ;;
esac
"""


def test_clean_builder_images_by_age_and_size(
    cli: CliRunner, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clean --what images` removes the builder images the container runner made, the old
    and big ones only when asked so; docker's and podman's time formats both read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_ENGINE)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_STATE", str(tmp_path))
    common = ["--what", "images", "--engine", "docker", "--project", tiny,
              "--workspace", tmp_path / "ws"]  # fmt: skip
    dry = cli("clean", "--dry-run", *common)
    assert dry.code == 0, dry.err
    assert "would remove localhost/sparkforge-builder:aaaaaaaaaaaa (9000.0 MB)" in dry.out
    assert "would remove localhost/sparkforge-builder:bbbbbbbbbbbb (5.0 MB)" in dry.out
    assert not (tmp_path / "removed").exists()
    big = cli("clean", "--dry-run", "--larger-than", "100", *common)
    assert "aaaaaaaaaaaa" in big.out and "bbbbbbbbbbbb" not in big.out
    old = cli("clean", "--older-than", "30", *common)  # the other image is a day old
    assert old.code == 0, old.err
    assert (tmp_path / "removed").read_text().split() == [
        "image", "rm", "localhost/sparkforge-builder:aaaaaaaaaaaa"]  # fmt: skip
    monkeypatch.setenv("FAKE_RUNNING", "1")  # a build runs in some workspace: images stay
    busy = cli("clean", *common)
    assert busy.code == 2 and "runs build containers" in busy.err
    assert len((tmp_path / "removed").read_text().splitlines()) == 1


def test_an_interrupted_container_removal_still_stops_the_command(tmp_path: Path) -> None:
    """A second Ctrl-C while the container is being removed: the command's process group
    is stopped all the same, and the removal is tried again after it."""
    from sparkforge.util.proc import stream

    calls: list[int] = []

    def remove() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C again

    pid_file = tmp_path / "pid"
    with pytest.raises(KeyboardInterrupt):
        stream(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], env=None, cwd=None,
               sink=lambda line: None, timeout=2, on_stop=remove)  # fmt: skip
    assert calls == [0, 1]
    sleeper = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(sleeper):
            break
        time.sleep(0.1)
    assert not _alive(sleeper)


def test_sparkforge_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """nox killed with SIGTERM does not pass the signal on: sparkforge (here `serve`, as
    under `nox -s serve-index`) must not run on as an orphan."""
    from sparkforge.wheelhouse.store import Wheelhouse
    from test_index import build

    house = Wheelhouse(tmp_path / "wheelhouse")
    house.publish(build(tmp_path, "sfdemo", "1.0"), b"{}")
    launcher = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-m', 'sparkforge.cli', 'serve', '--port', '0',\n"
        f"    '--quiet', '--wheelhouse', {str(house.root)!r}, '--project', {str(tmp_path)!r}])\n"
        "print(child.pid, flush=True)\n"
        "import time; time.sleep(3)\n"  # the server is up; then the parent dies abruptly
        "import os; os._exit(0)\n"
    )
    parent = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    child = int(parent.stdout.split()[0])
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "sparkforge serve outlived its parent"
