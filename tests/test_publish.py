"""``sparkforge publish`` against a real pypiserver (from PyPI, htpasswd, no fallback)
and a directory: credentials, never overwrite, no-op reruns, verified uploads,
``pip install --require-hashes`` from the result, and SIGKILL halfway."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from conftest import CliRunner, hrefs, locked, snapshot
from sparkforge.team.publish import (
    DirectoryDestination,
    RsyncDestination,
    UploadDestination,
    dependency_order,
    destination_for,
    publish,
)
from sparkforge.util.errors import ConfigError, PublishError
from sparkforge.util.workspace import Workspace
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse
from test_wheels import fresh_venv, make_wheel, pip_install, run_python

PYPISERVER = ["pypiserver==2.4.2", "passlib==1.7.4"]
USER, PASSWORD = "alice", "s3cret-pass"


# --- a real pypiserver -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pypiserver_bin(request: pytest.FixtureRequest) -> Path:
    """pypiserver and passlib from PyPI in a venv cached under pytest's cache directory."""
    venv = request.config.cache.mkdir("sparkforge-pypiserver")
    with locked(venv):  # pytest-xdist workers share this cache
        if not (venv / "bin" / "pypi-server").exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", *PYPISERVER], check=True)  # fmt: skip
        return venv / "bin"


