"""``sparkforge export``: hash-pinned requirements, pip.conf and uv.toml, used by real clients.

Two wheelhouses are served on 127.0.0.1: the team's, and a public one that
also has a (higher) ``sfdemo`` version besides the dependency ``sfdep``, the
way PyPI could after a dependency-confusion upload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, CliRunner
from sparkforge.team.serve import WheelhouseServer, running
from sparkforge.wheel.repair import normalize
from sparkforge.wheelhouse.store import Wheelhouse
from test_index import INSTALLED, PROVENANCE, build
from test_serve import uv_binary
from test_wheels import EPOCH, fresh_venv, make_wheel, pip_install, run_python

Servers = tuple[WheelhouseServer, WheelhouseServer]


@pytest.fixture(scope="module")
def houses(tmp_path_factory: pytest.TempPathFactory) -> tuple[Wheelhouse, Wheelhouse]:
    tmp = tmp_path_factory.mktemp("export")
    team = Wheelhouse(tmp / "team")
    team.publish(build(tmp, "sfdemo", "1.0"), PROVENANCE)
    team.publish(build(tmp, "sfdemo", "1.1", local_version="cu130"), PROVENANCE)
    team.publish(build(tmp, "Other_Proj", "0.1", requires=["sfdemo>=1.1", "sfdep<2"]),
                 PROVENANCE)  # fmt: skip
    public = Wheelhouse(tmp / "public")
    for name, version in [("sfdemo", "99.0"), ("sfdep", "1.0"), ("sfdep", "2.0")]:
        public.publish(build(tmp / "public-raw", name, version), PROVENANCE)
    return team, public


@pytest.fixture(scope="module")
def servers(houses: tuple[Wheelhouse, Wheelhouse]) -> Iterator[Servers]:
    team, public = houses
    with running(team.root) as team_server, running(public.root) as public_server:
        yield team_server, public_server


def export(cli: CliRunner, house: Wheelhouse, tmp: Path, *args: str) -> str:
    result = cli("export", "--project", REPO, "--wheelhouse", house.root,
                 "-o", tmp / "requirements.txt", *args)  # fmt: skip
    assert result.code == 0, result.err
    return (tmp / "requirements.txt").read_text()


def test_requirements_pin_every_file_and_install_with_hashes(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    team, _ = houses
    text = export(cli, team, tmp_path, "--no-deps")

    stored = {(w.project, w.version): w.sha256 for w in team.wheels()}
    assert f"other-proj==0.1 \\\n    --hash=sha256:{stored['other-proj', '0.1']}\n" in text
    assert f"sfdemo==1.1+cu130 \\\n    --hash=sha256:{stored['sfdemo', '1.1+cu130']}\n" in text
    assert "sfdemo==1.0" not in text  # one version per project: the newest
    assert "#   sfdep<2 (from other-proj 0.1)" in text  # --no-deps says what it left out
    python = fresh_venv(tmp_path / "venv")

    result = pip_install(python, "--require-hashes", "--no-deps", "-r",
                         str(tmp_path / "requirements.txt"), "--index-url", servers[0].url)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"


def test_a_tampered_hash_makes_pip_refuse(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    text = export(cli, houses[0], tmp_path, "--no-deps", "sfdemo")
    digest = text.split("--hash=sha256:")[1][:64]
    forged = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    (tmp_path / "requirements.txt").write_text(text.replace(digest, forged))
    python = fresh_venv(tmp_path / "venv")

    result = pip_install(python, "--require-hashes", "--no-deps", "-r",
                         str(tmp_path / "requirements.txt"), "--index-url", servers[0].url)  # fmt: skip

    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stderr
    assert forged in result.stderr and digest in result.stderr  # expected vs got
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/sfdemo*"))


def test_dependencies_are_resolved_for_the_target_and_pinned(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    team, public = houses
    team_server, public_server = servers

    text = export(cli, team, tmp_path, "other-proj", "--deps-index-url", public_server.url)

    sfdep = next(w for w in public.wheels("sfdep") if w.version == "1.0")
    assert f"sfdep==1.0 \\\n    --hash=sha256:{sfdep.sha256}\n" in text
    assert "sfdemo==1.1+cu130" in text  # a wheelhouse dependency comes along from the wheelhouse
    assert "sfdemo==99.0" not in text
    assert f"resolved by uv from {public_server.url} for target dgx-spark" in text
    python = fresh_venv(tmp_path / "venv")

    # Hash-checking mode is the one place a second index is harmless: only listed files fit.
    result = pip_install(python, "--require-hashes", "-r", str(tmp_path / "requirements.txt"),
                         "--index-url", team_server.url, "--extra-index-url", public_server.url)  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert run_python(python, INSTALLED) == "1.1 1.1+cu130"
    assert run_python(python, "import importlib.metadata as m; print(m.version('sfdep'))") == "1.0"


def test_every_platform_file_of_a_version_is_hashed(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    house = Wheelhouse(tmp_path / "house")
    for tag in ("py3-none-manylinux_2_39_aarch64", "py3-none-manylinux_2_35_x86_64"):
        raw = make_wheel(tmp_path / "raw" / tag, "sfplat", "2.0", {"sfplat/__init__.py": b""},
                         tag=tag)  # fmt: skip
        house.publish(normalize(raw, out_dir=tmp_path / "out", source_date_epoch=EPOCH),
                      PROVENANCE)  # fmt: skip

    text = export(cli, house, tmp_path, "--deps-index-url", servers[1].url)

    hashes = sorted(wheel.sha256 for wheel in house.wheels())
    assert text.count("--hash=sha256:") == 2
    assert (
        f"sfplat==2.0 \\\n    --hash=sha256:{hashes[0]} \\\n    --hash=sha256:{hashes[1]}\n" in text
    )

    result = cli("export", "--project", REPO, "--wheelhouse", house.root, "--target", "hopper",
                 "--deps-index-url", servers[1].url)  # fmt: skip
    assert result.code == 0, result.err

    only_x86 = Wheelhouse(tmp_path / "x86")
    only_x86.publish(next(w.path for w in house.wheels() if "x86_64" in w.filename), PROVENANCE)
    result = cli("export", "--project", REPO, "--wheelhouse", only_x86.root)
    assert result.code == 2
    assert "no file of sfplat 2.0 installs on target dgx-spark" in result.err


def test_pip_conf_keeps_pip_on_the_team_index(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    team_server, public_server = servers
    export(cli, houses[0], tmp_path, "--no-deps", "--index-url", team_server.url,
           "--pip-conf", tmp_path / "pip.conf")  # fmt: skip
    assert (
        (tmp_path / "pip.conf").read_text().endswith(f"[global]\nindex-url = {team_server.url}\n")
    )
    python = fresh_venv(tmp_path / "venv")

    configured = _pip(python, {"PIP_CONFIG_FILE": str(tmp_path / "pip.conf")}, "sfdemo")
    mixed = _pip(fresh_venv(tmp_path / "mixed"), {"PIP_CONFIG_FILE": os.devnull}, "sfdemo",
                 "--index-url", team_server.url, "--extra-index-url", public_server.url)  # fmt: skip

    assert configured.returncode == 0, configured.stderr
    assert run_python(python, "import sfdemo; print(sfdemo.VALUE)") == "1.1"
    # The danger the configuration avoids: with a second index, the highest version wins.
    assert mixed.returncode == 0, mixed.stderr
    assert run_python(tmp_path / "mixed/bin/python", "import sfdemo; print(sfdemo.VALUE)") == "99.0"


def test_uv_toml_takes_team_packages_only_from_the_team_index(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], servers: Servers, tmp_path: Path
) -> None:
    uv = uv_binary()
    team_server, public_server = servers
    export(cli, houses[0], tmp_path, "--no-deps", "--index-url", team_server.url,
           "--deps-index-url", public_server.url, "--uv-toml", tmp_path / "uv.toml")  # fmt: skip
    python = fresh_venv(tmp_path / "venv")

    result = subprocess.run(
        [uv, "pip", "install", "--config-file", str(tmp_path / "uv.toml"), "--python", str(python),
         "sfdemo", "sfdep"],
        env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")},
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr  # every key is one uv knows
    # sfdemo from the team index although the default index has 99.0; sfdep from the default.
    assert run_python(python, "import sfdemo; print(sfdemo.VALUE)") == "1.1"
    assert run_python(python, "import importlib.metadata as m; print(m.version('sfdep'))") == "2.0"


@pytest.mark.network
def test_dependencies_from_pypi_are_pinned(cli: CliRunner, tmp_path: Path) -> None:
    house = Wheelhouse(tmp_path / "house")
    house.publish(build(tmp_path, "sfdemo", "1.0", requires=["six==1.17.0"]), PROVENANCE)

    text = export(cli, house, tmp_path)

    # six 1.17.0's files on PyPI (its one wheel and its sdist), by their published sha256:
    # uv's --generate-hashes lists every file of the pinned version.
    assert (
        "six==1.17.0 \\\n    --hash=sha256:"
        "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274 \\\n"
        "    --hash=sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81\n"
    ) in text
    assert "resolved by uv from https://pypi.org/simple for target dgx-spark" in text


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["nope"],
            "error: export: no project 'nope' in the wheelhouse; it has: other-proj, sfdemo",
        ),
        (["sfdemo==2.0"], "error: export: the wheelhouse has sfdemo 1.0, 1.1+cu130, not 2.0"),
        (["sfdemo==bogus"], "error: export: 'sfdemo==bogus' is not PROJECT or PROJECT==VERSION"),
        (["--index-url", "team.example/simple"], "is not an http(s):// or file:// index URL"),
        (["--target", "nowhere"], "error: --target: no target 'nowhere'"),
    ],
)
def test_bad_input_is_one_line(
    cli: CliRunner, houses: tuple[Wheelhouse, Wheelhouse], args: list[str], error: str
) -> None:
    result = cli("export", "--project", REPO, "--wheelhouse", houses[0].root, *args)

    assert result.code == 2
    assert error in result.err
    assert result.err.count("\n") == 1


def test_an_empty_wheelhouse_has_nothing_to_export(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("export", "--wheelhouse", tmp_path, "--no-deps")

    assert result.code == 2
    assert "nothing to export" in result.err


def test_a_dependency_the_wheelhouse_cannot_satisfy_is_named(
    cli: CliRunner, tmp_path: Path
) -> None:
    house = Wheelhouse(tmp_path / "house")
    house.publish(build(tmp_path, "sfdemo", "1.0"), PROVENANCE)
    house.publish(build(tmp_path, "sfapp", "1.0", requires=["sfdemo>=2"]), PROVENANCE)

    result = cli("export", "--project", REPO, "--wheelhouse", house.root, "sfapp")

    assert result.code == 2
    assert "sfapp 1.0 requires sfdemo>=2, and the wheelhouse has only 1.0" in result.err


def _pip(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """pip configured by ``env`` and no PIP_* variables of this machine (no --isolated: the
    configuration file must count)."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-cache-dir",
         "--disable-pip-version-check", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, **env},
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_markers_are_judged_for_the_target_not_this_machine(
    cli: CliRunner, servers: Servers, tmp_path: Path
) -> None:
    """A dependency only the target's CPU needs is pinned when exporting for it from this
    x86_64 machine, and left out for an x86_64 target (uv resolves for --python-platform)."""
    house = Wheelhouse(tmp_path / "house")
    house.publish(build(tmp_path, "sfarm", "1.0", requires=['sfdep<2; platform_machine == "aarch64"']),
                  PROVENANCE)  # fmt: skip
    spark = export(cli, house, tmp_path, "--deps-index-url", servers[1].url)  # dgx-spark: aarch64
    assert "sfdep==1.0 \\\n    --hash=sha256:" in spark
    hopper = export(cli, house, tmp_path, "--target", "hopper", "--deps-index-url", servers[1].url)
    assert "sfdep==" not in hopper


def test_uv_output_pins_only_index_files() -> None:
    """The wheelhouse's own direct URLs are left to export; another direct URL cannot be
    pinned by hash and is refused; an extra does not change the name pinned."""
    from sparkforge.team.export import _compiled_pins
    from sparkforge.util.errors import WheelhouseError

    own = "file:///wh/files/sfdemo-1.0-py3-none-any.whl"
    text = (f"sfdemo @ {own}\n"
            "requests[socks]==2.32.3 \\\n    --hash=sha256:" + "b" * 64 + " \\\n"
            "    --hash=sha256:" + "a" * 64 + "\n")  # fmt: skip
    (pin,) = _compiled_pins(text, "https://index", {own})
    assert (pin.name, pin.version, pin.hashes) == ("requests", "2.32.3", ("a" * 64, "b" * 64))
    with pytest.raises(WheelhouseError, match="direct URL"):
        _compiled_pins("other @ https://example.org/other-1.0.whl\n", "https://index", {own})
