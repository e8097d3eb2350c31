"""Recipes: how to build one project (``recipes/<name>/recipe.toml``).

A recipe is declarative: where the source comes from, which versions exist,
what the build needs, the command and environment (templated from the target)
and where the wheel lands. Template variables are checked when the recipe is
loaded, so a typo fails before anything is fetched.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shlex
import string
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sparkforge.config.archs import CudaArch, check_arch, parse_arch
from sparkforge.util.errors import ConfigError, SourceError
from sparkforge.util.models import StrictModel, load_model
from sparkforge.util.tomlfile import is_file, read_toml

# Variables a recipe may use in its command, environment and wheel pattern.
TEMPLATE_VARIABLES: dict[str, str] = {
    "python": "the build environment's Python interpreter",
    "jobs": "parallel compile jobs (memory-aware)",
    "cuda_home": "CUDA toolkit root",
    "cuda_version": "CUDA version, e.g. 13.0",
    "cuda_nodot": "CUDA version without the dot, e.g. 130",
    "cuda_archs": "CMAKE_CUDA_ARCHITECTURES value, SASS only, e.g. 90-real;121-real",
    "cuda_arch_numbers": "CMAKE_CUDA_ARCHITECTURES value, SASS + PTX, e.g. 90;121",
    "torch_cuda_arch_list": "TORCH_CUDA_ARCH_LIST value, e.g. 9.0;12.1",
    "source_dir": "the patched source tree",
    "build_dir": "scratch directory for this build",
    "dist_dir": "where the build command must put its wheel",
    "assets_dir": "verified staged assets",
    "version": "the recipe version being built",
    "target": "the target name",
    "platform": "the target platform tag, e.g. linux_aarch64",
    "runtime_requires": "[runtime] requires joined by ' | ' (PyTorch's PYTORCH_EXTRA_INSTALL_REQUIREMENTS form)",
    "multiarch": "the target's Debian multiarch triple, e.g. aarch64-linux-gnu",
    "cuda_arch_list_a": "space-separated X.Y archs, arch-specific (a) from 9.0 on: FlashInfer's form, e.g. 9.0a 12.1a",
}
RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def template_fields(text: str) -> list[str]:
    """Names used as ``{name}`` in ``text`` (``{{`` escapes a brace)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"malformed template ({exc})") from None
    for _, field, spec, conversion in parsed:
        # Values are plain strings: "{jobs:d}" or "{python!x}" could only fail later, at plan time.
        if field is not None and (spec or conversion):
            written = (
                field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            )
            raise ValueError(
                f"'{{{written}}}' has a conversion or format spec; write a plain '{{{field}}}'"
            )
    return [field for _, field, _, _ in parsed if field is not None]


def _check_template(text: str) -> str:
    for field in template_fields(text):
        if field not in TEMPLATE_VARIABLES:
            known = ", ".join(sorted(TEMPLATE_VARIABLES))
            raise ValueError(f"unknown template variable '{{{field}}}'; known: {known}")
    return text


def _check_env(value: dict[str, str]) -> dict[str, str]:
    for key, text in value.items():
        if not re.fullmatch(ENV_NAME, key):
            raise ValueError(f"'{key}' is not a valid environment variable name")
        try:
            _check_template(text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return value


class SourceSpec(StrictModel):
    path: str | None = None
    git: str | None = None
    url: str | None = None
    pypi: str | None = None  # a project on PyPI: the version's sdist, pinned by sha256
    submodules: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        kinds = [k for k in ("path", "git", "url", "pypi") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of 'path', 'git', 'url' or 'pypi'")
        if self.submodules and self.git is None:
            raise ValueError("'submodules' only applies to a git source")
        if self.url is not None and "{version}" not in self.url:
            raise ValueError("a url source must contain '{version}'")
        return self


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
PLATFORMS = Literal["linux_aarch64", "linux_x86_64"]


class AssetSpec(StrictModel):
    """An input the build would otherwise download: staged and verified before it starts."""

    url: str | None = None  # an archive or file, pinned by sha256 at lock time
    git: str | None = None  # a repository, pinned by commit at lock time
    ref: str | None = None  # tag, branch or commit of a git asset
    submodules: bool = False
    # Paths (from the asset's root, across submodules) the build never reads: not checked
    # out, and a submodule under one is not fetched (e.g. CUTLASS's media/ and docs/).
    exclude: list[str] = Field(default_factory=list)
    unpack: bool = False  # extract the archive (else it is staged as the file itself)
    env: str | None = Field(default=None, pattern=ENV_NAME)  # receives the staged path
    platform: PLATFORMS | None = None  # staged only for targets of this platform

    @model_validator(mode="after")
    def _kind(self) -> AssetSpec:
        if (self.url is None) == (self.git is None):
            raise ValueError("give exactly one of 'url' or 'git'")
        if self.git is not None and not self.ref:
            raise ValueError("a git asset needs a 'ref' (tag, branch or commit)")
        if self.url is not None and (self.ref or self.submodules or self.exclude):
            raise ValueError("'ref', 'submodules' and 'exclude' only apply to a git asset")
        for path in self.exclude:
            parts = path.strip("/").split("/")
            if not path.strip("/") or ".." in parts or path.startswith("/"):
                raise ValueError(f"exclude path '{path}' must be relative and inside the asset")
        if self.git is not None and self.unpack:
            raise ValueError("'unpack' only applies to a url asset")
        return self


class ManifestSpec(StrictModel):
    """Assets listed by a file of the pinned source, expanded at lock time (see manifests.py)."""

    kind: Literal["onnxruntime-deps", "triton-llvm"]
    env: str | None = Field(default=None, pattern=ENV_NAME)  # receives the staging directory


def _check_requirements(value: list[str]) -> list[str]:
    for item in value:
        try:
            Requirement(item)
        except InvalidRequirement as exc:
            raise ValueError(f"'{item}' is not a valid requirement ({exc})") from None
    return value


class VersionSpec(StrictModel):
    ref: str | None = None
    default: bool = False
    # Versions of needed recipes this version builds against (default: their default version).
    needs: dict[str, str] = Field(default_factory=dict)
    assets: dict[str, AssetSpec] = Field(default_factory=dict)
    manifests: list[ManifestSpec] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # added to [build.env] for this version
    runtime: list[str] = Field(default_factory=list)  # added to [runtime] requires for this version
    # Where a release changed its build system (torch 2.15's scikit-build-core, triton's
    # nanobind): build requirements added to [build].requires, and a [build].command and
    # [preflight] that replace the shared ones, for this version only.
    requires: list[str] = Field(default_factory=list)
    command: list[str] | None = None
    preflight: PreflightSpec | None = None
    upstream: UpstreamSpec | None = None  # replaces [upstream] (e.g. a moved requirements file)

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: list[str]) -> list[str]:
        return _check_requirements(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_template(line) for line in value]

    @field_validator("assets")
    @classmethod
    def _asset_names(cls, value: dict[str, AssetSpec]) -> dict[str, AssetSpec]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"asset name '{name}' must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: list[str]) -> list[str]:
        return _check_requirements(value)


class BuildSpec(StrictModel):
    requires: list[str] = Field(default_factory=list)
    command: list[str] = Field(min_length=1)
    wheel: str = "{dist_dir}/*.whl"
    env: dict[str, str] = Field(default_factory=dict)
    cuda_archs: list[str] = Field(default_factory=list)
    ptx: bool = False
    local_version: str | None = None

    @field_validator("requires")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        return _check_requirements(value)

    @field_validator("command")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        for line in value:
            _check_template(line)
            try:
                shlex.split(line)
            except ValueError as exc:
                raise ValueError(f"cannot split command {line!r} ({exc})") from None
        return value

    @field_validator("wheel", "local_version")
    @classmethod
    def _templated(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)

    @field_validator("cuda_archs")
    @classmethod
    def _archs(cls, value: list[str]) -> list[str]:
        for item in value:
            check_arch(item)
        return value


class UpstreamSpec(StrictModel):
    """Where upstream declares what its build needs and what its release pairs with.

    Read from the pinned source at lock time and recorded in the lock (``upstream``);
    plans are checked against that record offline (see consistency.py).
    """

    # The directory (in the source) whose pyproject.toml the build front-end builds.
    project: str = ""
    # Files of the pinned source in pip requirement format: pins on paired projects.
    requirements: list[str] = Field(default_factory=list)
    # Files holding only a version, and the project it is the version of
    # (e.g. PyTorch's .ci/docker/triton_version.txt names the triton it pairs with).
    version_files: dict[str, str] = Field(default_factory=dict)  # path -> project
    # Declared requirements this recipe deliberately does not follow: project -> the reason.
    waive: dict[str, str] = Field(default_factory=dict)

    @field_validator("waive")
    @classmethod
    def _reasons(cls, value: dict[str, str]) -> dict[str, str]:
        for project, reason in value.items():
            if len(reason.split()) < 3:
                raise ValueError(f"waiving '{project}' needs a reason of a few words")
        return value


class RuntimeSpec(StrictModel):
    """What the wheel needs at run time: it must declare these (Requires-Dist)."""

    requires: list[str] = Field(default_factory=list)

    @field_validator("requires")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        return _check_requirements(value)


CONFIGURE_OUTPUT = "configure output"


class ExpectSpec(StrictModel):
    """A feature the recipe promises, as a line the configure step must write."""

    feature: str  # e.g. "cuDNN"
    # Templated path of a file the configure step writes, or "configure output".
    file: str = CONFIGURE_OUTPUT
    pattern: str  # a regular expression one line must match
    absent: bool = False  # the feature is on when NO line matches (e.g. a "turning it off" warning)

    @field_validator("file")
    @classmethod
    def _templated(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"'{value}' is not a regular expression ({exc})") from None
        return value


class PreflightSpec(StrictModel):
    """Upstream's configure step, run offline before any compile (``--preflight``)."""

    # Run the build front-end's own dependency check (pypa/build) on this directory
    # of the source tree ("." for the top); empty when the build does not use it.
    frontend: str = ""
    configure: list[str] = Field(default_factory=list)
    # Files the configure step writes that hold the generated CUDA compile flags.
    flags: list[str] = Field(default_factory=list)
    expect: list[ExpectSpec] = Field(default_factory=list)

    @field_validator("configure")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        return BuildSpec._commands(value)

    @field_validator("flags")
    @classmethod
    def _files(cls, value: list[str]) -> list[str]:
        return [_check_template(item) for item in value]


class RepairSpec(StrictModel):
    exclude: list[str] = Field(default_factory=list)
    # After auditwheel: libraries (globs inside the wheel) -> RPATH entries put in front,
    # e.g. where the nvidia-* wheels the wheel declares install their libraries.
    rpath: dict[str, list[str]] = Field(default_factory=dict)


class SmokeSpec(StrictModel):
    requires: list[str] = Field(default_factory=list)
    gpu: bool = True
    # Also install what the wheels declare (Requires-Dist: nvidia-* for torch…) that
    # this wheelhouse does not provide, from the default index.
    dependencies: bool = False


class Recipe(StrictModel):
    """A recipe: the schema of ``recipes/<name>/recipe.toml`` (its fields) and where it was
    read from (``path``, ``directory``, ``digest``). One model for the noun: the loader
    validates the file into it, and every stage reads it."""

    name: str = Field(pattern=RECIPE_NAME.pattern)
    dist: str
    summary: str
    # Peak memory of one compile job (sizes MAX_JOBS); say where the figure comes from.
    # At least 10 MB: a smaller divisor makes "available memory ÷ memory per job" infinite.
    memory_per_job_gb: float = Field(ge=0.01, allow_inf_nan=False)
    disk_gb: float = Field(default=2.0, gt=0)  # free space a build needs (sources + build tree)
    cuda: bool = True  # the wheel must carry CUDA device code (a CPU-only result is refused)
    needs: list[str] = Field(default_factory=list)
    source: SourceSpec
    versions: dict[str, VersionSpec] = Field(min_length=1)
    build: BuildSpec
    repair: RepairSpec = RepairSpec()
    smoke: SmokeSpec = SmokeSpec()
    upstream: UpstreamSpec = UpstreamSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    preflight: PreflightSpec = PreflightSpec()

    @model_validator(mode="after")
    def _versions(self) -> Recipe:
        defaults = [v for v, spec in self.versions.items() if spec.default]
        if len(self.versions) > 1 and len(defaults) != 1:
            raise ValueError("with several versions, exactly one must have default = true")
        for version, spec in self.versions.items():
            unknown = sorted(set(spec.needs) - set(self.needs))
            if unknown:
                raise ValueError(
                    f"version '{version}' pins needs.{unknown[0]}, which is not in 'needs'"
                )
        if self.source.git is not None:
            missing = [v for v, spec in self.versions.items() if not spec.ref]
            if missing:
                raise ValueError(
                    f"git source: version '{missing[0]}' needs a 'ref' (tag or commit)"
                )
        return self

    # Where the file was read from, and versions asked for on demand that it does not
    # list: version -> the listed version whose settings it borrows (see with_version).
    # Such a combination is unreviewed.
    _path: Path = PrivateAttr(default=Path("recipe.toml"))
    _digest: str = PrivateAttr(default="")
    _derived: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def directory(self) -> Path:
        return self._path.parent

    @property
    def digest(self) -> str:
        """sha256 of recipe.toml's bytes: a changed recipe makes its lock entry stale."""
        return self._digest

    @property
    def derived(self) -> dict[str, str]:
        return dict(self._derived)

    def _located(self, path: Path, digest: str, derived: dict[str, str]) -> Recipe:
        self._path, self._digest, self._derived = path, digest, dict(derived)
        return self

    @property
    def smoke_script(self) -> Path:
        return self.directory / "smoke.py"

    @property
    def extra_archs(self) -> tuple[CudaArch, ...]:
        where = f"{self.path}: key 'build.cuda_archs'"
        return tuple(parse_arch(a, where=where) for a in self.build.cuda_archs)

    def build_requires(self, version: str) -> list[str]:
        """The build requirements of ``version``: the shared ones plus its own."""
        return [*self.build.requires, *self.versions[version].requires]

    def build_command(self, version: str) -> list[str]:
        return self.versions[version].command or self.build.command

    def preflight_for(self, version: str) -> PreflightSpec:
        return self.versions[version].preflight or self.preflight

    def upstream_for(self, version: str) -> UpstreamSpec:
        return self.versions[version].upstream or self.upstream

    def runtime_requires(self, version: str) -> list[str]:
        """What the wheel of ``version`` must declare at run time."""
        return [*self.runtime.requires, *self.versions[version].runtime]

    def need_version(self, version: str, need: str) -> str | None:
        """The version of ``need`` that ``version`` builds against (None: its default)."""
        return self.versions[version].needs.get(need)

    def default_version(self) -> str:
        for version, spec in self.versions.items():
            if spec.default:
                return version
        return next(iter(self.versions))

    def version(self, requested: str | None) -> str:
        """The version to build: the requested one (must exist) or the default."""
        if requested is None:
            return self.default_version()
        if requested not in self.versions:
            known = ", ".join(self.versions)
            raise ConfigError(
                f"{self.path}: recipe '{self.name}' has no version '{requested}'; known: {known}"
            )
        return requested

    def with_version(self, requested: str) -> Recipe:
        """This recipe, also listing ``requested`` (an upstream release it does not list)
        with the settings of the nearest listed release: the newest one not above it, else
        the oldest. A git ref that names its version (``v3.5.0``) is renamed (``v3.6.0``);
        the borrowed version's patches are not carried (they live under its own name)."""
        if requested in self.versions:
            return self
        if self.source.path is not None:
            known = ", ".join(self.versions)
            raise ConfigError(
                f"{self.path}: recipe '{self.name}' has no version '{requested}'; known: {known} "
                "(its source is a path: only the versions it lists exist)"
            )
        try:
            wanted = Version(requested)
        except InvalidVersion:
            known = ", ".join(self.versions)
            raise ConfigError(
                f"--version: '{requested}' is not a release version of {self.name} (known: "
                f"{known}); give one, e.g. {self.default_version()}"
            ) from None
        listed: list[tuple[Version, str]] = []
        for name in self.versions:
            try:
                listed.append((Version(name), name))
            except InvalidVersion:
                continue  # "main" and other branches do not order
        same = [name for version, name in listed if version == wanted]
        if same:
            raise ConfigError(
                f"--version: '{requested}' is {self.name} {same[0]}, which {self.path} lists; "
                f"write --version {same[0]}"
            )
        if not listed:
            raise ConfigError(
                f"{self.path}: recipe '{self.name}' lists no release to borrow settings from "
                f"for version '{requested}'; add [versions.\"{requested}\"]"
            )
        below = [item for item in listed if item[0] <= wanted]
        nearest = max(below)[1] if below else min(listed)[1]
        base = self.versions[nearest]
        ref = base.ref
        if ref is not None:
            if nearest not in ref:
                raise ConfigError(
                    f"{self.path}: version '{nearest}' pins ref '{ref}', which does not name "
                    f"its version, so the ref of '{requested}' cannot be derived; add "
                    f'[versions."{requested}"] with its ref'
                )
            ref = ref.replace(nearest, requested)
        versions = {
            **self.versions,
            requested: base.model_copy(update={"ref": ref, "default": False}),
        }
        copy = self.model_copy(update={"versions": versions})
        return copy._located(self._path, self._digest, {**self._derived, requested: nearest})


def available_recipes(project: Path) -> list[str]:
    root = project / "recipes"
    return sorted(p.parent.name for p in root.glob("*/recipe.toml"))


def load_recipe(project: Path, name: str) -> Recipe:
    """Load and validate ``recipes/<name>/recipe.toml``."""
    if not RECIPE_NAME.match(name):
        raise ConfigError(f"'{name}' is not a valid recipe name (lowercase letters, digits, '-')")
    directory = project / "recipes" / name
    path = directory / "recipe.toml"
    if not is_file(path):
        names = available_recipes(project)
        known = ", ".join(names) or "none"
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"no recipe '{name}' ({path} not found); {hint}known recipes: {known}")
    data: dict[str, Any] = read_toml(path, what="recipe")
    spec = load_model(Recipe, path, what="recipe", data=data)
    if spec.name != name:
        raise ConfigError(f"{path}: key 'name': is '{spec.name}' but the directory is '{name}'")
    for need in spec.needs:
        if not is_file(project / "recipes" / need / "recipe.toml"):
            raise ConfigError(f"{path}: key 'needs': no recipe '{need}' in {project / 'recipes'}")
    listed: dict[str, dict[str, object]] = {}  # need -> its versions, each file read once
    for version, version_spec in spec.versions.items():
        for need, wanted in version_spec.needs.items():
            if need not in listed:
                toml = read_toml(project / "recipes" / need / "recipe.toml", what="recipe")
                listed[need] = dict(toml.get("versions", {}))
            if wanted not in listed[need]:
                raise ConfigError(
                    f"{path}: key 'versions.{version}.needs.{need}': recipe '{need}' has no "
                    f"version '{wanted}'; add it to recipes/{need}/recipe.toml or pin a listed one"
                )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return spec._located(path, digest, {})


VersionSpec.model_rebuild()  # its 'preflight' and 'upstream' name models defined after it


def source_root(project: Path, recipe: Recipe) -> Path:
    """The directory of a ``path`` source (the probe), which must exist."""
    rel = recipe.source.path or ""
    root = (project / rel).resolve()
    if not root.is_dir():
        raise SourceError(f"{recipe.path}: key 'source.path': directory {root} does not exist")
    return root
