"""The build stage: plan a build, then run it up to the raw wheel.

``plan`` decides everything up front and changes nothing: it reads the recipe,
target and lock, asks the runner for its identity (nvcc, gcc and Python versions:
it runs them) and hashes a path source's tree, then returns the environment,
commands, paths and the build key. ``prepare`` (sources, patches, runner,
environment) and ``compile_wheel`` (the build commands) run the phases that end in
the raw wheel; ``sparkforge.pipeline`` takes it on through the wheel and wheelhouse
stages. The build key decides "up to date": a wheel published with the same key
makes the build a no-op.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from sparkforge import __version__
from sparkforge.building.buildenv import env_path
from sparkforge.building.runners import Runner
from sparkforge.config.archs import (
    KNOWN_SASS,
    CudaArch,
    arch_list_a,
    cmake_architectures,
    merge_archs,
    torch_arch_list,
    unknown_archs,
)
from sparkforge.config.patches import PatchSeries, load_series
from sparkforge.config.recipes import Recipe, load_recipe
from sparkforge.config.targets import Target, load_target
from sparkforge.locking import consistency
from sparkforge.locking.consistency import Need
from sparkforge.locking.lockfile import LockedAsset, LockEntry, entry_for, read_lock
from sparkforge.sources.materialize import materialize, stage_assets
from sparkforge.sources.patching import apply_series
from sparkforge.util.errors import BuildError, ConfigError, LockError
from sparkforge.util.fetch import tree_sha256
from sparkforge.util.proc import TimeLimitExceeded
from sparkforge.util.progress import BuildLog
from sparkforge.util.workspace import Workspace

#: Where build paths are mapped to inside binaries, so they do not depend on the workspace.
MAPPED_BUILD_DIR = "/sparkforge/build"


@dataclass(frozen=True)
class BuildOptions:
    version: str | None = None
    extra_archs: tuple[CudaArch, ...] = ()
    jobs: int | None = None
    force: bool = False
    allow_arch_gaps: bool = False
    python: str | None = None  # build for this Python instead of the target's
    manylinux: str | None = None  # repair to this policy instead of the target's
    time_limit: float | None = None  # seconds for the build commands, all together
    keep_build_dir: bool = False  # keep the build tree after success (e.g. to relink)


@dataclass(frozen=True)
class Preflight:
    """The recipe's preflight, templated for this plan (see preflight.py)."""

    python: str = ""  # the build environment's interpreter
    frontend: str | None = None  # directory the front-end's dependency check runs on
    commands: tuple[tuple[str, ...], ...] = ()
    flags: tuple[str, ...] = ()
    expect: tuple[tuple[str, str, str, bool], ...] = ()  # (feature, file, pattern, absent)


