"""Provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

Written beside each wheel as ``<wheel>.provenance.json``. The subject is the
wheel's sha256; the predicate records the lock entry, target, runner and
toolchain (the pinned repair tools among them), the environment of the build
commands, phase durations and the audit result.

One typed model, :class:`Provenance`: the conductor builds it (:func:`statement`),
the wheelhouse stores its JSON and reads it back through the same model (listing,
the browsable page, the recorded sha256). Reading is lenient: a field an older
sparkforge did not write is empty, never guessed.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Subject(_Part):
    name: str
    digest: dict[str, str] = {}


class Dependency(_Part):
    uri: str
    digest: dict[str, str] = {}
    annotations: dict[str, Any] | None = None


class ExternalParameters(_Part):
    recipe: str = ""
    version: str = ""
    target: dict[str, Any] = {}
    cuda_archs: list[str] = []
    allow_arch_gaps: bool = False
    needs: dict[str, Any] = {}
    installed_needs: dict[str, Any] = {}
    unreviewed: list[str] = []


class InternalParameters(_Part):
    build_key: str = ""
    recipe_sha256: str = ""
    lock_entry: dict[str, Any] = {}
    jobs: int | None = None
    environment: dict[str, Any] = {}
    commands: list[str] = []


class BuildDefinition(_Part):
    build_type: str = Field(BUILD_TYPE, alias="buildType")
    external_parameters: ExternalParameters = Field(
        default_factory=lambda: ExternalParameters.model_validate({}), alias="externalParameters"
    )
    internal_parameters: InternalParameters = Field(
        default_factory=lambda: InternalParameters.model_validate({}), alias="internalParameters"
    )
    resolved_dependencies: list[Dependency] = Field([], alias="resolvedDependencies")


class Builder(_Part):
    id: str = ""
    version: dict[str, Any] = {}


class Metadata(_Part):
    invocation_id: str = Field("", alias="invocationId")
    started_on: str = Field("", alias="startedOn")
    finished_on: str = Field("", alias="finishedOn")


class Byproduct(_Part):
    name: str
    content: Any = None
    media_type: str | None = Field(None, alias="mediaType")
    annotations: dict[str, Any] | None = None


class RunDetails(_Part):
    builder: Builder = Field(default_factory=lambda: Builder.model_validate({}))
    metadata: Metadata = Field(default_factory=lambda: Metadata.model_validate({}))
    byproducts: list[Byproduct] = []


class Predicate(_Part):
    build_definition: BuildDefinition = Field(
        default_factory=lambda: BuildDefinition.model_validate({}), alias="buildDefinition"
    )
    run_details: RunDetails = Field(
        default_factory=lambda: RunDetails.model_validate({}), alias="runDetails"
    )


class Provenance(_Part):
    """The statement beside one wheel."""

    type_: str = Field(STATEMENT_TYPE, alias="_type")
    subject: list[Subject] = []
    predicate_type: str = Field(PREDICATE_TYPE, alias="predicateType")
    predicate: Predicate = Field(default_factory=lambda: Predicate.model_validate({}))

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def empty(cls) -> Provenance:
        return cls.model_validate({})

    @classmethod
    def read(cls, path: Path) -> Provenance | None:
        """The statement in ``path``; None when it is missing or not JSON. A statement
        with a field of an unexpected type keeps every part that does read (its subject,
        audit, recipe, target, key), so one odd field does not hide the rest."""
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            pass
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return cls._salvage(data) if isinstance(data, dict) else None

    @classmethod
    def _salvage(cls, data: dict[str, Any]) -> Provenance:
        """Each part on its own: what validates is kept, the rest is left empty."""

        def part(model: type[_Part], value: object) -> Any:
            """The part without the fields that do not validate; None when what is left
            is not one (a subject or byproduct without its name)."""
            fields = dict(value) if isinstance(value, dict) else {}
            while True:
                try:
                    return model.model_validate(fields)
                except ValidationError as exc:
                    bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
                    if not bad & fields.keys():
                        return None
                    for key in bad:
                        fields.pop(str(key), None)

        def table(value: object, *keys: str) -> object:
            for key in keys:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            return value

        subjects = data.get("subject")
        byproducts = table(data, "predicate", "runDetails", "byproducts")
        found = cls.empty()
        found.subject = [s for s in (part(Subject, item) for item in
                         (subjects if isinstance(subjects, list) else [])) if s is not None]  # fmt: skip
        definition = found.predicate.build_definition
        definition.external_parameters = part(
            ExternalParameters, table(data, "predicate", "buildDefinition", "externalParameters")
        )
        definition.internal_parameters = part(
            InternalParameters, table(data, "predicate", "buildDefinition", "internalParameters")
        )
        found.predicate.run_details.byproducts = [
            item for item in (part(Byproduct, b) for b in
                              (byproducts if isinstance(byproducts, list) else []))
            if item is not None
        ]  # fmt: skip
        return found

    @property
    def external(self) -> ExternalParameters:
        return self.predicate.build_definition.external_parameters

    @property
    def internal(self) -> InternalParameters:
        return self.predicate.build_definition.internal_parameters

    def subject_sha256(self, name: str) -> str | None:
        """The sha256 recorded for the wheel ``name`` when it was published."""
        for subject in self.subject:
            digest = subject.digest.get("sha256")
            if subject.name == name and digest is not None and len(digest) == 64:
                return digest
        return None

    def verdicts(self) -> dict[str, str]:
        """Arch → audit verdict (e.g. {"sm_121": "native"})."""
        for item in self.predicate.run_details.byproducts:
            if item.name == "audit" and isinstance(item.content, dict):
                return {arch: str(result.get("verdict")) for arch, result
                        in sorted(item.content.items()) if isinstance(result, dict)}  # fmt: skip
        return {}

    def tools(self) -> dict[str, str]:
        """What wrote the wheel: the runner identity and toolchain (auditwheel, patchelf, uv …)."""
        return dict(self.predicate.run_details.builder.version)


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
) -> Provenance:
    """The provenance statement for one published wheel."""
    return Provenance.model_validate(
        {
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
                        {
                            "name": "durations",
                            "content": durations,
                            "mediaType": "application/json",
                        },
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
    )
