"""Write the GitLab child pipeline for the recipe graph (ci/gitlab/.gitlab-ci.yml runs it).

Reads ``sparkforge graph --json`` and prints one build job per recipe whose
``needs`` are the jobs of every recipe it builds against (transitively, so
their wheels arrive as artifacts), and a publish job that needs them all.
GitLab runs that as a DAG: a recipe starts as soon as what it needs is built,
on any runner with the tags, and the CI system stays the distributed engine.

The output is JSON, which is YAML, so this needs nothing but Python.
Environment: SPARK_RUNNER_TAGS (comma-separated, default ``gb10``).

    sparkforge graph --json > graph.json
    python3 ci/gitlab/child_pipeline.py graph.json > child-pipeline.yml
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

#: Tools for the job, in a venv of its own (the runner keeps pip's cache in the workspace).
SETUP = [
    'python3 -m venv "$CI_PROJECT_DIR/.tools"',
    '"$CI_PROJECT_DIR/.tools/bin/pip" install --quiet --disable-pip-version-check nox uv .',
    'export PATH="$CI_PROJECT_DIR/.tools/bin:$PATH"',
]


def build_job(node: dict[str, Any], closure: list[str], tags: list[str]) -> dict[str, Any]:
    """Build in the builder container (repair + audit gate), keep the audit report,
    smoke-test on the GPU, and keep the wheels with metadata and provenance."""
    recipe, files = node["recipe"], node["files"]
    script = ["nox -s index"] if closure else []  # the wheels of what it needs arrived
    script += [
        # Preflight first: the offline configure and its checks fail in minutes, not hours.
        f'nox -s build-{recipe} -- --runner container --target "$SPARK_TARGET" --preflight',
        f'nox -s build-{recipe} -- --runner container --target "$SPARK_TARGET"',
        "mkdir -p inspect",
        f"for wheel in wheelhouse/files/{files}.whl; do "
        'sparkforge inspect "$wheel" --json --target "$SPARK_TARGET" '
        '> "inspect/$(basename "$wheel").json"; done',
        f'nox -s smoke-{recipe} -- --runner container --require-gpu --target "$SPARK_TARGET"',
    ]
    return {
        "stage": "build",
        "tags": tags,
        "timeout": "10h",
        "needs": [{"job": f"build:{need}", "artifacts": True} for need in closure],
        "before_script": SETUP,
        "script": script,
        "artifacts": {
            "when": "always",
            "expire_in": "30 days",
            "paths": [f"wheelhouse/files/{files}", "inspect/"],
        },
    }


def publish_job(recipes: list[str], tags: list[str]) -> dict[str, Any]:
    """On tags and the default branch, once every build passed; one publish at a time."""
    return {
        "stage": "publish",
        "tags": tags,
        "needs": [{"job": f"build:{recipe}", "artifacts": True} for recipe in recipes],
        "rules": [{"if": "$CI_COMMIT_TAG || $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}],
        "environment": {"name": "team-index"},
        "resource_group": "team-index",
        "before_script": SETUP,
        "script": ["nox -s index", 'nox -s publish -- --to "$TEAM_INDEX_URL"'],
    }


def pipeline(graph: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    nodes = {node["recipe"]: node for level in graph["levels"] for node in level}
    jobs: dict[str, Any] = {"stages": ["build", "publish"]}
    for name, node in nodes.items():  # levels order: what a recipe needs comes first
        jobs[f"build:{name}"] = build_job(node, _closure(name, nodes), tags)
    jobs["publish"] = publish_job(list(nodes), tags)
    return jobs


def _closure(name: str, nodes: dict[str, Any]) -> list[str]:
    """Everything ``name`` needs, directly or not, in graph order."""
    found: set[str] = set()
    pending = list(nodes[name]["needs"])
    while pending:
        need = pending.pop()
        if need not in found:
            found.add(need)
            pending.extend(nodes[need]["needs"])
    return [recipe for recipe in nodes if recipe in found]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: child_pipeline.py GRAPH.json", file=sys.stderr)
        return 2
    graph = json.loads(Path(argv[1]).read_text())
    tags = [tag.strip() for tag in os.environ.get("SPARK_RUNNER_TAGS", "gb10").split(",")]
    print(json.dumps(pipeline(graph, [tag for tag in tags if tag]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
