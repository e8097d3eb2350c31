"""The library API: what the command line calls, and what a script or a CI job can call.

    import sparkforge

    the_plan = sparkforge.plan("sm121-probe", "hopper", cuda_archs=("121",))
    outcome = sparkforge.build("sm121-probe", "hopper", cuda_archs=("121",))
    outcomes = sparkforge.build_all("dgx-spark", ["llama-cpp-python"])
    sparkforge.lock(["vllm"])
    judgement = sparkforge.inspect("wheelhouse/files/x.whl", "dgx-spark")

Every keyword is a field of :class:`Settings`, the one object a run is told (the CLI
builds it once from its arguments). :class:`Run` holds what follows from it: the
project directory, the workspace, the wheelhouse, the console progress goes to, and
the one runner every plan of the run shares. Errors are :class:`SparkforgeError` (one
line each); progress is printed to the console, results are returned.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from rich.console import Console

from sparkforge.building.containers import (
    base_digest,
    find_engine,
    image_id,
    load_engine_settings,
)
from sparkforge.building.plan import BuildOptions, BuildPlan
from sparkforge.building.plan import plan as make_plan
from sparkforge.building.runners import PLATFORMS, ContainerRunner, HostRunner, Runner
from sparkforge.config.archs import CudaArch, parse_arch
from sparkforge.config.graph import recipe_levels
from sparkforge.config.patches import load_series
from sparkforge.config.recipes import Recipe, available_recipes, load_recipe
from sparkforge.config.targets import Target, available_targets, load_target
from sparkforge.locking.lockfile import LockEntry, LockFile, entry_for, read_lock, updating
from sparkforge.locking.resolve import lock_entry, lock_on_demand
from sparkforge.pipeline import execute, up_to_date
from sparkforge.util.errors import ConfigError, LockError, SparkforgeError
from sparkforge.util.workspace import Workspace, wheelhouse_dir
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse

if TYPE_CHECKING:
    from sparkforge.wheel.inspect import Judgement

__all__ = [
    "Outcome",
    "Run",
    "Settings",
    "build",
    "build_all",
    "inspect",
    "lock",
    "plan",
]


@dataclass(frozen=True)
class Settings:
    """What a run is told: the project, the target and how to build. Loaded once."""

    project: Path = Path(".")
    target: str = "dgx-spark"
    workspace: Path | None = None  # default: $SPARKFORGE_WORKSPACE, else the user cache
    wheelhouse: Path | None = None  # default: <project>/wheelhouse
    runner: str = "host"  # or "container"
    cuda_archs: tuple[str, ...] = ()  # added to the target's (e.g. "121", "90a")
    jobs: int | None = None
    python: str | None = None  # overrides the target's Python version
    manylinux: str | None = None
    time_limit: float | None = None
    allow_arch_gaps: bool = False
    keep_build_dir: bool = False
    installed_needs: tuple[str, ...] = ()  # needs taken from the build interpreter
    engine: str | None = None
    engines: Path | None = None
    base_image: str | None = None
    allow_unpinned_base: bool = False
    build_args: tuple[str, ...] = ()  # KEY=VALUE for the builder image
    wait: bool = True  # wait for a workspace another run holds

    def __post_init__(self) -> None:
        # A script may pass strings: paths are Paths from here on.
        for name in ("project", "workspace", "wheelhouse", "engines"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        for name in ("cuda_archs", "installed_needs", "build_args"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))


@dataclass
class Outcome:
    """What became of one recipe in a build or build-all."""

    recipe: str
    version: str = ""
    status: str = "pending"  # "up to date", "built", "failed", "skipped"
    seconds: float = 0.0
    detail: str = ""
    plan: BuildPlan | None = None
    wheel: StoredWheel | None = None


class _NeedArguments(TypedDict):
    need_keys: dict[str, str]
    need_versions: dict[str, str]
    installed_needs: dict[str, str]


def need_arguments(keys: dict[str, str], versions: dict[str, str],
                   installed: dict[str, tuple[str, str]]) -> _NeedArguments:  # fmt: skip
    """plan()'s need_keys, need_versions and installed_needs: what is built or bundled,
    overridden by what the build interpreter has installed."""
    return {
        "need_keys": {**{n: k for n, k in keys.items() if n not in installed},
                      **{n: f"installed:{v}@{site}" for n, (v, site) in installed.items()}},
        "need_versions": {**{n: v for n, v in versions.items() if n not in installed},
                          **{n: v for n, (v, _) in installed.items()}},
        "installed_needs": {n: site for n, (_, site) in installed.items()},
    }  # fmt: skip


def _build_args(items: Sequence[str]) -> dict[str, str]:
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ConfigError(f"--build-arg: '{bad[0]}' is not KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


@dataclass
class Run:
    """One run's settings and what follows from them, made once."""

    settings: Settings
    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    #: Notes that must not mix with a result on stdout (a dry run's JSON).
    notes: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True)
    )
    project: Path = field(init=False)
    workspace: Workspace = field(init=False)
    wheelhouse: Path = field(init=False)
    _runners: dict[tuple[Path, bool], Runner] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.project = self.settings.project.resolve()
        self.workspace = Workspace.locate(self.settings.workspace)
        self.wheelhouse = wheelhouse_dir(self.settings.wheelhouse, self.settings.project)

    # ------------------------------------------------------------------ settings

    def options(self, *, version: str | None = None, force: bool = False) -> BuildOptions:
        return BuildOptions(
            version=version,
            extra_archs=self.archs(),
            jobs=self.settings.jobs,
            force=force,
            allow_arch_gaps=self.settings.allow_arch_gaps,
            python=self.settings.python,
            manylinux=self.settings.manylinux,
            time_limit=self.settings.time_limit,
            keep_build_dir=self.settings.keep_build_dir,
        )

    def archs(self) -> tuple[CudaArch, ...]:
        archs: list[CudaArch] = []
        for value in self.settings.cuda_archs:
            archs += [parse_arch(part, where="--cuda-arch")
                      for part in value.replace(";", ",").split(",") if part]  # fmt: skip
        return tuple(archs)

    def target(self, project: Path | None = None) -> Target:
        """The target as this run sees it: ``python`` overrides its interpreter version."""
        target = load_target(project or self.project, self.settings.target)
        if self.settings.python:
            target = dataclasses.replace(target, python=self.settings.python)
        return target

    def runner(self, project: Path | None = None, workspace: Workspace | None = None, *,
               dry_run: bool = False) -> Runner:  # fmt: skip
        """The runner the settings ask for, one per (workspace, dry run) in a run; the
        container one is configured from the target's builder image, lock.toml's pin for
        it and the engine settings."""
        project = project or self.project
        workspace = workspace or self.workspace
        key = (workspace.root, dry_run)
        if key not in self._runners:
            self._runners[key] = self._make_runner(project, workspace, dry_run=dry_run)
        return self._runners[key]

    def _make_runner(self, project: Path, workspace: Workspace, *, dry_run: bool) -> Runner:
        s = self.settings
        if s.runner == "host":
            return HostRunner()
        build_args = _build_args(s.build_args)  # a bad argument is named before any engine lookup
        base = s.base_image or load_target(project, s.target).builder_image
        engines = load_engine_settings(project, s.engines)
        return ContainerRunner(
            engine=find_engine(s.engine, engines, required=not dry_run),
            dockerfile=project / "Dockerfile.builder",
            base_image=base,
            locked_digest=read_lock(project / "lock.toml").builder.get(base),
            allow_unpinned=s.allow_unpinned_base,
            workspace=workspace,
            build_args=build_args,
        )

    def installed(self, project: Path, runner: Runner,
                  needs: Sequence[str]) -> dict[str, tuple[str, str]]:  # fmt: skip
        """need -> (version, site-packages) for the needs the settings take as installed."""
        target = self.target(project)
        return {need: runner.installed(target, load_recipe(project, need).dist)
                for need in sorted(set(needs) & set(self.settings.installed_needs))}  # fmt: skip

    # --------------------------------------------------------------------- plans

    def plans(self, names: Sequence[str], *, top: str | None, version: str | None = None,
              force: bool = False, dry_run: bool = False,
              needs_only: bool = False) -> list[BuildPlan]:  # fmt: skip
        """Plans for ``names`` and everything they need, needs first; each build key
        includes the keys of what it builds against, at the versions it asks for.
        ``version`` and ``force`` speak of ``top``; with ``needs_only`` (a preflight, a
        bundle) the needs are planned for their keys only."""
        recipe_levels(self.project, list(names))  # refuses cycles in 'needs' with one line
        runner = self.runner(dry_run=dry_run)
        planned: dict[tuple[str, str], BuildPlan] = {}

        def visit(name: str, asked: str | None) -> BuildPlan:
            recipe = load_recipe(self.project, name)
            options = self.options(version=version, force=force)
            if name != top:
                options = dataclasses.replace(options, version=asked, force=False)
            on_demand = None
            if options.version is not None and options.version not in recipe.versions:
                recipe = recipe.with_version(options.version)
                on_demand = self.lock_on_demand(recipe, options.version, dry_run=dry_run)
            resolved = recipe.version(options.version)
            if (name, resolved) in planned:
                return planned[(name, resolved)]
            installed = self.installed(self.project, runner, recipe.needs)
            needs = {need: visit(need, recipe.need_version(resolved, need))
                     for need in sorted(recipe.needs) if need not in installed}  # fmt: skip
            the_plan = make_plan(
                self.project, name, self.settings.target, runner, self.workspace, self.wheelhouse,
                options, dry_run=dry_run or (needs_only and name != top), on_demand=on_demand,
                **need_arguments({n: p.build_key for n, p in needs.items()},
                                 {n: p.version for n, p in needs.items()}, installed),
            )  # fmt: skip
            planned[(name, resolved)] = the_plan
            return the_plan

        for name in names:
            visit(name, None)
        return list(planned.values())

    def lock_on_demand(self, recipe: Recipe, version: str, *, dry_run: bool) -> LockEntry | None:
        """A version the recipe does not list: its lock entry if current, else lock it now
        (network: the sdist's sha256 or the tag's commit) and write it to lock.toml, except
        in a dry run, which plans with the entry in memory."""
        lock_path = self.project / "lock.toml"
        lock = read_lock(lock_path)
        series = load_series(self.project, recipe.name, version)
        try:
            entry_for(lock, lock_path, recipe, version, series)
            return None
        except LockError:
            pass
        return self._lock_derived(recipe, version, write=not dry_run)

    def lock_newest(self, recipe: Recipe, version: str) -> LockEntry:
        """Lock upstream's newest release now (settings of the nearest listed one)."""
        return self._lock_derived(recipe.with_version(version), version, write=True)

    def _lock_derived(self, recipe: Recipe, version: str, *, write: bool) -> LockEntry:
        """Resolve ``version``, which ``recipe`` lists only as derived (network: the sdist's
        sha256 or the tag's commit); with ``write``, record it in lock.toml."""
        borrowed = recipe.derived[version]
        targets = [load_target(self.project, t) for t in available_targets(self.project)]
        with self.console.status(
            f"locking {recipe.name} {version} on demand (settings of {borrowed})"
        ):
            entry = lock_on_demand(self.project, recipe, version, targets, self.workspace)
        pin = entry.source.commit or entry.source.sha256 or entry.source.tree_sha256
        if not write:
            self.notes.print(
                f"resolved {recipe.name} {version} on demand: {entry.source.kind} {pin} (settings "
                f"of {borrowed}; unreviewed); a dry run leaves lock.toml as is", markup=False)  # fmt: skip
            return entry
        lock_path = self.project / "lock.toml"
        with updating(lock_path, self.notes.print) as lock:
            lock.recipes.setdefault(recipe.name, {})[version] = entry
        self.notes.print(
            f"locked {recipe.name} {version} on demand into {lock_path}: {entry.source.kind} "
            f"{pin} (settings of {borrowed}; unreviewed)", markup=False)  # fmt: skip
        return entry

    # -------------------------------------------------------------------- builds

    def build_one(self, the_plan: BuildPlan, *, force: bool = False,
                  workspace: Workspace | None = None,
                  on_built: Callable[[Outcome], None] | None = None) -> Outcome:  # fmt: skip
        """Build one plan, or find it up to date (under the workspace's build lock);
        ``on_built`` hears of a wheel just published (the CLI prints the next steps)."""
        workspace = workspace or self.workspace
        started = time.monotonic()
        outcome = Outcome(the_plan.recipe.name, the_plan.version, plan=the_plan)
        existing = None if force else up_to_date(the_plan)
        if existing is None:
            self.console.print(
                f"[bold]building {the_plan.recipe.name} {the_plan.version}[/] for "
                f"{the_plan.target.name} ({', '.join(a.name for a in the_plan.archs)}), "
                f"{the_plan.jobs} jobs, key {the_plan.build_key[:12]}"
            )
            self.console.print(f"log: {the_plan.log_path}")
            with workspace.exclusive(wait=self.settings.wait, note=self.console.print):
                # A run that held the workspace may have just built the same key.
                existing = None if force else up_to_date(the_plan)
                if existing is None:
                    stored = execute(the_plan, self.console)
                    self.console.print(
                        f"[green]published[/] {stored.path}\n  sha256 {stored.sha256}\n  index "
                        f"{Wheelhouse(the_plan.wheelhouse).index_url()}"
                    )
                    outcome.status, outcome.detail, outcome.wheel = "built", stored.filename, stored
                    if on_built is not None:
                        on_built(outcome)
        if existing is not None:
            self.console.print(
                f"up to date: {existing} (build key {the_plan.build_key[:12]}; --force rebuilds)"
            )
            outcome.status, outcome.detail = "up to date", existing.name
        outcome.seconds = time.monotonic() - started
        return outcome

    def preflight(self, the_plan: BuildPlan, *, upstream_needs: bool = False) -> float:
        """One plan's preflight (configure and front-end checks, no compile); its seconds."""
        from sparkforge.verify.preflight import run as run_preflight

        self.console.print(
            f"[bold]preflight {the_plan.recipe.name} {the_plan.version}[/] for "
            f"{the_plan.target.name} ({', '.join(a.name for a in the_plan.archs)}), key "
            f"{the_plan.build_key[:12]}"
        )
        with self.workspace.exclusive(wait=self.settings.wait, note=self.console.print):
            result = run_preflight(the_plan, self.console, upstream_needs=upstream_needs)
        self.console.print(
            f"[green]preflight passed[/]: {the_plan.recipe.name} {the_plan.version} in "
            f"{result.seconds:.1f} s (network: {result.isolation}); nothing was compiled or "
            "published"
        )
        return result.seconds

    def build(self, recipe: str, *, version: str | None = None, force: bool = False,
              on_built: Callable[[Outcome], None] | None = None) -> list[Outcome]:  # fmt: skip
        """Build ``recipe`` after building (or finding up to date) what it needs; one
        outcome per plan, the recipe asked for last."""
        plans = self.plans([recipe], top=recipe, version=version, force=force)
        outcomes = []
        for need in plans[:-1]:
            outcome = self.build_one(need, on_built=on_built)
            self.console.print(f"need {need.recipe.name}: {outcome.status}")
            outcomes.append(outcome)
        outcomes.append(self.build_one(plans[-1], force=force, on_built=on_built))
        return outcomes

    def build_all(self, names: Sequence[str] | None = None, *, force: bool = False,
                  preflight: bool = True,
                  on_built: Callable[[Outcome], None] | None = None) -> list[Outcome]:  # fmt: skip
        """Every recipe (or those named) in dependency order. A failed recipe does not stop
        the others; what needs it is skipped. The preflight of each recipe that has one runs
        before its build, those whose needs are already built first of all."""
        plans = self.plans(list(names or available_recipes(self.project)), top=None)
        outcomes: list[Outcome] = []
        broken: set[str] = set()
        checked: set[str] = set()
        preflight_errors: dict[str, str] = {}

        def check(the_plan: BuildPlan) -> None:
            spec = the_plan.recipe.preflight_for(the_plan.version)
            key = the_plan.build_key
            if not preflight or key in checked or not (spec.configure or spec.frontend):
                return
            checked.add(key)
            if up_to_date(the_plan) is None:
                try:
                    self.preflight(the_plan)
                except SparkforgeError as exc:
                    preflight_errors[key] = f"preflight: {exc.message}"

        # First: the preflight of every recipe whose needs are already in the wheelhouse,
        # so a broken recipe is found in minutes, before hours of compile elsewhere.
        house = Wheelhouse(self.wheelhouse)
        for the_plan in plans:
            if all(house.built(k) for k in the_plan.need_keys.values()):
                check(the_plan)
        for the_plan in plans:
            name, version = the_plan.recipe.name, the_plan.version
            blocked = sorted(set(the_plan.recipe.needs) & broken)
            if blocked:
                outcomes.append(Outcome(name, version, "skipped", plan=the_plan,
                                        detail=f"needs {', '.join(blocked)}, which did not build"))  # fmt: skip
                broken.add(name)
                continue
            check(the_plan)  # those whose needs were built just now
            if the_plan.build_key in preflight_errors:
                outcomes.append(Outcome(name, version, "failed", plan=the_plan,
                                        detail=preflight_errors[the_plan.build_key]))  # fmt: skip
                broken.add(name)
                continue
            try:
                outcomes.append(self.build_one(the_plan, force=force, on_built=on_built))
            except SparkforgeError as exc:
                outcomes.append(Outcome(name, version, "failed", plan=the_plan, detail=exc.message))
                broken.add(name)
        return outcomes

    # ---------------------------------------------------------------------- lock

    def lock(self, recipes: Sequence[str] = (), *, upgrade: Sequence[str] = (),
             versions: Sequence[str] = (), builder: bool = False,
             targets: Sequence[str] = (), base_images: Sequence[str] = ()) -> Path:  # fmt: skip
        """Pin every input by content into lock.toml: each recipe's listed versions (or
        those of ``recipes``; ``upgrade`` re-resolves moving refs), ``versions`` more of the
        one recipe named, and with ``builder`` the builder base images' digests (of
        ``targets``, or the images ``base_images`` names), pulled first when missing. Returns
        the lock file's path; nothing is written when anything fails."""
        lock_path = self.project / "lock.toml"
        with updating(
            lock_path, self.notes.print
        ) as lock:  # one writer at a time; nothing written on an error
            self._lock_into(lock, recipes, upgrade=upgrade, versions=versions, builder=builder,
                            targets=targets, base_images=base_images)  # fmt: skip
        self.console.print(f"wrote {lock_path}")
        return lock_path

    def _lock_into(self, lock: LockFile, recipes: Sequence[str], *, upgrade: Sequence[str],
                   versions: Sequence[str], builder: bool, targets: Sequence[str],
                   base_images: Sequence[str]) -> None:  # fmt: skip
        project = self.project
        # `lock --upgrade triton` alone re-resolves triton only; plain `lock` does every recipe.
        names = list(recipes) or ([] if upgrade else available_recipes(project))
        if builder:
            engine = find_engine(
                self.settings.engine, load_engine_settings(project, self.settings.engines)
            )
            wanted: list[tuple[str, Target | None]] = [(ref, None) for ref in base_images] or [
                (load_target(project, name).builder_image, load_target(project, name))
                for name in targets or available_targets(project)
            ]
            for ref, target in wanted:
                if image_id(engine, ref) is None:
                    platform: list[str] = (
                        ["--platform", PLATFORMS[target.machine]] if target else []
                    )
                    with self.console.status(f"pulling {ref} to pin it"):
                        engine.output("pull", *platform, ref, timeout=3600)
                lock.builder[ref] = base_digest(engine, ref)
                why = f"target {target.name}" if target else "--base-image"
                self.console.print(f"pinned builder base {ref}: {lock.builder[ref]} ({why})")
            if not recipes and not upgrade:
                return
        for name in upgrade:
            if name not in names:
                names.append(name)
        if versions and len(recipes) != 1:
            raise ConfigError(
                "lock --version: name exactly one recipe, e.g. `lock vllm --version 0.33.0`"
            )
        all_targets = [load_target(project, t) for t in available_targets(project)]
        loaded = {name: load_recipe(project, name) for name in names}
        for name, recipe in loaded.items():
            # Versions locked on demand earlier are kept current, and `versions` adds some.
            unlisted = [v for v, e in lock.recipes.get(name, {}).items()
                        if e.derived_from is not None and v not in recipe.versions]  # fmt: skip
            asked = list(versions) if recipes and name == recipes[0] else []
            for version in dict.fromkeys([*unlisted, *asked]):
                recipe = recipe.with_version(version)
            for version in recipe.versions:
                series = load_series(project, name, version)
                previous = lock.recipes.get(name, {}).get(version)
                with self.console.status(f"locking {name} {version}"):
                    entry = lock_entry(project, recipe, version, series, all_targets,
                                       self.workspace, previous=previous,
                                       upgrade=name in upgrade)  # fmt: skip
                if version in recipe.derived:
                    entry = entry.model_copy(update={"derived_from": recipe.derived[version]})
                lock.recipes.setdefault(name, {})[version] = entry
                src = entry.source
                pin = src.commit or src.sha256 or src.tree_sha256
                self.console.print(
                    f"locked {name} {version}: {src.kind} {pin}, {len(entry.patches)} patches, "
                    f"{len(entry.build_requires)} build requirements"
                )
        for name in [n for n in lock.recipes if n not in available_recipes(project)]:
            del lock.recipes[name]
            self.console.print(f"dropped {name} (no such recipe)")


