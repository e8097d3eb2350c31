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
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from rich.console import Console
from rich.table import Table

from sparkforge.api import Outcome, Run, Settings, need_arguments
from sparkforge.building.plan import BuildPlan, plan
from sparkforge.building.runners import ContainerRunner, HostRunner
from sparkforge.config.graph import recipe_levels
from sparkforge.config.patches import load_series
from sparkforge.config.recipes import available_recipes, load_recipe
from sparkforge.config.targets import load_target
from sparkforge.locking.lockfile import entry_for, read_lock
from sparkforge.pipeline import execute, up_to_date
from sparkforge.sources.materialize import materialize
from sparkforge.sources.patching import apply_series
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import ConfigError, SparkforgeError
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


def _settings(args: argparse.Namespace) -> Settings:
    """The run's settings, read once from the command line."""

    def get(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    target = get("target")  # lock's --target is a list (with --builder), passed on its own
    return Settings(
        project=args.project, target=target if isinstance(target, str) else "dgx-spark",
        workspace=get("workspace"),
        wheelhouse=get("wheelhouse"), runner=get("runner") or "host",
        cuda_archs=tuple(get("cuda_arch", ())), jobs=get("jobs"), python=get("python"),
        manylinux=get("manylinux"), time_limit=get("time_limit"),
        allow_arch_gaps=bool(get("allow_arch_gaps")), keep_build_dir=bool(get("keep_build_dir")),
        installed_needs=tuple(get("installed_need", ())), engine=get("engine"),
        engines=get("engines"), base_image=get("base_image"),
        allow_unpinned_base=bool(get("allow_unpinned_base")),
        build_args=tuple(get("build_arg", ())), wait=not get("no_wait", False),
    )  # fmt: skip


def _run(args: argparse.Namespace) -> Run:
    return Run(_settings(args), console)


def _wheelhouse(args: argparse.Namespace) -> Path:
    return wheelhouse_dir(args.wheelhouse, args.project)


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
        f"by name from the index)\n  or: pip install --index-url {index} {the_plan.recipe.dist}"
        f"\n  it installs on {python}, {tag.platform}; `pip debug --verbose` lists the tags "
        "a machine accepts",
        markup=False,
    )


def _show_next_steps(outcome: Outcome) -> None:
    if outcome.status == "built" and outcome.plan is not None and outcome.wheel is not None:
        _next_steps(outcome.plan, outcome.wheel.filename)


def _from_bundle(args: argparse.Namespace, run: Run) -> tuple[Run, list[BuildPlan]]:
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
    # The bundle's project and workspace stand in for this run's; the wheelhouse stays.
    inner = Run(dataclasses.replace(run.settings, project=unpacked.project,
                                    wheelhouse=run.wheelhouse), console)  # fmt: skip
    inner.workspace = unpacked.workspace
    runner = inner.runner(dry_run=args.dry_run)
    recipe = load_recipe(unpacked.project, args.recipe)
    installed = inner.installed(unpacked.project, runner, recipe.needs)
    the_plan = plan(unpacked.project, args.recipe, args.target, runner, unpacked.workspace,
                    inner.wheelhouse, inner.options(version=manifest["version"], force=args.force),
                    dry_run=args.dry_run,
                    **need_arguments(dict(manifest["need_keys"]), dict(manifest["need_versions"]),
                                     installed))  # fmt: skip
    return inner, [the_plan]


def _settings_words(args: argparse.Namespace) -> str:
    """The build settings given on this command line, as words to repeat elsewhere."""
    words = [f" --cuda-arch {a}" for a in args.cuda_arch]
    words += [f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("python", "manylinux")
              if getattr(args, k)]  # fmt: skip
    return "".join(words)


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write one plan's verified inputs into one file (see bundle.py)."""
    from sparkforge.team import bundle

    run = _run(args)
    the_plan = run.plans([args.recipe], top=args.recipe, version=args.version,
                         needs_only=True)[-1]  # fmt: skip
    out = args.output or Path.cwd() / (
        f"{the_plan.recipe.name}-{the_plan.version}-{the_plan.target.name}-"
        f"{the_plan.build_key[:12]}.bundle.tar.xz"
    )
    with run.workspace.exclusive(wait=run.settings.wait, note=console.print):
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
    started = time.monotonic()
    run = _run(args)
    if not args.from_bundle:
        if not (args.dry_run or args.preflight):
            run.build(args.recipe, version=args.version, force=args.force,
                      on_built=_show_next_steps)  # fmt: skip
            console.print(f"pipeline time {time.monotonic() - started:.2f} s")
            return 0
        plans = run.plans([args.recipe], top=args.recipe, version=args.version, force=args.force,
                          dry_run=args.dry_run, needs_only=args.preflight)  # fmt: skip
        return _dry_run_or_preflight(args, run, plans)
    inner, plans = _from_bundle(args, run)
    scratch = inner.workspace.root.parent  # the unpacked bundle: project, workspace, build tree
    try:
        if args.dry_run or args.preflight:
            code = _dry_run_or_preflight(args, inner, plans)
        else:
            inner.build_one(plans[-1], force=args.force, on_built=_show_next_steps)
            console.print(f"pipeline time {time.monotonic() - started:.2f} s")
            code = 0
    except BaseException:
        print(f"note: the unpacked bundle, build tree and logs stay in {scratch}; delete it when "
              "done", file=sys.stderr)  # fmt: skip
        raise
    if code == 0 and not args.keep_build_dir:  # a dry run leaves nothing behind either
        shutil.rmtree(scratch, ignore_errors=True)
    elif code == 0 and args.keep_build_dir:
        console.print(f"kept: the unpacked bundle and build tree in {scratch}")
    return code