@dataclass(frozen=True)
class BuildPlan:
    project: Path
    recipe: Recipe
    target: Target
    version: str
    lock: LockEntry
    series: PatchSeries
    archs: tuple[CudaArch, ...]
    jobs: int
    build_key: str
    build_dir: Path
    source_dir: Path
    dist_dir: Path
    env_dir: Path
    env: dict[str, str]
    commands: tuple[tuple[str, ...], ...]
    wheel_pattern: str
    local_version: str | None
    repair_exclude: tuple[str, ...]
    runner: Runner
    runner_identity: dict[str, str]
    python_version: str
    workspace: Workspace
    wheelhouse: Path
    log_path: Path
    assets_dir: Path = Path()
    need_keys: dict[str, str] = field(default_factory=dict)  # needed recipe → its build key
    need_versions: dict[str, str] = field(default_factory=dict)  # needed recipe → its version
    conflicts: tuple[str, ...] = ()  # plan-time conflicts with upstream (dry runs only)
    unreviewed: tuple[str, ...] = ()  # combinations the user chose (e.g. an installed need)
    installed_needs: dict[str, str] = field(default_factory=dict)  # need -> its site-packages
    builder_digest: str | None = None  # the lock's pin of the target's builder base image
    preflight: Preflight = field(default_factory=lambda: Preflight())
    options: BuildOptions = field(default=BuildOptions())
    blocked_by: str | None = None  # why this runner cannot execute the plan (dry runs only)

    @property
    def assets(self) -> list[LockedAsset]:
        """The lock's assets that this target's build stages."""
        return [a for a in self.lock.assets if a.platform in (None, self.target.platform)]

    @property
    def history_key(self) -> str:
        return f"{self.recipe.name}@{self.target.name}"

    def describe(self) -> dict[str, Any]:
        """The plan as plain data (for --dry-run and provenance)."""
        src = self.lock.source
        return {
            "recipe": self.recipe.name,
            "dist": self.recipe.dist,
            "version": self.version,
            "target": self.target.name,
            "platform": self.target.platform,
            "manylinux": self.target.manylinux,
            "cuda_archs": [a.cmake for a in self.archs],
            "source": src.model_dump(mode="json", exclude_none=True),
            "source_date_epoch": self.lock.source_date_epoch,
            "patches": [
                {"name": p.name, "sha256": p.sha256, "why": p.why} for p in self.series.patches
            ],
            "build_requires": [f"{r.name}=={r.version}" for r in self.lock.build_requires],
            "assets": [
                {
                    "name": a.name,
                    "pin": a.pin(),
                    "staged_at": str(self.assets_dir / a.dest),
                    **({"env": a.env} if a.env else {}),
                    **({"from": a.origin} if a.origin else {}),
                }
                for a in self.assets
            ],
            "needs": self.need_keys,
            "need_versions": self.need_versions,
            "upstream": self.lock.upstream.model_dump(mode="json") if self.lock.upstream else None,
            "waived": dict(self.recipe.upstream_for(self.version).waive),
            "runtime_requires": self.recipe.runtime_requires(self.version),
            "seeded": self.lock.seeded,
            "conflicts": list(self.conflicts),
            "unreviewed": list(self.unreviewed),
            "installed_needs": self.installed_needs,
            "builder_image": self.builder_image(),
            "memory_per_job_gb": self.recipe.memory_per_job_gb,
            "jobs": self.jobs,
            "jobs_on_reference_machine": self.reference_jobs(),
            "build_key": self.build_key,
            "runner": self.runner_identity,
            "build_dir": str(self.build_dir),
            "environment": self.env,
            "commands": [shlex.join(c) for c in self.commands],
            "preflight": {
                "frontend": self.preflight.frontend,
                "configure": [shlex.join(c) for c in self.preflight.commands],
                "flags": list(self.preflight.flags),
                "expect": [
                    {"feature": f, "file": p, "pattern": r, "absent": a}
                    for f, p, r, a in self.preflight.expect
                ],
            },
            "wheel": self.wheel_pattern,
            "local_version": self.local_version,
            "repair_exclude": list(self.repair_exclude),
            "wheelhouse": str(self.wheelhouse),
            "output": str(self.wheelhouse / "files" / self.output_pattern),
            "log": str(self.log_path),
            "blocked_by": self.blocked_by,
        }

    def builder_image(self) -> dict[str, str]:
        """The image the container runner builds from (``--base-image`` or the target's),
        and what pins it."""
        base = self.runner_identity.get("base_image", self.target.builder_image)
        return {
            "base": base,
            "digest": self.builder_digest
            or f"not pinned yet (nox -s lock -- --builder --base-image {base})",
            "dockerfile": "Dockerfile.builder",
        }

    def reference_jobs(self) -> str | None:
        """The job count on the target's reference machine, with the arithmetic."""
        machine = self.target.reference_machine
        if machine is None:
            return None
        per_job = self.recipe.memory_per_job_gb
        jobs = job_count_for(machine.cores, machine.memory_gb, per_job)
        return (
            f"{jobs} = min({machine.cores} cores, {machine.memory_gb:g} GB / {per_job:g} GB per "
            f"job) ({machine.source})"
        )

    @property
    def output_pattern(self) -> str:
        """The published wheel's name, up to its tags."""
        name = canonicalize_name(self.recipe.dist).replace("-", "_")
        label = f"+{self.local_version}" if self.local_version else ""
        return f"{name}-{self.version}{label}-*.whl"


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (DGX Spark shares it between CPU and GPU)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 4.0


