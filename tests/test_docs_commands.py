"""Every command the README and docs/ show works after the README's set-up: its nox
session exists, its sparkforge subcommand exists (and has a nox session, since the
set-up does not put ``sparkforge`` on PATH), and each option it passes is one that
subcommand takes. Parsed from code blocks and inline code, so a renamed session or
option (the old ``nox -s check-patches``) fails here, not in a newcomer's shell."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from sparkforge.cli import build_parser

DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
# Records of runs on other machines quote what ran there, as it ran.
RECORDS = ("docs/gpu-runs/",)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_START = re.compile(r"(?:^|&&\s*|;\s*|\$\s+)((?:nox -s|sparkforge) [^|;&#]*)")


def _commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) for each ``nox -s …`` or ``sparkforge …`` the file shows."""
    text = path.read_text(encoding="utf-8")
    found: list[tuple[int, str]] = []
    for block in _FENCE.finditer(text):
        line0 = text.count("\n", 0, block.start()) + 2
        body = block.group(1).replace("\\\n", " ")
        for offset, line in enumerate(body.splitlines()):
            for match in _START.finditer(line.strip()):
                found.append((line0 + offset, match.group(1).strip()))
    outside = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in _INLINE.finditer(outside):
        code = match.group(1).strip()
        if code.startswith(("nox -s ", "sparkforge ")):
            found.append((outside.count("\n", 0, match.start()) + 1, code))
    return found


def _all_commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(RECORDS):
            continue
        out += [(f"{relative}:{line}", command) for line, command in _commands(path)]
    return out


@pytest.fixture(scope="module")
def sessions() -> set[str]:
    nox = shutil.which("nox")
    if nox is None:
        pytest.skip("nox is not on PATH (the README's set-up installs it)")
    listed = subprocess.run([nox, "--list", "-f", str(REPO / "noxfile.py")], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return {m.group(1) for m in re.finditer(r"^[*-] ([\w.-]+)", listed, re.M)}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def _words(command: str) -> list[str]:
    command = command.replace("…", " ").replace("...", " ")
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


SESSION_COMMANDS = {"serve-index": "serve"}  # nox session → CLI command where they differ


def test_the_docs_show_commands() -> None:
    """The extractor sees the commands (so the checks below cannot pass on nothing)."""
    commands = [c for _, c in _all_commands()]
    assert len(commands) > 100
    assert any(c.startswith("nox -s build-sm121-probe") for c in commands)


def test_every_documented_command_exists(sessions: set[str]) -> None:
    subparsers = _subparsers()
    problems = []
    for where, command in _all_commands():
        words = _words(command)
        if any(w.startswith("<") for w in words[:3]):
            continue  # a pattern (`nox -s <command> -- …`), not a command
        if words[0] == "nox":
            session = words[2] if len(words) > 2 else ""
            if session not in sessions and not re.fullmatch(
                r"(build|smoke)-(<[^>]+>|X|RECIPE)", session
            ):
                problems.append(f"{where}: `{command}`: no nox session '{session}'")
                continue
            rest = words[words.index("--") + 1 :] if "--" in words else []
            sub = SESSION_COMMANDS.get(session, session)
            if session.startswith(("build-", "smoke-")):
                sub = session.split("-", 1)[0]
        else:
            sub = words[1] if len(words) > 1 else ""
            rest = words[2:]
            if sub not in subparsers and sub not in ("--help", "--version"):
                problems.append(f"{where}: `{command}`: no sparkforge command '{sub}'")
                continue
            session = {v: k for k, v in SESSION_COMMANDS.items()}.get(sub, sub)
            if sub in subparsers and sub not in ("build", "smoke") and session not in sessions:
                problems.append(f"{where}: `{command}`: 'sparkforge' is not on PATH after the "
                                f"set-up and there is no `nox -s {session}`")  # fmt: skip
        if sub in subparsers:
            known = _options(subparsers[sub])
            for word in rest:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and flag != "--" and flag not in known:
                    problems.append(f"{where}: `{command}`: '{sub}' has no option {flag}")
    assert not problems, "\n".join(problems)


def test_a_wrong_command_is_caught(
    sessions: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a doc naming a missing session and option is reported."""
    doc = tmp_path / "bad.md"
    doc.write_text("Run `nox -s check-patchez` or\n\n```bash\nnox -s lock -- --no-such-flag\n```\n")
    monkeypatch.setattr(f"{__name__}.DOCS", [doc])
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    with pytest.raises(AssertionError) as caught:
        test_every_documented_command_exists(sessions)
    assert "no nox session 'check-patchez'" in str(caught.value)
    assert "'lock' has no option --no-such-flag" in str(caught.value)