# ------------------------------------------------------------------ cleaning

#: What ``clean`` removes, by kind: never the wheelhouse, lock, downloads, mirrors or ccache.
CLEANABLE = {
    "scratch": "build trees kept after a failure or --keep-build-dir (workspace builds/, tmp/)",
    "envs": "build venvs (workspace envs/; made again from the lock when needed)",
    "verdicts": "cached verdicts of upstream wheels (workspace verdicts/)",
    "images": "builder images (localhost/sparkforge-builder:*; built again when needed)",
}


@dataclass(frozen=True)
class Cleanable:
    kind: str
    what: str  # a path, or an image reference
    size: int
    changed: float  # last change (files) or creation (images), seconds since the epoch


def _size_of(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())


def cleanable(run: Run, kinds: Sequence[str], *, older_than_days: float = 0.0,
              larger_than_bytes: int = 0) -> list[Cleanable]:  # fmt: skip
    """What ``clean`` would remove: of ``kinds``, last changed at least ``older_than_days``
    ago and at least ``larger_than_bytes`` big."""
    unknown = [k for k in kinds if k not in CLEANABLE]
    if unknown:
        raise ConfigError(f"--what: no kind '{unknown[0]}'; kinds: {', '.join(CLEANABLE)}")
    workspace = run.workspace
    folders = {"scratch": [workspace.builds, workspace.root / "tmp"], "envs": [workspace.envs],
               "verdicts": [workspace.root / "verdicts"]}  # fmt: skip
    found: list[Cleanable] = []
    for kind in kinds:
        if kind == "images":
            from sparkforge.building.containers import builder_images

            engine = find_engine(run.settings.engine,
                                 load_engine_settings(run.project, run.settings.engines))  # fmt: skip
            found += [Cleanable(kind, image.ref, image.size, image.created)
                      for image in builder_images(engine)]  # fmt: skip
            continue
        for folder in folders[kind]:
            for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
                found.append(Cleanable(kind, str(entry), _size_of(entry), entry.lstat().st_mtime))
    cutoff = time.time() - older_than_days * 86400
    return [c for c in found if c.changed <= cutoff and c.size >= larger_than_bytes]