def _dry_run_or_preflight(args: argparse.Namespace, run: Run, plans: list[BuildPlan]) -> int:
    """``--dry-run``: the plan as JSON (conflicts: exit 2); ``--preflight``: run it."""
    the_plan = plans[-1]
    if args.preflight and not args.dry_run:
        run.preflight(the_plan, upstream_needs=args.upstream_needs)
        return 0
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


def cmd_build_all(args: argparse.Namespace) -> int:
    """Every recipe (or those named) in dependency order, then a table of results.

    A failed recipe does not stop the others; what needs it is skipped."""
    run = _run(args)
    names = args.recipes or available_recipes(run.project)
    if args.dry_run:
        return _build_all_plan(args, run, names)
    outcomes = run.build_all(names, force=args.force, preflight=not args.no_preflight,
                             on_built=_show_next_steps)  # fmt: skip
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


def _build_all_plan(args: argparse.Namespace, run: Run, names: list[str]) -> int:
    """build-all --dry-run: what each recipe would do, in build order; nothing runs. A
    recipe that cannot be planned (no lock entry, a conflict) is a row, not the end."""
    house = Wheelhouse(run.wheelhouse)
    rows: list[dict[str, object]] = []
    plans: dict[str, BuildPlan] = {}
    for level in recipe_levels(run.project, names):
        for node in level:
            try:
                for the_plan in run.plans([node.recipe], top=None, dry_run=True):
                    plans.setdefault(the_plan.recipe.name, the_plan)
            except SparkforgeError as exc:
                rows.append({"recipe": node.recipe, "version": "", "build_key": None,
                             "action": "cannot plan", "blocked_by": exc.message,
                             "preflight": False, "needs": {}, "jobs": None,
                             "unreviewed": []})  # fmt: skip
    for the_plan in plans.values():
        done = up_to_date(the_plan)
        spec = the_plan.recipe.preflight_for(the_plan.version)
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


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove what the workspace (and the container engine) keeps, by kind, age and size;
    --dry-run lists it and removes nothing. The wheelhouse, lock, downloads, git mirrors
    and ccache are never touched."""
    from sparkforge.api import clean, cleanable

    run = _run(args)
    kinds = args.what or ["scratch"]
    items = cleanable(run, kinds, older_than_days=args.older_than,
                      larger_than_bytes=int(args.larger_than * 1e6))  # fmt: skip
    verb = "would remove" if args.dry_run else "removing"
    for item in items:
        console.print(f"{verb} {item.what} ({item.size / 1e6:.1f} MB)", markup=False)
    if not args.dry_run and items:
        clean(run, items)
    total = sum(item.size for item in items)
    size = f" and of {args.larger_than:g} MB or more" if args.larger_than else ""
    console.print(f"{'would free' if args.dry_run else 'freed'} {total / 1e9:.2f} GB in "
                  f"{len(items)} item(s) of {', '.join(kinds)} older than {args.older_than:g} "
                  f"day(s){size} (workspace {run.workspace.root})")  # fmt: skip
    return 0


def cmd_verify_repro(args: argparse.Namespace) -> int:
    """Build again from the lock in a fresh workspace at another path; compare."""
    run = _run(args)
    project, workspace, wheelhouse = run.project, run.workspace, run.wheelhouse
    options = run.options(version=args.version)
    original = plan(project, args.recipe, args.target, run.runner(), workspace, wheelhouse,
                    options)  # fmt: skip
    published = up_to_date(original)
    if published is None:
        raise ConfigError(
            f"{wheelhouse}: no published {original.recipe.name} {original.version} build for "
            f"{original.target.name} with build key {original.build_key[:12]}; build it first with "
            "the same options (nox -s build-…)"
        )
    with tempfile.TemporaryDirectory(prefix="sparkforge-repro-") as tmp:
        fresh = Workspace(Path(tmp) / "workspace")
        again = plan(project, args.recipe, args.target, run.runner(workspace=fresh), fresh,
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
    also = [load_recipe(project, need).dist for need in recipe.needs]
    requires = list(recipe.smoke.requires)
    if recipe.smoke.dependencies:
        house = Wheelhouse(_wheelhouse(args))
        requires += declared_dependencies(house, [recipe.dist, *also])
    if args.runner == "container":
        run = _run(args)
        workspace = run.workspace
        runner = run.runner()
        assert isinstance(runner, ContainerRunner)
        runner.check(target)
        result = run_smoke_in_container(
            runner=runner, target=target, script=recipe.smoke_script, dist=recipe.dist,
            version=args.version, wheelhouse=_wheelhouse(args), requires=requires,
            require_gpu=args.require_gpu, scratch=workspace.root / "smoke", also=also,
        )  # fmt: skip
    else:
        result = run_smoke(
            script=recipe.smoke_script,
            dist=recipe.dist,
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
    if args.pin_base and not args.builder:
        raise ConfigError("lock --base-image: add --builder (it pins builder base images)")
    _run(args).lock(args.recipes, upgrade=args.upgrade, versions=args.version,
                    builder=args.builder, targets=args.target or (),
                    base_images=args.pin_base)  # fmt: skip
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
        for version in recipe.versions:
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
        dists[canonicalize_name(load_recipe(project, name).dist)] = name
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
                _run(args).lock_newest(recipe, row.newest)
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
