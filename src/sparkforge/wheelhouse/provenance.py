"""Provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

Written beside each wheel as ``<wheel>.provenance.json``. The subject is the
wheel's sha256; the predicate records the lock entry, target, runner and
toolchain, the environment of the build commands, phase durations and the
audit result.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
import uuid
from typing import TYPE_CHECKING, Any

from sparkforge import __version__

if TYPE_CHECKING:
    from sparkforge.building.plan import BuildPlan

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:sparkforge:buildtype:wheel:v1"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _dependencies(plan: BuildPlan) -> list[dict[str, Any]]:
    source = plan.lock.source
    deps: list[dict[str, Any]] = []
    if source.kind == "git":
        deps.append(
            {"uri": f"git+{source.git}@{source.ref}", "digest": {"gitCommit": source.commit}}
        )
    elif source.kind == "url":
        deps.append({"uri": source.url, "digest": {"sha256": source.sha256}})
    else:
        deps.append(
            {
                "uri": f"file:{source.path}",
                "digest": {"sha256": source.tree_sha256},
                "annotations": {"digestOf": "sparkforge tree hash"},
            }
        )
    for patch in plan.series.patches:
        rel = patch.path.relative_to(plan.project).as_posix()
        deps.append({"uri": f"file:{rel}", "digest": {"sha256": patch.sha256}})
    for req in plan.lock.build_requires:
        deps.append(
            {
                "uri": f"pkg:pypi/{req.name}@{req.version}",
                "digest": {"sha256": req.hashes[0]} if len(req.hashes) == 1 else {},
                "annotations": {"acceptedSha256": req.hashes},
            }
        )
    return deps


def statement(
    plan: BuildPlan,
    wheel_name: str,
    wheel_sha256: str,
    *,
    durations: dict[str, float],
    started: float,
    audit: dict[str, Any],
    arch_gaps_allowed: bool,
    toolchain: dict[str, str],
) -> dict[str, Any]:
    """The provenance statement for one published wheel."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": wheel_name, "digest": {"sha256": wheel_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": plan.recipe.name,
                    "version": plan.version,
                    "target": plan.target.identity(),
                    "cuda_archs": [a.cmake for a in plan.archs],
                    "allow_arch_gaps": plan.options.allow_arch_gaps,
                    "needs": {
                        n: {"version": plan.need_versions.get(n, ""), "build_key": k}
                        for n, k in plan.need_keys.items()
                    },
                    "installed_needs": plan.installed_needs,
                    "unreviewed": list(plan.unreviewed),
                },
                "internalParameters": {
                    "build_key": plan.build_key,
                    "recipe_sha256": plan.recipe.digest,
                    "lock_entry": plan.lock.model_dump(mode="json", exclude_none=True),
                    "jobs": plan.jobs,
                    "environment": plan.env,
                    "commands": plan.describe()["commands"],
                },
                "resolvedDependencies": _dependencies(plan),
            },
            "runDetails": {
                "builder": {
                    "id": f"urn:sparkforge:runner:{plan.runner_identity['runner']}",
                    "version": {"sparkforge": __version__, **plan.runner_identity, **toolchain},
                },
                "metadata": {
                    "invocationId": str(uuid.uuid4()),
                    "startedOn": _iso(started),
                    "finishedOn": _iso(time.time()),
                },
                "byproducts": [
                    {"name": "durations", "content": durations, "mediaType": "application/json"},
                    {
                        "name": "audit",
                        "content": audit,
                        "mediaType": "application/json",
                        "annotations": {"arch_gaps_published": arch_gaps_allowed},
                    },
                    {
                        "name": "host",
                        "content": {"machine": platform.machine(), "system": platform.system()},
                    },
                ],
            },
        },
    }
