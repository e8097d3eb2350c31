"""The commands behind ``sparkforge``: each parses nothing itself and runs one job.

Imported by :mod:`cli` only once a command that needs it is chosen, so that
``sparkforge --help`` and ``sparkforge inspect`` start without these imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from packaging.utils import canonicalize_name, parse_wheel_filename
from rich.console import Console
from rich.table import Table

from sparkforge.build.containers import base_digest, find_engine, load_engine_settings
from sparkforge.build.plan import BuildOptions, BuildPlan, plan
from sparkforge.build.runners import ContainerRunner, HostRunner, Runner
from sparkforge.config.archs import CudaArch, parse_arch
from sparkforge.config.graph import recipe_levels
from sparkforge.config.patches import load_series
from sparkforge.config.recipes import Recipe, available_recipes, load_recipe
from sparkforge.config.targets import Target, available_targets, load_target
from sparkforge.lock.lockfile import LockEntry, entry_for, read_lock, write_lock
from sparkforge.lock.resolve import lock_entry, lock_on_demand
from sparkforge.pipeline import execute, up_to_date
from sparkforge.sources.materialize import materialize
from sparkforge.sources.patching import apply_series
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import ConfigError, LockError, SparkforgeError
from sparkforge.util.workspace import Workspace, wheelhouse_dir
from sparkforge.verify.repro import compare_wheels, diffoscope_report
from sparkforge.verify.smoke import (
    SKIPPED,
    declared_dependencies,
    run_smoke,
    run_smoke_in_container,
)
from sparkforge.wheelhouse.store import Wheelhouse

console = Console(highlight=False, soft_wrap=True)


def _build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        version=args.version,
        extra_archs=_archs(args.cuda_arch),
        jobs=args.jobs,
        force=getattr(args, "force", False),
        allow_arch_gaps=args.allow_arch_gaps,
        python=args.python,
        manylinux=args.manylinux,
        time_limit=args.time_limit,
        keep_build_dir=getattr(args, "keep_build_dir", False),
    )


def _archs(values: Sequence[str]) -> tuple[CudaArch, ...]:
    archs: list[CudaArch] = []
    for value in values:
        archs += [
            parse_arch(part, where="--cuda-arch")
            for part in value.replace(";", ",").split(",")
            if part
        ]
    return tuple(archs)


def _runner(args: argparse.Namespace, project: Path, workspace: Workspace) -> Runner:
    """The runner the command line asks for; the container one is configured from the
    target's builder image, lock.toml's pin for it and the engine settings."""
    if args.runner == "host":
        return HostRunner()
    build_args = _build_args(args.build_arg)  # a bad argument is named before any engine lookup
    target = load_target(project, args.target)
    base = args.base_image or target.builder_image
    settings = load_engine_settings(project, args.engines)
    return ContainerRunner(
        engine=find_engine(args.engine, settings, required=not getattr(args, "dry_run", False)),
        dockerfile=project / "Dockerfile.builder",
        base_image=base,
        locked_digest=read_lock(project / "lock.toml").builder.get(base),
        allow_unpinned=args.allow_unpinned_base,
        workspace=workspace,
        build_args=build_args,
    )


def _build_args(items: Sequence[str]) -> dict[str, str]:
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ConfigError(f"--build-arg: '{bad[0]}' is not KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


def _wheelhouse(args: argparse.Namespace) -> Path:
    return wheelhouse_dir(args.wheelhouse, args.project)


@dataclass
class _Outcome:
    recipe: str
    version: str = ""
    status: str = "pending"  # "up to date", "built", "failed", "skipped"
    seconds: float = 0.0
    detail: str = ""


def _plans(args: argparse.Namespace, project: Path, workspace: Workspace, names: list[str],
           top: str | None) -> list[BuildPlan]:  # fmt: skip
    """Plans for ``names`` and everything they need, needs first; each build key
    includes the keys of what it builds against, at the versions it asks for."""
    recipe_levels(project, names)  # refuses cycles in 'needs' with one line
    runner = _runner(args, project, workspace)
    planned: dict[tuple[str, str], BuildPlan] = {}

    def visit(name: str, version: str | None) -> BuildPlan:
        recipe = load_recipe(project, name)
        options = _build_options(args)
        if name != top:  # --version and --force speak of the recipe asked for
            options = dataclasses.replace(options, version=version, force=False)
        on_demand = None
        if options.version is not None and options.version not in recipe.spec.versions:
            recipe = recipe.with_version(options.version)
            on_demand = _lock_on_demand(args, project, recipe, options.version, workspace)
        resolved = recipe.version(options.version)
        if (name, resolved) in planned:
            return planned[(name, resolved)]
        installed = _installed_needs(args, project, runner, recipe.spec.needs)
        needs = {need: visit(need, recipe.need_version(resolved, need))
                 for need in sorted(recipe.spec.needs) if need not in installed}  # fmt: skip
        # A preflight or a bundle builds none of the needs: their plans give keys and versions.
        needs_only = (getattr(args, "preflight", False) or getattr(args, "bundle", False)) and (
            name != top
        )
        the_plan = plan(project, name, args.target, runner, workspace, _wheelhouse(args), options,
                        dry_run=getattr(args, "dry_run", False) or needs_only, on_demand=on_demand,
                        **_need_arguments({n: p.build_key for n, p in needs.items()},
                                          {n: p.version for n, p in needs.items()}, installed))  # fmt: skip
        planned[(name, resolved)] = the_plan
        return the_plan

    for name in names:
        visit(name, None)
    return list(planned.values())


def _next_steps(the_plan: BuildPlan, filename: str) -> None:
    """What to do with the wheel: smoke it, install it, and on what it installs."""
    _, _, _, tags = parse_wheel_filename(filename)
    tag = sorted(tags, key=str)[0]
    python = (f"CPython {tag.interpreter[2]}.{tag.interpreter[3:]}"
              if tag.interpreter.startswith("cp") else "any Python 3")  # fmt: skip
    if tag.abi == "abi3":
        python = f"CPython {tag.interpreter[2]}.{tag.interpreter[3:]} or newer"
    index = Wheelhouse(the_plan.wheelhouse).index_url()
    name = the_plan.recipe.name
    console.print(
        f"next: nox -s smoke-{name} -- --target {the_plan.target.name} (a fresh venv, installed "
        f"by name from the index)\n  or: pip install --index-url {index} {the_plan.recipe.spec.dist}"
        f"\n  it installs on {python}, {tag.platform}; `pip debug --verbose` lists the tags "
        "a machine accepts",
        markup=False,
    )


def _lock_on_demand(args: argparse.Namespace, project: Path, recipe: Recipe, version: str,
                    workspace: Workspace) -> LockEntry | None:  # fmt: skip
    """A version the recipe does not list: use its lock entry if current, else lock it now
    (network: the sdist's sha256 or the tag's commit) and write it to lock.toml, except in a
    dry run, which plans with the entry in memory."""
    lock_path = project / "lock.toml"
    lock = read_lock(lock_path)
    series = load_series(project, recipe.name, version)
    try:
        entry_for(lock, lock_path, recipe, version, series)
        return None
    except LockError:
        pass
    borrowed = recipe.derived[version]
    targets = [load_target(project, t) for t in available_targets(project)]
    with console.status(f"locking {recipe.name} {version} on demand (settings of {borrowed})"):
        entry = lock_on_demand(project, recipe, version, targets, workspace)
    pin = entry.source.commit or entry.source.sha256 or entry.source.tree_sha256
    if getattr(args, "dry_run", False):
        print(f"resolved {recipe.name} {version} on demand: {entry.source.kind} {pin} (settings "
              f"of {borrowed}; unreviewed); a dry run leaves lock.toml as is", file=sys.stderr)  # fmt: skip
        return entry
    lock = read_lock(lock_path)
    lock.recipes.setdefault(recipe.name, {})[version] = entry
    write_lock(lock_path, lock)
    print(f"locked {recipe.name} {version} on demand into {lock_path}: {entry.source.kind} "
          f"{pin} (settings of {borrowed}; unreviewed)", file=sys.stderr)  # fmt: skip
    return entry


def _build(the_plan: BuildPlan, workspace: Workspace, *, force: bool, wait: bool) -> _Outcome:
    """Build one plan, or find it up to date."""
    started = time.monotonic()
    outcome = _Outcome(the_plan.recipe.name, the_plan.version)
    existing = None if force else up_to_date(the_plan)
    if existing is None:
        console.print(
            f"[bold]building {the_plan.recipe.name} {the_plan.version}[/] for {the_plan.target.name} "
            f"({', '.join(a.name for a in the_plan.archs)}), {the_plan.jobs} jobs, key {the_plan.build_key[:12]}"
        )
        console.print(f"log: {the_plan.log_path}")
        with workspace.exclusive(wait=wait, note=console.print):
            # A run that held the workspace may have just built the same key.
            existing = None if force else up_to_date(the_plan)
            if existing is None:
                stored = execute(the_plan, console)
                console.print(
                    f"[green]published[/] {stored.path}\n  sha256 {stored.sha256}\n  index "
                    f"{Wheelhouse(the_plan.wheelhouse).index_url()}"
                )
                _next_steps(the_plan, stored.filename)
                outcome.status, outcome.detail = "built", stored.filename
    if existing is not None:
        console.print(
            f"up to date: {existing} (build key {the_plan.build_key[:12]}; --force rebuilds)"
        )
        outcome.status, outcome.detail = "up to date", existing.name
    outcome.seconds = time.monotonic() - started
    return outcome


def _from_bundle(args: argparse.Namespace) -> tuple[Path, Workspace, list[BuildPlan]]:
    """Verify and unpack ``--from-bundle`` into a fresh workspace; the plan of its recipe,
    built against exactly the needs the bundle carries (or --installed-need)."""
    from sparkforge.team import bundle

    tmp = Path(tempfile.mkdtemp(prefix="sparkforge-from-bundle-"))
    console.print(f"verifying and unpacking {args.from_bundle} into {tmp}")
    unpacked = bundle.unpack(Path(args.from_bundle), tmp)
    manifest = unpacked.manifest
    if manifest["recipe"] != args.recipe or manifest["target"] != args.target:
        raise ConfigError(
            f"--from-bundle: {args.from_bundle} holds {manifest['recipe']} for target "
            f"{manifest['target']}, not {args.recipe} for {args.target}; pass --target "
            f"{manifest['target']} or bundle again"
        )
    if args.version not in (None, manifest["version"]):
        raise ConfigError(
            f"--from-bundle: the bundle holds version {manifest['version']}, not {args.version}"
        )
    args.version = manifest["version"]
    runner = _runner(args, unpacked.project, unpacked.workspace)
    recipe = load_recipe(unpacked.project, args.recipe)
    installed = _installed_needs(args, unpacked.project, runner, recipe.spec.needs)
    the_plan = plan(unpacked.project, args.recipe, args.target, runner, unpacked.workspace,
                    _wheelhouse(args), _build_options(args), dry_run=args.dry_run,
                    **_need_arguments(dict(manifest["need_keys"]), dict(manifest["need_versions"]),
                                      installed))  # fmt: skip
    return unpacked.project, unpacked.workspace, [the_plan]


def _installed_needs(args: argparse.Namespace, project: Path, runner: Runner,
                     needs: Sequence[str]) -> dict[str, tuple[str, str]]:  # fmt: skip
    """need -> (version, site-packages) for the needs named with --installed-need."""
    target = _build_target(project, args)
    return {need: runner.installed(target, load_recipe(project, need).spec.dist)
            for need in sorted(set(needs) & set(getattr(args, "installed_need", [])))}  # fmt: skip


class _NeedArguments(TypedDict):
    need_keys: dict[str, str]
    need_versions: dict[str, str]
    installed_needs: dict[str, str]


def _need_arguments(keys: dict[str, str], versions: dict[str, str],
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


def _build_target(project: Path, args: argparse.Namespace) -> Target:
    """The target as this build sees it: ``--python`` overrides its interpreter version."""
    target = load_target(project, args.target)
    if getattr(args, "python", None):
        target = dataclasses.replace(target, python=args.python)
    return target


def _settings_words(args: argparse.Namespace) -> str:
    """The build settings given on this command line, as words to repeat elsewhere."""
    words = [f" --cuda-arch {a}" for a in args.cuda_arch]
    words += [f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("python", "manylinux")
              if getattr(args, k)]  # fmt: skip
    return "".join(words)


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write one plan's verified inputs into one file (see bundle.py)."""
    from sparkforge.team import bundle

    project = args.project.resolve()
    workspace = Workspace.locate(args.workspace)
    the_plan = _plans(args, project, workspace, [args.recipe], top=args.recipe)[-1]
    out = args.output or Path.cwd() / (
        f"{the_plan.recipe.name}-{the_plan.version}-{the_plan.target.name}-"
        f"{the_plan.build_key[:12]}.bundle.tar.xz"
    )
    with workspace.exclusive(wait=not args.no_wait, note=console.print):
        written, manifest = bundle.write(the_plan, out.resolve(), console.print)
    size = written.stat().st_size
    console.print(
        f"[green]bundle written[/]: {written} ({size / 1e6:.1f} MB, {len(dict(manifest['files']))} "
        f"files)\n  sha256 {sha256_file(written)}\n  build it offline: sparkforge build "
        f"{the_plan.recipe.name} --target {the_plan.target.name}{_settings_words(args)} "
        f"--from-bundle {written.name}"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build a recipe, after building (or finding up to date) what it needs."""
    if not args.from_bundle:
        project = args.project.resolve()
        workspace = Workspace.locate(args.workspace)
        return _build_plans(args, workspace, _plans(args, project, workspace, [args.recipe],
                                                    top=args.recipe))  # fmt: skip
    started = time.monotonic()
    _, workspace, plans = _from_bundle(args)
    scratch = workspace.root.parent  # the unpacked bundle: project, workspace, build tree
    try:
        code = _build_plans(args, workspace, plans, started)
    except BaseException:
        print(f"note: the unpacked bundle, build tree and logs stay in {scratch}; delete it when "
              "done", file=sys.stderr)  # fmt: skip
        raise
    if code == 0 and not args.keep_build_dir:  # a dry run leaves nothing behind either
        shutil.rmtree(scratch, ignore_errors=True)
    elif code == 0 and args.keep_build_dir:
        console.print(f"kept: the unpacked bundle and build tree in {scratch}")
    return code


def _build_plans(args: argparse.Namespace, workspace: Workspace, plans: list[BuildPlan],
                 started: float | None = None) -> int:  # fmt: skip
    """Dry run, preflight or build of ``plans`` (needs first, the recipe asked for last)."""
    started = time.monotonic() if started is None else started
    the_plan = plans[-1]
    if args.dry_run:
        if the_plan.blocked_by:
            print(f"note: this plan cannot run here: {the_plan.blocked_by}", file=sys.stderr)
        described = {
            **the_plan.describe(),
            "builds_first": {f"{p.recipe.name} {p.version}": p.build_key for p in plans[:-1]},
        }
        text = json.dumps(described, indent=2)
        console.print_json(text) if console.is_terminal else print(text)
        conflicts = [c for p in plans for c in p.conflicts]
        for conflict in conflicts:
            print(f"conflict: {conflict}", file=sys.stderr)
        return 2 if conflicts else 0
    if args.preflight:
        return _preflight(the_plan, workspace, upstream_needs=args.upstream_needs,
                          wait=not args.no_wait)  # fmt: skip
    for need in plans[:-1]:
        outcome = _build(need, workspace, force=False, wait=not args.no_wait)
        console.print(f"need {need.recipe.name}: {outcome.status}")
    _build(the_plan, workspace, force=args.force, wait=not args.no_wait)
    console.print(f"pipeline time {time.monotonic() - started:.2f} s")
    return 0


def _preflight(the_plan: BuildPlan, workspace: Workspace, *, upstream_needs: bool,
               wait: bool) -> int:  # fmt: skip
    """Run one plan's preflight and print what it checked."""
    from sparkforge.verify.preflight import run as run_preflight

    console.print(
        f"[bold]preflight {the_plan.recipe.name} {the_plan.version}[/] for {the_plan.target.name} "
        f"({', '.join(a.name for a in the_plan.archs)}), key {the_plan.build_key[:12]}"
    )
    with workspace.exclusive(wait=wait, note=console.print):
        result = run_preflight(the_plan, console, upstream_needs=upstream_needs)
    console.print(
        f"[green]preflight passed[/]: {the_plan.recipe.name} {the_plan.version} in "
        f"{result.seconds:.1f} s (network: {result.isolation}); nothing was compiled or published"
    )
    return 0


def cmd_build_all(args: argparse.Namespace) -> int:
    """Every recipe (or those named) in dependency order, then a table of results.

    A failed recipe does not stop the others; what needs it is skipped."""
    project = args.project.resolve()
    workspace = Workspace.locate(args.workspace)
    args.recipe, args.version = None, None
    names = args.recipes or available_recipes(project)
    if args.dry_run:
        return _build_all_plan(args, project, workspace, names)
    plans = _plans(args, project, workspace, names, top=None)
    outcomes: list[_Outcome] = []
    broken: set[str] = set()
    checked: set[str] = set()
    preflight_errors: dict[str, str] = {}

    def preflight(the_plan: BuildPlan) -> None:
        """The recipe's preflight, once, when it has one and is not up to date."""
        spec = the_plan.recipe.preflight(the_plan.version)
        key = the_plan.build_key
        if args.no_preflight or key in checked or not (spec.configure or spec.frontend):
            return
        checked.add(key)
        if up_to_date(the_plan) is None:
            try:
                _preflight(the_plan, workspace, upstream_needs=False, wait=not args.no_wait)
            except SparkforgeError as exc:
                preflight_errors[key] = f"preflight: {exc.message}"

    # First step: the preflight of every recipe whose needs are already in the wheelhouse,
    # so a broken recipe is found in minutes, before hours of compile elsewhere.
    house = Wheelhouse(_wheelhouse(args))
    for the_plan in plans:
        if all(house.built(k) for k in the_plan.need_keys.values()):
            preflight(the_plan)
    for the_plan in plans:
        blocked = sorted(set(the_plan.recipe.spec.needs) & broken)
        if blocked:
            outcomes.append(_Outcome(the_plan.recipe.name, the_plan.version, "skipped",
                                     detail=f"needs {', '.join(blocked)}, which did not build"))  # fmt: skip
            broken.add(the_plan.recipe.name)
            continue
        preflight(the_plan)  # those whose needs were built just now
        if the_plan.build_key in preflight_errors:
            outcomes.append(_Outcome(the_plan.recipe.name, the_plan.version, "failed",
                                     detail=preflight_errors[the_plan.build_key]))  # fmt: skip
            broken.add(the_plan.recipe.name)
            continue
        try:
            outcomes.append(_build(the_plan, workspace, force=args.force, wait=not args.no_wait))
        except SparkforgeError as exc:
            outcomes.append(
                _Outcome(the_plan.recipe.name, the_plan.version, "failed", detail=exc.message)
            )
            broken.add(the_plan.recipe.name)
    table = Table(title=f"build-all for {args.target}", title_justify="left")
    for column in ("recipe", "version", "result", "seconds", "wheel or reason"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        colour = {"built": "green", "up to date": "green", "failed": "red"}.get(
            outcome.status, "yellow"
        )
        table.add_row(outcome.recipe, outcome.version, f"[{colour}]{outcome.status}[/]",
                      f"{outcome.seconds:.1f}", outcome.detail)  # fmt: skip
    console.print(table)
    failed = [o for o in outcomes if o.status in ("failed", "skipped")]
    return 1 if failed else 0


def _build_all_plan(
    args: argparse.Namespace, project: Path, workspace: Workspace, names: list[str]
) -> int:
    """build-all --dry-run: what each recipe would do, in build order; nothing runs. A
    recipe that cannot be planned (no lock entry, a conflict) is a row, not the end."""
    house = Wheelhouse(_wheelhouse(args))
    rows: list[dict[str, object]] = []
    plans: dict[str, BuildPlan] = {}
    for level in recipe_levels(project, names):
        for node in level:
            try:
                for the_plan in _plans(args, project, workspace, [node.recipe], top=None):
                    plans.setdefault(the_plan.recipe.name, the_plan)
            except SparkforgeError as exc:
                rows.append({"recipe": node.recipe, "version": "", "build_key": None,
                             "action": "cannot plan", "blocked_by": exc.message,
                             "preflight": False, "needs": {}, "jobs": None,
                             "unreviewed": []})  # fmt: skip
    for the_plan in plans.values():
        done = up_to_date(the_plan)
        spec = the_plan.recipe.preflight(the_plan.version)
        rows.append({
            "recipe": the_plan.recipe.name, "version": the_plan.version,
            "build_key": the_plan.build_key,
            "action": "up to date" if done else ("blocked" if the_plan.blocked_by else "build"),
            "blocked_by": the_plan.blocked_by,
            "preflight": bool(spec.configure or spec.frontend) and not args.no_preflight,
            "needs": {n: house.built(k) is not None for n, k in the_plan.need_keys.items()},
            "jobs": the_plan.jobs, "unreviewed": list(the_plan.unreviewed),
        })  # fmt: skip
    if args.json:
        print(json.dumps({"target": args.target, "recipes": rows}, indent=2))
        return 0
    table = Table(title=f"build-all --dry-run for {args.target} (in order)", title_justify="left")
    for column in ("recipe", "version", "would", "preflight", "jobs", "key / why not here"):
        table.add_column(column, overflow="fold")
    for row in rows:
        why = row["blocked_by"] or str(row["build_key"])[:12]
        table.add_row(str(row["recipe"]), str(row["version"]), str(row["action"]),
                      "yes" if row["preflight"] else "no", str(row["jobs"]), str(why))  # fmt: skip
    console.print(table)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """What the wheelhouse holds: per project, version, target, build key, verdicts."""
    from sparkforge.wheelhouse.store import describe

    house = Wheelhouse(_wheelhouse(args))
    rows = [describe(wheel) for wheel in house.wheels()]
    if args.projects:
        wanted = {canonicalize_name(p) for p in args.projects}
        rows = [r for r in rows if canonicalize_name(str(r["project"])) in wanted]
    if args.json:
        print(json.dumps({"wheelhouse": str(house.root), "wheels": rows}, indent=2))
        return 0
    if not rows:
        console.print(f"{house.root}: no wheels" + (" of those projects" if args.projects else ""))
        return 0
    table = Table(title=f"{house.root}", title_justify="left")
    for column in ("project", "version", "target", "audit", "size", "built", "build key"):
        table.add_column(column, overflow="fold")
    for row in rows:
        audit = ", ".join(f"{arch}: {verdict}" for arch, verdict in dict(row["audit"]).items())
        table.add_row(str(row["project"]), str(row["version"]), str(row["target"]) or "-",
                      audit or "-", f"{int(row['size']) / 1e6:.1f} MB", str(row["built"]),
                      str(row["build_key"])[:12] or "-")  # fmt: skip
    console.print(table)
    return 0


_CLEANABLE = {
    "scratch": "build trees kept after a failure or --keep-build-dir (workspace builds/, tmp/)",
    "envs": "build venvs (workspace envs/; made again from the lock when needed)",
    "verdicts": "cached verdicts of upstream wheels (workspace verdicts/)",
}


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove what the workspace keeps, by kind and age; --dry-run lists it and removes
    nothing. The wheelhouse, lock, downloads, git mirrors and ccache are never touched."""
    workspace = Workspace.locate(args.workspace)
    kinds = args.what or ["scratch"]
    unknown = [k for k in kinds if k not in _CLEANABLE]
    if unknown:
        raise ConfigError(f"--what: no kind '{unknown[0]}'; kinds: {', '.join(_CLEANABLE)}")
    folders = {"scratch": [workspace.builds, workspace.root / "tmp"], "envs": [workspace.envs],
               "verdicts": [workspace.root / "verdicts"]}  # fmt: skip
    cutoff = time.time() - args.older_than * 86400
    found: list[tuple[Path, int]] = []
    for kind in kinds:
        for folder in folders[kind]:
            for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
                if entry.lstat().st_mtime <= cutoff:
                    found.append((entry, _size_of(entry)))
    total = sum(size for _, size in found)
    verb = "would remove" if args.dry_run else "removing"
    for path, size in found:
        console.print(f"{verb} {path} ({size / 1e6:.1f} MB)", markup=False)
    if not args.dry_run and found:
        with workspace.exclusive(wait=False, note=console.print):  # never under a running build
            for path, _ in found:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    console.print(f"{'would free' if args.dry_run else 'freed'} {total / 1e9:.2f} GB in "
                  f"{len(found)} item(s) of {', '.join(kinds)} older than {args.older_than:g} "
                  f"day(s) under {workspace.root}")  # fmt: skip
    return 0


def _size_of(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())


def cmd_verify_repro(args: argparse.Namespace) -> int:
    """Build again from the lock in a fresh workspace at another path; compare."""
    project = args.project.resolve()
    options = _build_options(args)
    workspace = Workspace.locate(args.workspace)
    wheelhouse = _wheelhouse(args)
    original = plan(project, args.recipe, args.target, _runner(args, project, workspace), workspace,
                    wheelhouse, options)  # fmt: skip
    published = up_to_date(original)
    if published is None:
        raise ConfigError(
            f"{wheelhouse}: no published {original.recipe.name} {original.version} build for "
            f"{original.target.name} with build key {original.build_key[:12]}; build it first with "
            "the same options (nox -s build-…)"
        )
    with tempfile.TemporaryDirectory(prefix="sparkforge-repro-") as tmp:
        fresh = Workspace(Path(tmp) / "workspace")
        again = plan(project, args.recipe, args.target, _runner(args, project, fresh), fresh,
                     Path(tmp) / "wheelhouse", options)  # fmt: skip
        console.print(f"rebuilding {again.recipe.name} {again.version} in {fresh.root} (build key "
                      f"{again.build_key[:12]}) to compare with {published}")  # fmt: skip
        rebuilt = execute(again, console).path
        diff = compare_wheels(published, rebuilt)
        for line in diff.lines():
            console.print(line, markup=False)
        if not diff.identical:
            report = diffoscope_report(
                published, rebuilt, workspace.logs / f"repro-{published.name}.txt"
            )
            if report is not None:
                console.print(f"diffoscope report: {report}", markup=False)
    return 0 if diff.identical else 1


def cmd_smoke(args: argparse.Namespace) -> int:
    project = args.project.resolve()
    recipe = load_recipe(project, args.recipe)
    target = load_target(project, args.target)
    # What the recipe was built against comes from the wheelhouse too (vllm: torch, triton).
    also = [load_recipe(project, need).spec.dist for need in recipe.spec.needs]
    requires = list(recipe.spec.smoke.requires)
    if recipe.spec.smoke.dependencies:
        house = Wheelhouse(_wheelhouse(args))
        requires += declared_dependencies(house, [recipe.spec.dist, *also])
    if args.runner == "container":
        workspace = Workspace.locate(args.workspace)
        runner = _runner(args, project, workspace)
        assert isinstance(runner, ContainerRunner)
        runner.check(target)
        result = run_smoke_in_container(
            runner=runner, target=target, script=recipe.smoke_script, dist=recipe.spec.dist,
            version=args.version, wheelhouse=_wheelhouse(args), requires=requires,
            require_gpu=args.require_gpu, scratch=workspace.root / "smoke", also=also,
        )  # fmt: skip
    else:
        result = run_smoke(
            script=recipe.smoke_script,
            dist=recipe.spec.dist,
            version=args.version,
            wheelhouse=_wheelhouse(args),
            python=args.python or HostRunner().python(target.python),
            requires=requires,
            require_gpu=args.require_gpu,
            target_sm=target.cuda_archs[0].sm,
            also=also,
        )
    sys.stdout.write(result.output)
    if result.status == "passed":
        console.print(
            f"[green]smoke passed[/]: {recipe.name} (installed with {result.installer} from the wheelhouse)"
        )
        return 0
    if result.status == "skipped":
        console.print(
            f"[yellow]smoke skipped: no CUDA device[/] ({recipe.name}); --require-gpu makes this a failure"
        )
        return SKIPPED
    reason = (
        "no CUDA device and --require-gpu given"
        if result.exit_code == SKIPPED
        else f"exit code {result.exit_code}"
    )
    console.print(f"[red]smoke failed[/]: {recipe.name}: {reason}")
    return 1


def cmd_lock(args: argparse.Namespace) -> int:
    project = args.project.resolve()
    workspace = Workspace.locate(args.workspace)
    lock_path = project / "lock.toml"
    lock = read_lock(lock_path)
    # `lock --upgrade triton` alone re-resolves triton only; plain `lock` does every recipe.
    names = args.recipes or ([] if args.upgrade else available_recipes(project))
    if args.builder:
        settings = load_engine_settings(project, args.engines)
        engine = find_engine(args.engine, settings)
        for name in args.target or available_targets(project):
            ref = load_target(project, name).builder_image
            lock.builder[ref] = base_digest(engine, ref)
            console.print(f"pinned builder base {ref}: {lock.builder[ref]} (target {name})")
        if not args.recipes and not args.upgrade:
            write_lock(lock_path, lock)
            console.print(f"wrote {lock_path}")
            return 0
    upgrade = set(args.upgrade)
    for name in upgrade - set(names):
        names.append(name)
    targets = [load_target(project, t) for t in available_targets(project)]
    if args.version and len(args.recipes) != 1:
        raise ConfigError(
            "lock --version: name exactly one recipe, e.g. `lock vllm --version 0.33.0`"
        )
    recipes = {name: load_recipe(project, name) for name in names}
    for name, recipe in recipes.items():
        # Versions locked on demand earlier are kept current, and --version adds one.
        unlisted = [v for v, e in lock.recipes.get(name, {}).items()
                    if e.derived_from is not None and v not in recipe.spec.versions]  # fmt: skip
        asked = args.version if args.recipes and name == args.recipes[0] else []
        for version in dict.fromkeys([*unlisted, *asked]):
            recipe = recipe.with_version(version)
        for version in recipe.spec.versions:
            series = load_series(project, name, version)
            previous = lock.recipes.get(name, {}).get(version)
            with console.status(f"locking {name} {version}"):
                entry = lock_entry(
                    project,
                    recipe,
                    version,
                    series,
                    targets,
                    workspace,
                    previous=previous,
                    upgrade=name in upgrade,
                )
            if version in recipe.derived:
                entry = entry.model_copy(update={"derived_from": recipe.derived[version]})
            lock.recipes.setdefault(name, {})[version] = entry
            src = entry.source
            pin = src.commit or src.sha256 or src.tree_sha256
            console.print(
                f"locked {name} {version}: {src.kind} {pin}, {len(entry.patches)} patches, "
                f"{len(entry.build_requires)} build requirements"
            )
    stale = [n for n in lock.recipes if n not in available_recipes(project)]
    for name in stale:
        del lock.recipes[name]
        console.print(f"dropped {name} (no such recipe)")
    write_lock(lock_path, lock)
    console.print(f"wrote {lock_path}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    house = Wheelhouse(_wheelhouse(args))
    generation = house.regenerate_index()
    stored = house.wheels()
    for wheel in stored:
        console.print(f"{wheel.filename}  sha256:{wheel.sha256[:16]}…  {wheel.size / 1e6:.1f} MB")
    console.print(f"{len(stored)} wheels; index {house.index_url()} ({generation.name})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from sparkforge.verify.doctor import doctor_command

    project = args.project.resolve()
    target = load_target(project, args.target)
    names = args.recipes or available_recipes(project)
    return doctor_command(
        target,
        [load_recipe(project, name) for name in names],
        Workspace.locate(args.workspace).root,
        _wheelhouse(args),
        as_json=args.json,
        console=console,
    )


def cmd_export(args: argparse.Namespace) -> int:
    from sparkforge.team.export import ExportOptions, export_command

    target = None if args.no_deps else load_target(args.project.resolve(), args.target)
    options = ExportOptions(
        index_url=args.index_url, deps_index_url=args.deps_index_url, target=target,
        output=args.output, pip_conf=args.pip_conf, uv_toml=args.uv_toml,
    )  # fmt: skip
    return export_command(Wheelhouse(_wheelhouse(args)), args.projects, options)


def cmd_publish(args: argparse.Namespace) -> int:
    from sparkforge.team.publish import destination_for, publish

    destination = destination_for(
        args.to, simple_url=args.simple_url, workspace=Workspace.locate(args.workspace)
    )
    outcome = publish(_wheelhouse(args), destination, args.projects, report=console.print)
    console.print(
        f"published {len(outcome.sent)} wheels to {destination.label}; "
        f"{len(outcome.already_there)} already there"
    )
    return 0


def cmd_check_patches(args: argparse.Namespace) -> int:
    """Apply every patch series to its locked source in a scratch tree; with --prove, run
    each patch's proof without the patch (it must fail) and with it (it must pass)."""
    from sparkforge.sources.patching import prove_series

    project = args.project.resolve()
    workspace = Workspace.locate(args.workspace)
    lock_path = project / "lock.toml"
    lock = read_lock(lock_path)
    checked = 0
    for name in args.recipes or available_recipes(project):
        recipe = load_recipe(project, name)
        for version in recipe.spec.versions:
            series = load_series(project, name, version)
            if not series.patches:
                continue
            entry = entry_for(lock, lock_path, recipe, version, series)
            with tempfile.TemporaryDirectory(prefix="sparkforge-patches-") as tmp:
                with console.status(f"fetching {name} {version}"):
                    materialize(project, recipe, entry.source, workspace, Path(tmp) / "src")
                label = f"{name} {version}"
                if args.prove:
                    for line in prove_series(series, Path(tmp) / "src", label=label):
                        console.print(f"  {line}", markup=False)
                apply_series(series, Path(tmp) / "src", label=label)
            pin = entry.source.commit or entry.source.sha256 or entry.source.tree_sha256
            proved = sum(1 for p in series.patches if p.proof) if args.prove else 0
            console.print(
                f"ok {name} {version}: {len(series.patches)} patch(es) apply to "
                f"{entry.source.kind} {pin}" + (f"; {proved} proved" if proved else "")
            )
            checked += 1
    console.print(f"{checked} patch series checked")
    return 0


def cmd_check_install(args: argparse.Namespace) -> int:
    """Resolve the wheelhouse's wheels for the target (wheelhouse + index)."""
    from sparkforge.verify.installcheck import check

    project = args.project.resolve()
    target = load_target(project, args.target)
    dists: dict[str, str] = {}
    for name in available_recipes(project):
        dists[canonicalize_name(load_recipe(project, name).spec.dist)] = name
    results = check(Wheelhouse(_wheelhouse(args)), target, args.projects, dists, args.index_url)
    for result in results:
        mark = "[green]ok[/]" if result.ok else "[red]fails[/]"
        console.print(f"{mark} {result.wheel}: {result.line}")
    failed = [r for r in results if not r.ok]
    console.print(f"{len(results) - len(failed)} of {len(results)} wheels install on {target.name}")
    return 1 if failed else 0


def cmd_graph(args: argparse.Namespace) -> int:
    from sparkforge.config.graph import recipe_levels

    levels = recipe_levels(args.project.resolve(), args.recipes)
    if args.json:
        print(json.dumps({"levels": [[node.as_json() for node in level] for level in levels]}))
        return 0
    for number, level in enumerate(levels):
        names = ", ".join(
            node.recipe + (f" (needs {', '.join(node.needs)})" if node.needs else "")
            for node in level
        )
        console.print(f"level {number}: {names}")
    return 0


def cmd_outdated(args: argparse.Namespace) -> int:
    """Per recipe: locked versions, upstream's newest, and whether upstream's own wheel for
    the target already runs there ("pip install") or not ("build")."""
    from sparkforge.team.outdated import DEFAULT_INDEX, VerdictCache, row_for, wheel_tags

    project = args.project.resolve()
    workspace = Workspace.locate(args.workspace)
    target = load_target(project, args.target)
    lock_path = project / "lock.toml"
    lock = read_lock(lock_path)
    names = args.recipes or available_recipes(project)
    cache = VerdictCache(workspace)
    rows = []
    for name in names:
        recipe = load_recipe(project, name)
        locked = list(lock.recipes.get(name, {}))
        with console.status(f"{name}: reading {args.index_url or DEFAULT_INDEX}"):
            row = row_for(recipe, locked, target, index=args.index_url or DEFAULT_INDEX,
                          audit=not args.no_audit, cache=cache, scratch=workspace.root / "tmp",
                          progress=lambda line: print(f"  {line}", file=sys.stderr))  # fmt: skip
        rows.append(row)
        if args.lock_moved and row.moved and row.newest is not None:
            try:
                _lock_moved(project, recipe, row.newest, workspace)
            except SparkforgeError as exc:  # one recipe that cannot be locked stops no other
                row.answer += f"; not locked: {exc.message}"
                print(f"error: {name} {row.newest} not locked: {exc.message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"target": target.name, "recipes": [r.to_json() for r in rows]}, indent=2))
        return 0
    table = Table(
        title=f"upstream releases and their wheels on {target.name}", title_justify="left"
    )
    for column in ("recipe", "listed", "upstream", "upstream's wheel", "answer"):
        table.add_column(column, overflow="fold")
    for row in rows:
        listed = ", ".join(
            v + ("*" if v == row.default else "") + (" (unlocked)" if v in row.unlocked else "")
            for v in row.listed
        )
        newest = (row.newest or "-") + (" (new)" if row.moved else "")
        table.add_row(row.recipe, listed, newest, wheel_tags(row.wheel), row.answer)
    console.print(table)
    console.print(
        "* default version; (new): newer than every listed release (--lock-moved locks it)"
    )
    return 0


def _lock_moved(project: Path, recipe: Recipe, version: str, workspace: Workspace) -> None:
    """Lock upstream's newest release on demand (settings of the nearest listed one)."""
    derived = recipe.with_version(version)
    targets = [load_target(project, t) for t in available_targets(project)]
    with console.status(f"locking {recipe.name} {version} on demand"):
        entry = lock_on_demand(project, derived, version, targets, workspace)
    lock_path = project / "lock.toml"
    lock = read_lock(lock_path)
    lock.recipes.setdefault(recipe.name, {})[version] = entry
    write_lock(lock_path, lock)
    print(f"locked {recipe.name} {version} on demand into {lock_path} (settings of "
          f"{derived.derived.get(version, version)}; unreviewed)", file=sys.stderr)  # fmt: skip
