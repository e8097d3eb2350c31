"""Property-based tests of everything sparkforge reads from a user.

Whatever a target, recipe, lock or patch series file holds (random TOML, the
shipped files with keys dropped, retyped or filled with arbitrary text, or plain
garbage bytes), and whatever the command line says, the outcome is success or a
:class:`SparkforgeError` whose message is one non-empty line. Any other
exception is a traceback a user would see, and fails the test.

The command line is only ever run with ``build --dry-run``: nothing is built.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO, CliRunner, snapshot
from sparkforge.building import runners
from sparkforge.config.archs import parse_arch
from sparkforge.config.patches import load_series
from sparkforge.config.recipes import load_recipe
from sparkforge.config.targets import load_target
from sparkforge.locking.lockfile import read_lock
from sparkforge.util.errors import SparkforgeError

# SPARKFORGE_PROPERTY_EXAMPLES=5000 for a long local hunt; CI runs the default.
EXAMPLES = int(os.environ.get("SPARKFORGE_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # tmp_path and friends are shared by the examples of one test on purpose: each
    # example rewrites the file it needs, so there is no state to leak between them.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

RECIPE = "sm121-probe"
TARGET = "hopper"
VERSION = "0.1.0"
TARGET_FILE = Path("targets") / f"{TARGET}.toml"
RECIPE_FILE = Path("recipes") / RECIPE / "recipe.toml"
LOCK_FILE = Path("lock.toml")


def _shipped(relative: Path) -> dict[str, Any]:
    return tomllib.loads((REPO / relative).read_text(encoding="utf-8"))


SHIPPED = {path: _shipped(path) for path in (TARGET_FILE, RECIPE_FILE, LOCK_FILE)}


def assert_one_line(error: SparkforgeError) -> None:
    """The contract of every user-facing error."""
    message = error.message
    assert message.strip(), f"empty message from {type(error).__name__}"
    assert len(message.splitlines()) == 1 and "\n" not in message, repr(message)
    assert str(error) == message


def outcome(call: Callable[[], object]) -> None:
    """Run ``call``: success, or a one-line SparkforgeError; anything else propagates."""
    try:
        call()
    except SparkforgeError as error:
        assert_one_line(error)


# --- strategies ---------------------------------------------------------------------------

# Pieces that matter to the parsers: template braces and specs, quoting, comment and
# path characters, NUL, line breaks, non-ASCII digits and letters, the real names.
FRAGMENTS = [
    "{", "}", "{{", "}}", "{python}", "{version}", "{dist_dir}", "{nope}", "{}", "{0}",
    "!r", "!x", ":", ":d", ":>{jobs}", "{python!x}", "{jobs:d}", "{jobs:{jobs}}", "[0]", ".real", " ", "\t", "'", '"', "\\", "#", "=",
    "\x00", "\n", "\r", "\u2028", "é", "ß", "İ", "١٢١", "😀", "..", "/", "-", "*", "0",
    "1.0", "3.12", "13.0", "121", "121a", "sm_", "compute_", "linux_x86_64",
    "manylinux_2_35_x86_64", "Why: because", "Drop-when: later", "probe", RECIPE, TARGET,
]  # fmt: skip
WILD_TEXT = st.one_of(
    st.text(max_size=24),
    st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join),
    st.integers(250, 400).map(lambda n: "x" * n),  # longer than a file name may be
)


def _keys_of(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys_of(item)


KNOWN_KEYS = sorted({key for doc in SHIPPED.values() for key in _keys_of(doc)})
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), WILD_TEXT)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    WILD_TEXT,
    st.datetimes(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
RANDOM_DOCS = st.dictionaries(KEYS, VALUES, max_size=8)


def _places(value: object) -> Iterator[tuple[dict[str, Any] | list[Any], str | int]]:
    """Every (container, key or index) in a TOML document, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from _places(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from _places(item)


def _tables(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _tables(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tables(item)


@st.composite
def mutations(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    """``original`` with 1-3 edits at any depth: drop a key, change a value's type, replace
    a value with arbitrary text, splice text into a string (so that most of it, a command
    template say, stays valid), or add an unknown key."""
    doc = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(doc))
        kind = draw(st.sampled_from(["drop", "retype", "text", "splice", "splice", "add"]))
        if kind == "add" or not places:
            table = draw(st.sampled_from(list(_tables(doc))))
            table[draw(KEYS)] = draw(VALUES)
            continue
        container, key = draw(st.sampled_from(places))
        old = container[key]
        if kind == "drop":
            del container[key]
        elif kind == "splice" and isinstance(old, str):
            at = draw(st.integers(0, len(old)))
            container[key] = old[:at] + draw(WILD_TEXT) + old[at:]
        else:
            container[key] = draw(VALUES if kind == "retype" else WILD_TEXT)
    return doc


def _dump(doc: dict[str, Any]) -> bytes:
    return tomli_w.dumps(doc).encode()


def documents(original: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """File contents: mutations of a shipped file (most of them), random TOML, or arbitrary
    text and bytes."""
    near_valid = mutations(original).map(_dump)
    return st.one_of(
        near_valid,
        near_valid,
        near_valid,
        RANDOM_DOCS.map(_dump),
        st.text().map(str.encode),
        st.lists(st.sampled_from(["[", "]", "[[", "]]", "=", '"', "'''", "\n", *KNOWN_KEYS]))
        .map("".join)
        .map(str.encode),
        st.binary(max_size=64),
    )


DEEP = b"x = " + b"[" * 5000  # nesting deep enough to exhaust a recursive parser


# --- the parsers --------------------------------------------------------------------------


@PROPERTY
@given(content=documents(SHIPPED[TARGET_FILE]))
@example(content=DEEP)
@example(content=b"\xff\xfe name = 1")
def test_load_target_never_crashes(project: Path, content: bytes) -> None:
    (project / TARGET_FILE).write_bytes(content)
    outcome(lambda: load_target(project, TARGET))


@PROPERTY
@given(name=WILD_TEXT)
@example(name="a" * 300)
def test_target_names_never_crash(project: Path, name: str) -> None:
    outcome(lambda: load_target(project, name))


@PROPERTY
@given(content=documents(SHIPPED[RECIPE_FILE]))
@example(content=DEEP)
@example(content=b"\xff\xfe name = 1")
def test_load_recipe_never_crashes(project: Path, content: bytes) -> None:
    (project / RECIPE_FILE).write_bytes(content)
    outcome(lambda: load_recipe(project, RECIPE))


@PROPERTY
@given(name=WILD_TEXT)
@example(name="a" * 300)
def test_recipe_names_never_crash(project: Path, name: str) -> None:
    outcome(lambda: load_recipe(project, name))


@PROPERTY
@given(content=documents(SHIPPED[LOCK_FILE]))
@example(content=DEEP)
@example(content=b"\xff\xfe format = 1")
def test_read_lock_never_crashes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lock.toml"
    path.write_bytes(content)
    outcome(lambda: read_lock(path))


PATCH_NAMES = ["0001-fix.patch", "0002-more.patch", "notes.txt", "series.patch"]
PATCH_TEXT = st.one_of(
    st.lists(
        st.sampled_from(
            [
                "Why: upstream bug 1\n", "Drop-when: fixed upstream\n", "why:", "drop-when:",
                "Explains why: nothing\n", "diff --git a/x b/x\n", "--- a/x\n", "+++ b/x\n",
                "@@ -1 +1 @@\n", "-old\n", "+new\n", "\n", "é\n",
            ]
        ),
        max_size=8,
    ).map("".join),
    st.text(),
).map(str.encode) | st.binary(max_size=32)  # fmt: skip
SERIES_LINES = st.one_of(
    st.sampled_from([*PATCH_NAMES, "# comment", "", "  0001-fix.patch  # why", "missing.patch"]),
    st.sampled_from(["../escape.patch", "sub/dir.patch", "."]),
    WILD_TEXT,
)


@PROPERTY
@given(
    patches=st.dictionaries(st.sampled_from(PATCH_NAMES), PATCH_TEXT, max_size=3),
    series=st.one_of(
        st.lists(SERIES_LINES, max_size=6).map(lambda lines: "\n".join(lines).encode()),
        st.binary(max_size=32),
        st.none(),  # a patch directory without a series file
    ),
)
@example(
    patches={"0001-fix.patch": b"Explains why: nothing\nDrop-when: x\n"}, series=b"0001-fix.patch"
)
@example(patches={}, series=b"\xff\xfe")
@example(patches={}, series=b"x" * 300)
def test_load_series_never_crashes(
    tmp_path: Path, patches: dict[str, bytes], series: bytes | None
) -> None:
    directory = tmp_path / "patches" / RECIPE / VERSION
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, content in patches.items():
        (directory / name).write_bytes(content)
    if series is not None:
        (directory / "series").write_bytes(series)

    def load() -> None:
        loaded = load_series(tmp_path, RECIPE, VERSION)
        for patch in loaded.patches:  # what the build relies on after a successful load
            assert patch.path.parent == directory and patch.path.is_file()
            assert len(patch.sha256) == 64

    outcome(load)


ARCH_TEXT = st.one_of(
    WILD_TEXT,
    st.from_regex(r"(sm_|compute_)?\d{1,4}(\.\d{1,2})?[afb]?", fullmatch=True),
)


@PROPERTY
@given(text=ARCH_TEXT)
def test_parse_arch_never_crashes(text: str) -> None:
    try:
        arch = parse_arch(text, where="--cuda-arch")
    except SparkforgeError as error:
        assert_one_line(error)
        assert error.message.startswith("--cuda-arch: ")
    else:  # every spelling of an arch renders to one that parses back to it
        assert parse_arch(arch.cmake, where="x") == arch
        assert parse_arch(arch.torch, where="x") == arch
        assert parse_arch(arch.name, where="x") == arch


# --- the command line (dry runs only) -----------------------------------------------------


@pytest.fixture
def fast_python_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember find_python's answers: the lookup runs several interpreters (half a second)
    and its answer cannot change during a test."""
    real = runners.find_python
    seen: dict[str, str | SparkforgeError] = {}

    def find_python(version: str) -> str:
        if version not in seen:
            try:
                seen[version] = real(version)
            except SparkforgeError as error:
                seen[version] = error
        found = seen[version]
        if isinstance(found, SparkforgeError):
            raise found
        return found

    monkeypatch.setattr(runners, "find_python", find_python)


def check_dry_run(cli: CliRunner, project: Path, *argv: str) -> int:
    """``sparkforge build --dry-run``: a plan on stdout, or one ``error:`` line on stderr."""
    workspace, wheelhouse = project.parent / "workspace", project.parent / "wheelhouse"
    result = cli(
        "build", "--dry-run", f"--project={project}", f"--workspace={workspace}",
        f"--wheelhouse={wheelhouse}", *argv,
    )  # fmt: skip
    assert "Traceback" not in result.out + result.err
    if result.code == 0:
        plan = json.loads(result.out)
        assert plan["recipe"] == RECIPE
        notes = result.err.splitlines()
        assert all(line.startswith("note: ") for line in notes), result.err
    else:
        assert result.code == 2, result
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.err
        assert lines[0].removeprefix("error: ").strip()
    assert snapshot(wheelhouse) == {}, "a dry run wrote to the wheelhouse"
    assert not (workspace / "builds").exists(), "a dry run started a build"
    return result.code


FILES = st.sampled_from([TARGET_FILE, RECIPE_FILE, LOCK_FILE])


def _with_memory_per_job(value: float) -> bytes:
    return _dump({**SHIPPED[RECIPE_FILE], "memory_per_job_gb": value})


@PROPERTY
@given(file=FILES.flatmap(lambda path: st.tuples(st.just(path), documents(SHIPPED[path]))))
@example(file=(RECIPE_FILE, _with_memory_per_job(5e-324)))  # was OverflowError sizing jobs
@example(file=(RECIPE_FILE, _with_memory_per_job(float("inf"))))
@example(file=(TARGET_FILE, _dump({**SHIPPED[TARGET_FILE], "cuda_home": "/" + "x" * 300})))
def test_cli_dry_run_with_mutated_files(
    cli: CliRunner, project: Path, fast_python_lookup: None, file: tuple[Path, bytes]
) -> None:
    relative, content = file
    path = project / relative
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        check_dry_run(cli, project, "--target", TARGET, RECIPE)
    finally:
        path.write_bytes(original)


TEMPLATED = [("build", "command", 0), ("build", "wheel"), ("build", "local_version"),
             ("build", "env", "CMAKE_ARGS")]  # fmt: skip


@PROPERTY
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(TEMPLATED), st.integers(0, 100), WILD_TEXT),
        min_size=1,
        max_size=2,
    )
)
@example(edits=[(TEMPLATED[0], 7, "!x")])  # "{python!x}": was a ValueError at plan time
@example(edits=[(TEMPLATED[3], 38, ":d")])  # "{cuda_archs:d}"
@example(edits=[(TEMPLATED[1], 9, ":{jobs}")])  # "{dist_dir:{jobs}}"
def test_cli_dry_run_with_spliced_templates(
    cli: CliRunner,
    project: Path,
    fast_python_lookup: None,
    edits: list[tuple[tuple[str | int, ...], int, str]],
) -> None:
    """Text spliced into the templated recipe keys: they do not stale the lock, so the
    plan is made and every template is expanded."""
    path = project / RECIPE_FILE
    original = path.read_bytes()
    doc = copy.deepcopy(SHIPPED[RECIPE_FILE])
    for (*parents, last), at, text in edits:
        container: Any = doc
        for part in parents:
            container = container[part]
        old = container[last]
        at = min(at, len(old))
        container[last] = old[:at] + text + old[at:]
    path.write_bytes(_dump(doc))
    try:
        check_dry_run(cli, project, "--target", TARGET, RECIPE)
    finally:
        path.write_bytes(original)


def test_cli_dry_run_of_the_shipped_files(
    cli: CliRunner, project: Path, fast_python_lookup: None
) -> None:
    """The baseline the mutations start from is a plan, not an error."""
    assert check_dry_run(cli, project, "--target", TARGET, RECIPE) == 0


OPTIONS = {
    "--target": st.one_of(st.sampled_from([TARGET, "dgx-spark"]), WILD_TEXT),
    "--version": st.one_of(st.just(VERSION), WILD_TEXT),
    "--cuda-arch": ARCH_TEXT,
    "--jobs": st.one_of(st.integers(-3, 10**6).map(str), WILD_TEXT),
    "--python": st.one_of(st.sampled_from(["3.12", "3.99"]), WILD_TEXT),
    "--time-limit": st.one_of(st.floats().map(str), WILD_TEXT),
    "--build-arg": WILD_TEXT,
    "--base-image": WILD_TEXT,
    "--allow-arch-gaps": st.none(),
    "--force": st.none(),
    "--bogus": st.none(),
}


@st.composite
def build_arguments(draw: st.DrawFn) -> list[str]:
    """Options as ``--name=value`` (a value can never be taken for an option), then the
    recipe after ``--`` (so even ``-x`` is a recipe name)."""
    argv: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4)):
        value = draw(OPTIONS[name])
        argv.append(name if value is None else f"{name}={value}")
    recipe = draw(st.one_of(st.just(RECIPE), WILD_TEXT))
    return [*argv, "--", recipe]


@PROPERTY
@given(argv=build_arguments())
@example(argv=["--python=garbage", "--", RECIPE])
@example(argv=["--jobs=0", "--", RECIPE])
@example(argv=["--target=" + "a" * 300, "--", RECIPE])
def test_cli_arguments_never_crash(
    cli: CliRunner, project: Path, fast_python_lookup: None, argv: list[str]
) -> None:
    if not any(arg.startswith("--target=") for arg in argv):
        argv = [f"--target={TARGET}", *argv]
    check_dry_run(cli, project, *argv)