def clean(run: Run, items: Sequence[Cleanable]) -> None:
    """Remove ``items`` (from :func:`cleanable`), never under a running build: this
    workspace's, and for builder images (shared by every workspace) any build whose
    container is running. Every item is tried; failures are reported together."""
    failed: list[str] = []
    with run.workspace.exclusive(wait=False, note=run.console.print):
        images = [item for item in items if item.kind == "images"]
        if images:
            from sparkforge.building.containers import remove_image, running_builds

            engine = find_engine(run.settings.engine,
                                 load_engine_settings(run.project, run.settings.engines))  # fmt: skip
            if running_builds(engine):
                raise ConfigError(
                    f"{engine.name} runs build containers (sparkforge-…), maybe of another "
                    "workspace; clean images when they are done"
                )
            for item in images:
                try:
                    remove_image(engine, item.what)
                except SparkforgeError as exc:
                    failed.append(f"{item.what}: {exc.message}")
        for item in items:
            if item.kind == "images":
                continue
            path = Path(item.what)
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                failed.append(f"{path}: {exc.strerror or exc}")
    if failed:
        raise ConfigError(f"could not remove {len(failed)} of {len(items)} item(s); "
                          f"first: {failed[0]}")  # fmt: skip


# ------------------------------------------------------------- the public calls