@dataclass
class Server:
    url: str  # the upload URL (twine's --repository-url)
    packages: Path
    process: subprocess.Popen[bytes]

    @property
    def simple(self) -> str:
        return self.url + "simple/"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_pypiserver(bin_dir: Path, root: Path, authenticate: str) -> Server:
    """pypi-server run with htpasswd authentication (made with passlib, as its docs say)."""
    root.mkdir(parents=True)
    htpasswd = root / "htpasswd.txt"
    subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import sys; from passlib.apache import HtpasswdFile as H; "
         "h = H(sys.argv[1], new=True); h.set_password(sys.argv[2], sys.argv[3]); h.save()",
         str(htpasswd), USER, PASSWORD],
        check=True,
    )  # fmt: skip
    packages = root / "packages"
    packages.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [str(bin_dir / "pypi-server"), "run", "-p", str(port), "-i", "127.0.0.1",
         "-P", str(htpasswd), "-a", authenticate, "--disable-fallback", str(packages)],
        stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "health", timeout=2):
                return Server(url, packages, process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((root / "server.log").read_text()) from None
            time.sleep(0.1)


@pytest.fixture
def server(pypiserver_bin: Path, tmp_path: Path) -> Iterator[Server]:
    """Uploads, downloads and listing all need credentials."""
    started = _start_pypiserver(pypiserver_bin, tmp_path / "pypiserver", "update,download,list")
    yield started
    started.process.terminate()
    started.process.wait(timeout=10)


@pytest.fixture
def anonymous_read_server(pypiserver_bin: Path, tmp_path: Path) -> Iterator[Server]:
    """Only uploads need credentials, so a wrong password is found by the upload itself."""
    started = _start_pypiserver(pypiserver_bin, tmp_path / "pypiserver-ro", "update")
    yield started
    started.process.terminate()
    started.process.wait(timeout=10)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINE_USERNAME", USER)
    monkeypatch.setenv("TWINE_PASSWORD", PASSWORD)


def _get(url: str) -> bytes:
    request = urllib.request.Request(url)
    token = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def served_files(server: Server) -> dict[str, str]:
    """Every file the index lists, downloaded through its href and checked against its
    listed sha256: a partial or damaged file fails here. Returns name → sha256."""
    files: dict[str, str] = {}
    for project in hrefs(_get(server.simple).decode()):
        page = urljoin(server.simple, project)
        for href in hrefs(_get(page).decode()):
            url, _, fragment = urljoin(page, href).partition("#")
            digest = hashlib.sha256(_get(url)).hexdigest()
            assert fragment == f"sha256={digest}", f"{url} listed {fragment}, serves {digest}"
            files[unquote(urlsplit(url).path.rsplit("/", 1)[-1])] = digest
    assert sorted(files) == sorted(p.name for p in server.packages.iterdir())
    return files


# --- wheels in a local wheelhouse --------------------------------------------------------


def provenance_for(wheel: Path) -> bytes:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return json.dumps({"_type": "https://in-toto.io/Statement/v1",
                       "subject": [{"name": wheel.name, "digest": {"sha256": digest}}]}).encode()  # fmt: skip


def add_wheel(
    house: Path, name: str, version: str, value: int, requires: tuple[str, ...] = (), size: int = 0
) -> StoredWheel:
    """A real, installable wheel (module ``<name>`` with VALUE, optional padding) published
    into the wheelhouse at ``house``."""
    files = {f"{name}/__init__.py": f"VALUE = {value}\n".encode()}
    if size:
        files[f"{name}/blob.bin"] = hashlib.sha256(name.encode()).digest() * (size // 32)
    raw = make_wheel(house.parent / f"raw-{name}-{value}", name, version, files,
                     requires=requires)  # fmt: skip
    return Wheelhouse(house).publish(raw, provenance_for(raw))


@pytest.fixture
def house(tmp_path: Path) -> Path:
    """sfapp 2.0 requires sfpub; sfpub 1.0; sfextra 0.5."""
    root = tmp_path / "wheelhouse"
    add_wheel(root, "sfapp", "2.0", 2, requires=("sfpub>=1",))
    add_wheel(root, "sfpub", "1.0", 1)
    add_wheel(root, "sfextra", "0.5", 5)
    return root


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --- the upload API ----------------------------------------------------------------------


@pytest.mark.network
def test_publish_uploads_verifies_and_a_rerun_is_a_no_op(
    cli: CliRunner, server: Server, house: Path, credentials: None
) -> None:
    result = cli("publish", "--to", server.url, "--wheelhouse", house)
    assert result.code == 0, result.err
    sent = [line.split()[1] for line in result.out.splitlines() if line.startswith("sent ")]
    # dependencies first: sfpub before sfapp, which requires it
    assert sent.index("sfpub-1.0-py3-none-any.whl") < sent.index("sfapp-2.0-py3-none-any.whl")
    assert "downloaded back, sha256 matches" in result.out
    local = {w.filename: w.sha256 for w in Wheelhouse(house).wheels()}
    assert served_files(server) == local
    before = {p.name: p.stat().st_mtime_ns for p in server.packages.iterdir()}

    again = cli("publish", "--to", server.url, "--wheelhouse", house)
    assert again.code == 0, again.err
    assert "published 0 wheels" in again.out and again.out.count("already there:") == 3
    assert {p.name: p.stat().st_mtime_ns for p in server.packages.iterdir()} == before


@pytest.mark.network
@pytest.mark.parametrize("kind", ["listing needs auth", "upload only needs auth"])
def test_wrong_credentials_are_one_line_and_upload_nothing(
    cli: CliRunner,
    request: pytest.FixtureRequest,
    house: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    target: Server = request.getfixturevalue(
        "server" if kind == "listing needs auth" else "anonymous_read_server"
    )
    monkeypatch.setenv("TWINE_USERNAME", USER)
    monkeypatch.setenv("TWINE_PASSWORD", "wrong")
    result = cli("publish", "--to", target.url, "--wheelhouse", house)
    assert result.code == 1
    line = one_line(result.err)
    assert "TWINE_USERNAME and TWINE_PASSWORD" in line
    assert ("403" in line) or ("401" in line)
    assert list(target.packages.iterdir()) == []


@pytest.mark.network
def test_refuses_to_overwrite_a_different_file_and_sends_nothing(
    cli: CliRunner, server: Server, house: Path, credentials: None, tmp_path: Path
) -> None:
    # An earlier, different sfpub 1.0 wheel with the same file name is on the index.
    other = make_wheel(tmp_path / "other", "sfpub", "1.0", {"sfpub/__init__.py": b"VALUE = 99\n"})
    (server.packages / other.name).write_bytes(other.read_bytes())
    result = cli("publish", "--to", server.url, "--wheelhouse", house)
    assert result.code == 1
    line = one_line(result.err)
    assert "would overwrite sfpub-1.0-py3-none-any.whl" in line and "nothing was published" in line
    assert [p.name for p in server.packages.iterdir()] == [other.name]  # sfapp, sfextra not sent
    assert (server.packages / other.name).read_bytes() == other.read_bytes()


@pytest.mark.network
def test_published_wheel_installs_with_require_hashes(
    cli: CliRunner, server: Server, house: Path, credentials: None, tmp_path: Path
) -> None:
    assert cli("publish", "--to", server.url, "--wheelhouse", house, "sfpub", "sfapp").code == 0
    assert sorted(served_files(server)) == ["sfapp-2.0-py3-none-any.whl", "sfpub-1.0-py3-none-any.whl"]  # fmt: skip
    requirements = tmp_path / "requirements.txt"
    exported = cli("export", "--no-deps", "--wheelhouse", house, "--index-url", server.simple,
                   "-o", requirements, "sfapp", "sfpub")  # fmt: skip
    assert exported.code == 0, exported.err
    python = fresh_venv(tmp_path / "venv")
    index = server.simple.replace("http://", f"http://{USER}:{PASSWORD}@")
    installed = pip_install(python, "--require-hashes", "-r", str(requirements),
                            "--index-url", index)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert run_python(python, "import sfapp, sfpub; print(sfapp.VALUE, sfpub.VALUE)") == "2 1"
    # A hash that is not the published one is refused by pip.
    requirements.write_text(f"sfpub==1.0 --hash=sha256:{'0' * 64}\n")
    wrong = pip_install(fresh_venv(tmp_path / "venv2"), "--require-hashes", "-r",
                        str(requirements), "--index-url", index)  # fmt: skip
    assert wrong.returncode != 0 and "DO NOT MATCH" in wrong.stderr


def test_credentials_in_the_url_are_refused(cli: CliRunner, house: Path) -> None:
    for url in ("http://alice:secret@127.0.0.1:9/", "https://alice@example.invalid/",
                "rsync://alice:secret@host/module", "alice:secret@host:/srv/wheels"):  # fmt: skip
        result = cli("publish", "--to", url, "--wheelhouse", house)
        assert result.code == 2, url
        assert "secret" not in result.err
        assert "refused" in one_line(result.err)


def test_destination_forms(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    local = destination_for(str(tmp_path / "d"), simple_url=None, workspace=workspace)
    assert isinstance(local, DirectoryDestination) and local.root == tmp_path / "d"
    url = destination_for((tmp_path / "d").as_uri(), simple_url=None, workspace=workspace)
    assert isinstance(url, DirectoryDestination) and url.root == tmp_path / "d"
    upload = destination_for("https://h.example/api/pypi/repo", simple_url=None,
                             workspace=workspace)  # fmt: skip
    assert isinstance(upload, UploadDestination)
    assert upload.simple_url == "https://h.example/api/pypi/repo/simple/"
    devpi = destination_for("https://h.example/u/idx/", simple_url="https://h.example/u/idx/+simple",
                            workspace=workspace)  # fmt: skip
    assert isinstance(devpi, UploadDestination) and devpi.simple_url.endswith("/+simple/")
    with pytest.raises(ConfigError, match="unknown scheme"):
        destination_for("ftp://h/x", simple_url=None, workspace=workspace)
    with pytest.raises(ConfigError, match="--simple-url"):
        destination_for(str(tmp_path), simple_url="https://x/simple", workspace=workspace)
    if shutil.which("rsync"):
        ssh = destination_for("builder@spark-01:/srv/wheels/", simple_url=None,
                              workspace=workspace)  # fmt: skip
        assert isinstance(ssh, RsyncDestination) and ssh.remote == "builder@spark-01:/srv/wheels"
        assert ssh.staging.parent == workspace.root / "publish"


def test_dependency_order_puts_required_projects_first(house: Path) -> None:
    ordered = [w.project for w in dependency_order(Wheelhouse(house).wheels())]
    assert ordered == ["sfextra", "sfpub", "sfapp"]


def test_unknown_project_and_empty_wheelhouse_are_one_line(
    cli: CliRunner, house: Path, tmp_path: Path
) -> None:
    result = cli("publish", "--to", tmp_path / "team", "--wheelhouse", house, "nope")
    assert result.code == 2 and "no wheels of project 'nope'" in one_line(result.err)
    empty = cli("publish", "--to", tmp_path / "team", "--wheelhouse", tmp_path / "empty")
    assert empty.code == 2 and "holds no wheels" in one_line(empty.err)
    assert not (tmp_path / "team").exists()


# --- a directory -------------------------------------------------------------------------


def check_static_index(root: Path) -> dict[str, str]:
    """Every page parses; every listed file exists with the listed hash; nothing else is a
    wheel there (temp files are dot files). Returns listed name → sha256."""
    listed: dict[str, str] = {}
    simple = root / "simple"
    for project in hrefs((simple / "index.html").read_text()):
        page = simple / project / "index.html"
        json.loads((page.parent / "index.json").read_text())
        for href in hrefs(page.read_text()):
            path, _, fragment = href.partition("#")
            target = Path(os.path.normpath(page.parent / unquote(path)))  # lexically, as pip
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            assert fragment == f"sha256={digest}", target
            listed[target.name] = digest
    visible = sorted(p.name for p in (root / "files").glob("*.whl"))
    assert visible == sorted(listed), "a wheel is visible that the index does not list"
    return listed


def test_directory_publish_installs_and_reruns_as_a_no_op(
    cli: CliRunner, house: Path, tmp_path: Path
) -> None:
    team = tmp_path / "team"
    first = cli("publish", "--to", team, "--wheelhouse", house)
    assert first.code == 0, first.err
    assert check_static_index(team) == {w.filename: w.sha256 for w in Wheelhouse(house).wheels()}
    for wheel in Wheelhouse(house).wheels():  # provenance travels with the static copy
        copied = team / "files" / (wheel.filename + ".provenance.json")
        assert copied.read_bytes() == wheel.provenance.read_bytes()
    before = snapshot(team)
    again = cli("publish", "--to", team.as_uri(), "--wheelhouse", house)
    assert again.code == 0 and "published 0 wheels" in again.out
    assert snapshot(team) == before
    requirements = tmp_path / "req.txt"
    wheel = Wheelhouse(house).wheels("sfpub")[0]
    requirements.write_text(f"sfpub==1.0 --hash=sha256:{wheel.sha256}\n")
    python = fresh_venv(tmp_path / "venv")
    installed = pip_install(python, "--require-hashes", "-r", str(requirements),
                            "--index-url", (team / "simple").as_uri())  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert run_python(python, "import sfpub; print(sfpub.VALUE)") == "1"


def test_directory_refuses_overwrite_and_changes_nothing(
    cli: CliRunner, house: Path, tmp_path: Path
) -> None:
    team = tmp_path / "team"
    elsewhere = tmp_path / "elsewhere"
    add_wheel(elsewhere, "sfpub", "1.0", 42)  # same name, other bytes
    assert cli("publish", "--to", team, "--wheelhouse", elsewhere).code == 0
    before = snapshot(team)
    result = cli("publish", "--to", team, "--wheelhouse", house)
    assert result.code == 1
    assert "would overwrite sfpub-1.0-py3-none-any.whl" in one_line(result.err)
    assert snapshot(team) == before


@pytest.fixture(scope="module")
def rsync() -> str:
    """Debian's rsync, installed here (as root) when it is missing."""
    if shutil.which("rsync") is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("rsync is not installed and cannot be installed here")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "rsync"], check=True, env=env)
    found = shutil.which("rsync")
    assert found is not None
    return found


def test_rsync_protocol_against_a_local_path(house: Path, tmp_path: Path, rsync: str) -> None:
    """The rsync form's push order, with rsync's local mode standing in for ssh; the page
    to browse goes along."""
    remote = tmp_path / "remote"
    remote.mkdir()
    destination = RsyncDestination.create(str(remote), Workspace(tmp_path / "ws"))
    outcome = publish(house, destination, [], report=lambda line: None)
    assert len(outcome.sent) == 3
    assert check_static_index(remote) == {w.filename: w.sha256 for w in Wheelhouse(house).wheels()}
    assert len(list((remote / ".index").iterdir())) == 1
    page = (remote / "index.html").read_text()
    assert all(w.filename in page for w in Wheelhouse(house).wheels())
    add_wheel(house, "sfnew", "1.0", 7)
    again = RsyncDestination.create(str(remote), Workspace(tmp_path / "ws"))
    outcome = publish(house, again, [], report=lambda line: None)
    assert outcome.sent == ["sfnew-1.0-py3-none-any.whl"] and len(outcome.already_there) == 3
    assert "sfnew-1.0-py3-none-any.whl" in check_static_index(remote)
    assert len(list((remote / ".index").iterdir())) == 1  # the old generation is gone
    assert "sfnew" in (remote / "index.html").read_text()
    with pytest.raises(PublishError, match="does the directory exist"):
        publish(house, RsyncDestination.create(str(tmp_path / "absent"), Workspace(tmp_path / "ws")),
                [], report=lambda line: None)  # fmt: skip


# --- killed halfway ----------------------------------------------------------------------


def _start_publish(house: Path, to: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sparkforge.cli", "publish", "--to", to, "--wheelhouse", str(house)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group: the kill takes twine with it
    )  # fmt: skip


FAULT = "SPARKFORGE_FAULT_INJECT"


def _died(process: subprocess.Popen[str]) -> None:
    """The publish killed itself at the injected point, as by kill -9."""
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL


def _kill(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.network
def test_kill_halfway_to_pypiserver_leaves_both_indexes_valid(
    server: Server, house: Path, credentials: None
) -> None:
    add_wheel(house, "sfbig", "1.0", 3, size=30 << 20)  # a large one too
    local_before = snapshot(house)
    process = _start_publish(house, server.url, {**os.environ, FAULT: "publish:sent-2"})
    _died(process)
    assert snapshot(house) == local_before  # publish never writes the local wheelhouse
    check_static_index(house)
    remote = served_files(server)  # pages parse, every listed file complete with its hash
    assert len(remote) == 2
    local = {w.filename: w.sha256 for w in Wheelhouse(house).wheels()}
    assert all(local[name] == digest for name, digest in remote.items())

    rerun = _start_publish(house, server.url, dict(os.environ))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert out.count("already there:") == 2 and "published 2 wheels" in out
    assert served_files(server) == local


def test_kill_halfway_to_a_directory_leaves_both_indexes_valid(house: Path, tmp_path: Path) -> None:
    team = tmp_path / "team"
    local_before = snapshot(house)
    process = _start_publish(house, str(team), {**os.environ, FAULT: "publish:sent-1"})
    _died(process)
    assert snapshot(house) == local_before
    check_static_index(house)
    assert len(check_static_index(team)) == 1

    rerun = _start_publish(house, str(team), dict(os.environ))
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "published 2 wheels" in out and "1 already there" in out
    assert check_static_index(team) == {w.filename: w.sha256 for w in Wheelhouse(house).wheels()}


def test_upload_destination_reports_an_unreachable_index(house: Path) -> None:
    port = _free_port()  # nothing listens there
    destination = destination_for(f"http://127.0.0.1:{port}/", simple_url=None,
                                  workspace=Workspace(Path("/nonexistent")))  # fmt: skip
    with pytest.raises(PublishError, match="cannot reach"):
        publish(house, destination, [], report=lambda line: None)


class _StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of the index that forwards a connection's request
    bytes until ``limit`` of them have passed, then forwards nothing more and sets
    ``stalled``: an upload held exactly there, however fast the machine."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        import threading

        self.limit = limit
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.upstream_port = upstream_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        passed = 0
        try:
            while data := source.recv(1 << 16):
                if requests and passed + len(data) > self.limit:
                    sink.sendall(data[: self.limit - passed])
                    self.stalled.set()
                    # Hold: the rest never reaches the index; when the client dies, its
                    # connection to the index closes as a direct one would.
                    while source.recv(1 << 16):
                        pass
                    break
                sink.sendall(data)
                passed += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.network
def test_kill_during_a_large_upload_is_found_and_refused_by_the_next_run(
    cli: CliRunner, server: Server, tmp_path: Path, credentials: None
) -> None:
    """SIGKILL while twine streams a 150 MB wheel, once 50 MB of it reached the server (a
    proxy holds the upload exactly there, then the publish is killed).

    pypiserver 2.4.2 then stores the part it received under the final name (and
    lists it, with the hash of those bytes): no upload protocol lets a client
    take that back. The next publish must not take it for "already there" nor
    overwrite it: it says the file was cut off and stops; once the file is
    deleted there, publish completes.
    """
    house = tmp_path / "big"
    big = add_wheel(house, "sfhuge", "1.0", 1, size=150 << 20)
    upstream_port = int(urlsplit(server.url).port or 80)
    proxy = _StallingProxy(upstream_port, limit=50 << 20)
    proxied = server.url.replace(f":{upstream_port}/", f":{proxy.port}/")
    try:
        process = _start_publish(house, proxied, dict(os.environ))
        assert proxy.stalled.wait(timeout=120), "the upload never reached 50 MB"
        _kill(process)
    finally:
        proxy.close()
    deadline = time.monotonic() + 30  # the server notices the cut connection and stores the part
    while not (server.packages / big.filename).exists():
        assert time.monotonic() < deadline, "pypiserver kept nothing of the cut-off upload"
        time.sleep(0.1)
    time.sleep(0.5)
    remote = served_files(server)  # pages parse, every listed file has its listed hash
    assert list(remote) == [big.filename], "pypiserver 2.4.2 keeps the part it received"
    stored = server.packages / big.filename
    assert 0 < stored.stat().st_size < big.size
    assert big.path.read_bytes()[: stored.stat().st_size] == stored.read_bytes()
    refused = cli("publish", "--to", server.url, "--wheelhouse", house)
    assert refused.code == 1
    assert "an upload that was cut off" in one_line(refused.err)
    stored.unlink()  # what the index's administrator does
    again = cli("publish", "--to", server.url, "--wheelhouse", house)
    assert again.code == 0, again.err
    assert served_files(server) == {big.filename: big.sha256}


def test_kill_while_copying_a_large_wheel_leaves_no_partial_file(tmp_path: Path) -> None:
    """SIGKILL in the middle of copying a wheel into the team wheelhouse (the fault point
    after its first MiB): no file under the wheel's name, the index still valid, and the
    next run completes."""
    house = tmp_path / "big"
    big = add_wheel(house, "sfhuge", "1.0", 1, size=150 << 20)
    team = tmp_path / "team"
    process = _start_publish(house, str(team), {**os.environ, FAULT: "store:copying"})
    _died(process)
    assert not (team / "files" / big.filename).exists()
    left = [p for p in (team / "files").iterdir() if p.name.startswith(f".{big.filename}.")]
    assert len(left) == 1 and 0 < left[0].stat().st_size < big.size  # the cut-off temp file
    if (team / "simple").exists():
        assert check_static_index(team) == {}
    rerun = _start_publish(house, str(team), dict(os.environ))
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert check_static_index(team) == {big.filename: big.sha256}


def test_credentials_go_to_the_index_only_not_where_it_redirects(tmp_path: Path) -> None:
    """Reading the index sends the publish credentials to its own origin; a download it
    redirects to another origin (a CDN, an object store) gets none."""
    import hashlib as _hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sparkforge.team.publish import _Http

    seen: dict[str, str | None] = {}
    body = b"wheel bytes"

    def server(answer):  # type: ignore[no-untyped-def]
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen[f"{self.server.server_address[1]}{self.path}"] = self.headers.get(
                    "Authorization"
                )
                answer(self)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd

    def cdn_answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    cdn = server(cdn_answer)

    def index_answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{cdn.server_address[1]}/blob")
        handler.end_headers()

    index = server(index_answer)
    try:
        base = f"http://127.0.0.1:{index.server_address[1]}"
        digest = _Http(f"{base}/", ("team", "secret")).sha256_of(f"{base}/files/x.whl")
    finally:
        index.shutdown()
        cdn.shutdown()
    assert digest == _hashlib.sha256(body).hexdigest()
    assert str(seen[f"{index.server_address[1]}/files/x.whl"]).startswith("Basic ")
    assert seen[f"{cdn.server_address[1]}/blob"] is None