def job_count_for(cores: int, memory_gb: float, memory_per_job_gb: float) -> int:
    """min(cores, memory ÷ memory per job), at least 1."""
    return max(1, min(cores, int(memory_gb // memory_per_job_gb)))


def job_count(memory_per_job_gb: float, requested: int | None) -> int:
    """Jobs for this machine now (available memory); ``--jobs`` wins."""
    if requested is not None:
        return max(1, requested)
    cores = len(os.sched_getaffinity(0))
    return job_count_for(cores, available_memory_gb(), memory_per_job_gb)


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# The modules whose code decides the wheel's bytes: the plan and the build phase
# (build/plan), the build venv (buildenv), where and how commands run (runners,
# containers), the staged sources and patches (sources/*, util/fetch), the needs' wheels
# (wheelhouse/needs), the conductor (pipeline) and repair/normalize (wheel/repair).
# Their digest is part of every build key: a change to any of them rebuilds, so "up to
# date" never means "built by other code" (the audit, index and CLI are not in it).
OUTPUT_MODULES = ("building/plan.py", "building/buildenv.py", "building/containers.py",
                  "building/runners.py", "sources/materialize.py", "sources/patching.py",
                  "util/fetch.py", "wheelhouse/needs.py", "pipeline.py",
                  "wheel/repair.py")  # fmt: skip


def pipeline_digest(root: Path | None = None) -> str:
    """sha256 over the output-shaping modules' source (``root``: this package)."""
    root = root or Path(__file__).parents[1]
    digest = hashlib.sha256()
    for name in OUTPUT_MODULES:
        digest.update(f"{name}\0".encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _environment(
    target: Target,
    plan_values: dict[str, str],
    recipe: Recipe,
    version: str,
    entry: LockEntry,
    workspace: Workspace,
    *,
    has_ccache: bool,
) -> dict[str, str]:
    """The whole environment of the build commands: nothing leaks in from the caller."""
    build_dir = plan_values["build_dir"]
    prefix_map = f"-ffile-prefix-map={build_dir}={MAPPED_BUILD_DIR}"
    env = {
        "PATH": os.pathsep.join(
            [
                str(Path(plan_values["python"]).parent),
                f"{target.cuda_home}/bin",
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
        ),
        "HOME": f"{build_dir}/home",
        "TMPDIR": f"{build_dir}/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(entry.source_date_epoch),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "CUDA_HOME": target.cuda_home,
        "CUDA_PATH": target.cuda_home,
        "CUDACXX": f"{target.cuda_home}/bin/nvcc",
        "MAX_JOBS": plan_values["jobs"],
        "CMAKE_BUILD_PARALLEL_LEVEL": plan_values["jobs"],
        "CFLAGS": prefix_map,
        "CXXFLAGS": prefix_map,
        # Two words: ccache reads the option itself (and leaves the per-build path out of its
        # hash); joined as -Xcompiler=… it hashed the path and no CUDA object ever hit.
        "CUDAFLAGS": f"-Xcompiler {prefix_map}",
    }
    if has_ccache:
        env.update(
            {
                "CCACHE_DIR": str(workspace.ccache),
                "CCACHE_BASEDIR": build_dir,
                "CCACHE_NOHASHDIR": "1",
                "CMAKE_C_COMPILER_LAUNCHER": "ccache",
                "CMAKE_CXX_COMPILER_LAUNCHER": "ccache",
                "CMAKE_CUDA_COMPILER_LAUNCHER": "ccache",
            }
        )
    for asset in entry.assets:  # each asset's variable names its staged path
        if asset.env and asset.platform in (None, target.platform):
            env[asset.env] = f"{plan_values['assets_dir']}/{asset.dest}"
    extra = {**recipe.build.env, **recipe.versions[version].env}
    for name, value in extra.items():
        env[name] = value.format_map(plan_values)
    return env


def plan(
    project: Path,
    recipe_name: str,
    target_name: str,
    runner: Runner,
    workspace: Workspace,
    wheelhouse: Path,
    options: BuildOptions,
    *,
    dry_run: bool = False,
    need_keys: dict[str, str] | None = None,
    need_versions: dict[str, str] | None = None,
    installed_needs: dict[str, str] | None = None,
    on_demand: LockEntry | None = None,
) -> BuildPlan:
    """Everything a build will do, decided up front; refuses a missing or stale lock.

    ``on_demand`` is the entry of a version the recipe does not list, resolved just now
    and not (yet) in lock.toml (a dry run does not write it).

    A dry run also plans what this runner cannot execute here (e.g. a dgx-spark
    build on x86_64) and says why in ``blocked_by``.
    """
    recipe = load_recipe(project, recipe_name)
    target = load_target(project, target_name)
    if options.python is not None:
        target = dataclasses.replace(target, python=options.python)
    if options.manylinux is not None:
        if not options.manylinux.endswith(f"_{target.machine}"):
            raise ConfigError(
                f"--manylinux {options.manylinux} is not for {target.name}'s platform "
                f"{target.platform}; use a manylinux_2_N_{target.machine} policy"
            )
        target = dataclasses.replace(target, manylinux=options.manylinux)
    if options.version is not None and options.version not in recipe.versions:
        recipe = recipe.with_version(options.version)  # on demand: unreviewed, see below
    version = recipe.version(options.version)
    blocked_by = None
    try:
        runner.check(target)
    except ConfigError as exc:
        if not dry_run:
            raise
        blocked_by = exc.message
    series = load_series(project, recipe.name, version)
    lock_path = project / "lock.toml"
    lock_file = read_lock(lock_path)
    if on_demand is not None and version in recipe.derived:
        entry = on_demand
    else:
        entry = entry_for(lock_file, lock_path, recipe, version, series)
    if entry.source.kind == "path":
        root = project / str(entry.source.path)
        if tree_sha256(root) != entry.source.tree_sha256:
            raise LockError(
                f"{lock_path}: lock entry for {recipe.name} {version} is stale ({root} changed since "
                f"it was locked); run `nox -s lock -- {recipe.name}`"
            )
    needed = {need: load_recipe(project, need) for need in sorted(recipe.needs)}
    versions = {need: (need_versions or {}).get(need) or recipe.need_version(version, need)
                or needed[need].default_version() for need in needed}  # fmt: skip
    installed = installed_needs or {}
    conflicts, unreviewed = consistency.split(consistency.check(
        recipe, version, entry, target,
        [Need(n, needed[n].dist, v, n in installed) for n, v in versions.items()],
        # A plan this runner cannot execute here says nothing about its libraries.
        None if blocked_by else runner.libraries(target),
    ))  # fmt: skip
    if version in recipe.derived:
        borrowed = recipe.derived[version]
        unreviewed.insert(0, (
            f"{recipe.name} {version} is not listed in {recipe.path}: built with the settings, "
            f"assets and needs of {borrowed} (not its patches), locked on demand"
        ))  # fmt: skip
    if conflicts and not dry_run:
        more = f" ({len(conflicts) - 1} more: see --dry-run)" if len(conflicts) > 1 else ""
        raise ConfigError(conflicts[0] + more)
    for origin, group in ((f"{target.path}: key 'cuda_archs'", target.cuda_archs),
                          (f"{recipe.path}: key 'build.cuda_archs'", recipe.extra_archs),
                          ("--cuda-arch", options.extra_archs)):  # fmt: skip
        unknown = unknown_archs(group, target.cuda_version)
        if unknown:
            known = ", ".join(f"sm_{sm}" for sm in sorted(KNOWN_SASS[target.cuda_version]))
            raise ConfigError(
                f"{origin}: CUDA {target.cuda_version} cannot build {unknown[0].name} (it builds "
                f"{known}; 'a' variants from sm_90, 'f' from sm_100); check the arch"
            )
    archs = merge_archs(target.cuda_archs, recipe.extra_archs, options.extra_archs)
    jobs = job_count(recipe.memory_per_job_gb, options.jobs)
    identity = runner.identity(target)
    python_version = identity["python"]
    local = recipe.build.local_version
    needs = {need: (need_keys or {}).get(need, "") for need in sorted(recipe.needs)}
    key = _key(
        {
            "sparkforge": __version__,
            "pipeline": pipeline_digest(),
            "recipe": recipe.digest,
            "version": version,
            "lock": entry.fingerprint(),
            "target": target.identity(),
            "runner": identity,
            "archs": [a.cmake for a in archs],
            # What it builds against: a rebuilt dependency makes this build stale too.
            "needs": needs,
        }
    )
    build_dir = workspace.builds / key[:16]
    env_dir = env_path(
        python_version,
        entry.build_requires,
        workspace.envs,
        # A venv holding this wheelhouse's torch is only reused with that very torch.
        flavour=json.dumps({**identity, "needs": needs} if needs else identity, sort_keys=True),
    )
    values = {
        "python": str(env_dir / "bin" / "python"),
        "jobs": str(jobs),
        "cuda_home": target.cuda_home,
        "cuda_version": target.cuda_version,
        "cuda_nodot": target.cuda_nodot,
        "cuda_archs": cmake_architectures(archs, ptx=recipe.build.ptx),
        "cuda_arch_numbers": ";".join(a.cmake for a in archs),
        "torch_cuda_arch_list": torch_arch_list(archs, ptx=recipe.build.ptx),
        "runtime_requires": " | ".join(recipe.runtime_requires(version)),
        "multiarch": target.multiarch,
        "cuda_arch_list_a": arch_list_a(archs),
        "source_dir": str(build_dir / "src"),
        "build_dir": str(build_dir),
        "dist_dir": str(build_dir / "dist"),
        "assets_dir": str(build_dir / "assets"),
        "version": version,
        "target": target.name,
        "platform": target.platform,
    }
    commands = tuple(
        tuple(token.format_map(values) for token in shlex.split(line))
        for line in recipe.build_command(version)
    )
    spec = recipe.preflight_for(version)
    preflight = Preflight(
        python=values["python"],
        frontend=str(build_dir / "src" / spec.frontend) if spec.frontend else None,
        commands=tuple(
            tuple(t.format_map(values) for t in shlex.split(line)) for line in spec.configure
        ),
        flags=tuple(f.format_map(values) for f in spec.flags),
        expect=tuple(
            (e.feature, e.file.format_map(values), e.pattern, e.absent) for e in spec.expect
        ),
    )
    log_name = f"{recipe.name}-{version}-{target.name}-{key[:12]}.log"
    return BuildPlan(
        project=project,
        recipe=recipe,
        target=target,
        version=version,
        lock=entry,
        series=series,
        archs=archs,
        jobs=jobs,
        build_key=key,
        build_dir=build_dir,
        source_dir=build_dir / "src",
        dist_dir=build_dir / "dist",
        env_dir=env_dir,
        env=_environment(
            target,
            values,
            recipe,
            version,
            entry,
            workspace,
            has_ccache=runner.has_ccache(),
        ),
        commands=commands,
        wheel_pattern=recipe.build.wheel.format_map(values),
        local_version=local.format_map(values) if local else None,
        repair_exclude=tuple(dict.fromkeys((*target.repair_exclude, *recipe.repair.exclude))),
        runner=runner,
        runner_identity=identity,
        python_version=python_version,
        workspace=workspace,
        wheelhouse=wheelhouse,
        log_path=workspace.logs / log_name,
        assets_dir=build_dir / "assets",
        need_keys=needs,
        need_versions=versions,
        conflicts=tuple(conflicts),
        unreviewed=tuple(unreviewed),
        installed_needs=dict(installed),
        preflight=preflight,
        builder_digest=lock_file.builder.get(identity.get("base_image", target.builder_image)),
        options=options,
        blocked_by=blocked_by,
    )


_NO_SPACE = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded")
_KILLED = re.compile(r"Killed signal terminated program|internal compiler error: Killed|\bKilled\b")


def _explain_failure(plan: BuildPlan, argv: Sequence[str], code: int, tail: Sequence[str]) -> str:
    """One line for a failed build command, naming the likely cause and its knob."""
    what = f"{plan.recipe.name} {plan.version}: `{argv[0]} …`"
    text = "\n".join(tail)
    if _NO_SPACE.search(text):
        free = shutil.disk_usage(plan.build_dir).free / 1e9
        return (
            f"{what} ran out of disk space ({free:.1f} GB free in {plan.build_dir.parent}); free "
            f"space or point --workspace at a larger disk (the recipe needs about "
            f"{plan.recipe.disk_gb:g} GB, key 'disk_gb' in {plan.recipe.path}); log: {plan.log_path}"
        )
    if code in (137, -9) or _KILLED.search(text):
        return (
            f"{what} was killed (signal 9), most likely by the out-of-memory killer with {plan.jobs} "
            f"jobs; raise 'memory_per_job_gb' in {plan.recipe.path} (now "
            f"{plan.recipe.memory_per_job_gb:g}) or pass --jobs {max(1, plan.jobs // 2)}; "
            f"log: {plan.log_path}"
        )
    return f"{what} exited with {code}; see the log tail above and {plan.log_path}"


def _one_wheel(pattern: str, recipe: Recipe) -> Path:
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        what = (
            "no wheel"
            if not found
            else f"{len(found)} wheels ({', '.join(Path(f).name for f in found)})"
        )
        raise BuildError(
            f"{recipe.path}: key 'build.wheel': the build produced {what} at {pattern}"
        )
    return Path(found[0])


def prepare(plan: BuildPlan, log: BuildLog, *, local_wheels: Sequence[Path]) -> dict[str, str]:
    """The phases before any compile: a fresh build directory, the verified sources
    and assets, the patches, the runner (image) and the build environment.
    Returns the runner's toolchain facts. Shared by the build and the preflight;
    ``local_wheels`` are the needs' wheels the caller picked (``wheelhouse.needs``)."""
    if plan.build_dir.exists():
        shutil.rmtree(plan.build_dir)
    for sub in ("home", "tmp", "dist", "labelled", "repaired", "final"):
        (plan.build_dir / sub).mkdir(parents=True)
    with log.phase("sources"):
        materialize(plan.project, plan.recipe, plan.lock.source, plan.workspace, plan.source_dir)
        for asset in stage_assets(
            plan.assets, plan.workspace, plan.assets_dir, plan.target.platform
        ):
            log.note(f"staged {asset.name}: {asset.pin()}")
    with log.phase("patches"):
        apply_series(plan.series, plan.source_dir, label=f"{plan.recipe.name} {plan.version}")
        for patch in plan.series.patches:
            log.note(f"applied {patch.name}: {patch.why}")
    with log.phase("runner"):
        toolchain = plan.runner.prepare(plan.target, log.line)
        for key, value in toolchain.items():
            log.note(f"{key}: {value}")
    with log.phase("environment"):
        for need, site in plan.installed_needs.items():
            log.note(f"{need} {plan.need_versions[need]}: the installed one at {site} (unreviewed)")
        copies = []  # into the build directory: the runner (a container, too) sees it
        for wheel in local_wheels:
            copies.append(plan.build_dir / "needs" / wheel.name)
            copies[-1].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, copies[-1])
        plan.runner.make_env(plan.target, plan.lock.build_requires, plan.env_dir, plan.workspace,
                             log.line, local_wheels=copies,
                             site_dirs=sorted(set(plan.installed_needs.values())))  # fmt: skip
    return toolchain


_CCACHE_HITS = ("direct_cache_hit", "preprocessed_cache_hit")
_CCACHE_UNCACHEABLE = (
    "autoconf_test", "bad_compiler_arguments", "bad_output_file", "called_for_preprocessing",
    "compiler_produced_empty_output", "compiler_produced_no_output", "compiler_produced_stdout",
    "could_not_use_modules", "could_not_use_precompiled_header", "multiple_source_files",
    "no_input_file", "output_to_stdout", "preprocessor_error", "unsupported_code_directive",
    "unsupported_compiler_option", "unsupported_environment_variable",
    "unsupported_source_language",
)  # fmt: skip


def _ccache_counters(plan: BuildPlan) -> dict[str, int] | None:
    """ccache's counters where the build runs (``ccache --print-stats``), or None."""
    if "CCACHE_DIR" not in plan.env:
        return None
    lines: list[str] = []
    try:
        code = plan.runner.run(["ccache", "--print-stats"], env=plan.env, cwd=plan.build_dir,
                               sink=lines.append, timeout=60)  # fmt: skip
    except TimeLimitExceeded:
        return None
    counters: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            counters[key.strip()] = int(value)
    return counters if code == 0 and counters else None


def ccache_summary(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """This build's compiler calls as ccache saw them: hits, misses, uncacheable."""

    def delta(keys: Sequence[str]) -> int:
        return sum(after.get(k, 0) - before.get(k, 0) for k in keys)

    return {
        "hits": delta(_CCACHE_HITS),
        "misses": delta(("cache_miss",)),
        "uncacheable": delta(_CCACHE_UNCACHEABLE),
    }


def compile_wheel(plan: BuildPlan, log: BuildLog, toolchain: dict[str, str]
                  ) -> tuple[Path, dict[str, str]]:  # fmt: skip
    """Run the recipe's build commands (under the time limit) and find the one wheel they
    made; returns it and the toolchain facts, with ccache's counts when it ran."""
    with log.phase("build"):
        ccache_before = _ccache_counters(plan)
        limit = plan.options.time_limit
        deadline = None if limit is None else time.monotonic() + limit
        for argv in plan.commands:
            log.line(f"[sparkforge] $ {shlex.join(argv)}")
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = plan.runner.run(argv, env=plan.env, cwd=plan.source_dir, sink=log.line,
                                       timeout=remaining)  # fmt: skip
            except TimeLimitExceeded:
                raise BuildError(
                    f"{plan.recipe.name} {plan.version}: the build exceeded its time limit of "
                    f"{limit:.0f} s and was stopped; raise --time-limit or look for a hang in "
                    f"{plan.log_path}"
                ) from None
            if code != 0:
                raise BuildError(_explain_failure(plan, argv, code, log.tail()))
        ccache_after = _ccache_counters(plan) if ccache_before is not None else None
        if ccache_before is not None and ccache_after is not None:
            calls = ccache_summary(ccache_before, ccache_after)
            toolchain = {**toolchain, "ccache": " ".join(f"{k}={v}" for k, v in calls.items())}
            log.note(
                f"ccache: {calls['hits']} hit(s), {calls['misses']} miss(es), "
                f"{calls['uncacheable']} uncacheable compiler call(s) (builds sharing the "
                "cache at the same time count too)"
            )
        return _one_wheel(plan.wheel_pattern, plan.recipe), toolchain