def _run(target: str | None = None, console: Console | None = None, **settings: Any) -> Run:
    if target is not None:
        settings["target"] = target
    given = Settings(**settings)
    return Run(given, console) if console is not None else Run(given)


def plan(recipe: str, target: str, *, version: str | None = None, dry_run: bool = True,
         console: Console | None = None, **settings: Any) -> BuildPlan:  # fmt: skip
    """The build plan of ``recipe`` for ``target`` (its key, commands, environment); nothing
    is built. ``settings``: the fields of :class:`Settings`."""
    return _run(target, console, **settings).plans([recipe], top=recipe, version=version,
                                                   dry_run=dry_run)[-1]  # fmt: skip


def build(recipe: str, target: str, *, version: str | None = None, force: bool = False,
          console: Console | None = None, **settings: Any) -> Outcome:  # fmt: skip
    """Build ``recipe`` for ``target`` (its needs first) into the wheelhouse; the outcome
    of the recipe asked for (``status`` "built" or "up to date", ``detail`` the wheel)."""
    return _run(target, console, **settings).build(recipe, version=version, force=force)[-1]


def build_all(target: str, recipes: Sequence[str] | None = None, *, force: bool = False,
              preflight: bool = True, console: Console | None = None,
              **settings: Any) -> list[Outcome]:  # fmt: skip
    """Every recipe (or ``recipes``) for ``target`` in dependency order; one outcome each."""
    return _run(target, console, **settings).build_all(recipes, force=force, preflight=preflight)


def lock(recipes: Sequence[str] = (), *, upgrade: Sequence[str] = (),
         versions: Sequence[str] = (), console: Console | None = None,
         **settings: Any) -> Path:  # fmt: skip
    """Pin the inputs of ``recipes`` (default: all) into lock.toml; its path."""
    return _run(None, console, **settings).lock(recipes, upgrade=upgrade, versions=versions)


def inspect(path: str | Path, target: str = "dgx-spark", *,
            project: str | Path = ".") -> Judgement:  # fmt: skip
    """The CUDA code in a wheel (or .so, .cubin, .fatbin) judged for ``target``'s archs."""
    from sparkforge.wheel.inspect import judge

    if not Path(path).exists():
        raise ConfigError(f"{path}: no such wheel or file")
    the_target = load_target(Path(project).resolve(), target)
    archs = {arch.name: arch.sm for arch in the_target.cuda_archs}
    return judge(Path(path), the_target.name, the_target.machine, archs)
