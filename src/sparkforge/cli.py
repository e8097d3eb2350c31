"""The ``sparkforge`` command line: build, smoke, lock, index, inspect, doctor."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from rich.console import Console
from rich.table import Table

from . import __version__
from .archs import CudaArch, parse_arch
from .build import BuildOptions, BuildPlan, execute, plan, up_to_date
from .containers import base_digest, find_engine, load_engine_settings
from .digest import sha256_file
from .errors import ConfigError, SparkforgeError
from .graph import recipe_levels
from .index import Wheelhouse
from .lock import entry_for, read_lock, write_lock
from .patches import apply_series, load_series
from .recipes import available_recipes, load_recipe
from .repro import compare_wheels, diffoscope_report
from .resolve import lock_entry
from .runners import ContainerRunner, HostRunner, Runner
from .smoke import SKIPPED, declared_dependencies, run_smoke, run_smoke_in_container
from .sources import materialize
from .targets import DEFAULT_TARGET, Target, available_targets, load_target
from .workspace import Workspace

console = Console(highlight=False, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", type=Path, default=Path.cwd(), help="project directory (default: .)"
    )
    parser.add_argument(
        "--workspace", type=Path, help="cache/scratch directory (default: ~/.cache/sparkforge)"
    )
    parser.add_argument(
        "--wheelhouse", type=Path, help="wheelhouse directory (default: <project>/wheelhouse)"
    )


def _jobs(text: str) -> int:
    """``--jobs``: 0 or -3 would otherwise be quietly read as 1."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {jobs}")
    return jobs


def _python_version(text: str) -> str:
    """``--python``: "X.Y", as a target's ``python`` is written, not an interpreter path."""
    if not re.fullmatch(r"3\.[0-9]+", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a Python version; write X.Y, e.g. 3.12")
    return text


def _seconds(text: str) -> float:
    """``--time-limit``: a positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds")
    return seconds


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    """What decides one recipe's build: shared by build and verify-repro."""
    parser.add_argument("recipe")
    parser.add_argument(
        "--version", dest="version", help="recipe version (default: the recipe's default)"
    )
    _build_settings(parser)


def _manylinux(text: str) -> str:
    if not re.fullmatch(r"manylinux_2_\d+_(x86_64|aarch64)", text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a manylinux policy; write e.g. manylinux_2_39_x86_64"
        )
    return text


def _build_settings(parser: argparse.ArgumentParser) -> None:
    """What decides any build: shared by build, verify-repro and build-all."""
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--cuda-arch", action="append", default=[],
                        help="extra arch, e.g. 121 or 121a (repeatable)")  # fmt: skip
    parser.add_argument("--jobs", type=_jobs,
                        help="compile jobs (default: min(cores, memory / recipe's memory per job))")  # fmt: skip
    parser.add_argument("--allow-arch-gaps", action="store_true",
                        help="publish even if the audit says it won't run")  # fmt: skip
    parser.add_argument("--python", type=_python_version,
                        help="build for this Python (X.Y) instead of the target's")  # fmt: skip
    parser.add_argument("--manylinux", type=_manylinux, metavar="POLICY",
                        help="repair to this manylinux policy instead of the target's "
                             "(e.g. manylinux_2_39_x86_64 on a glibc 2.39 host)")  # fmt: skip
    parser.add_argument("--installed-need", action="append", default=[], metavar="RECIPE",
                        help="satisfy this needed recipe with the distribution the build "
                             "interpreter has installed, not this wheelhouse (host runner; "
                             "recorded as unreviewed)")  # fmt: skip
    parser.add_argument("--time-limit", type=_seconds, metavar="SECONDS",
                        help="stop the build commands after this long (default: no limit)")  # fmt: skip
    _runner_options(parser)


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


def _runner_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runner", choices=["host", "container"], default="host",
                        help="where steps run (default: host)")  # fmt: skip
    parser.add_argument(
        "--engine", help="container engine: docker or podman (default: docker, else podman)"
    )
    parser.add_argument("--engines", type=Path, help="engine settings file (default: engines.toml)")
    parser.add_argument(
        "--base-image", help="builder base image (default: the target's builder_image)"
    )
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Dockerfile.builder build argument")  # fmt: skip
    parser.add_argument("--allow-unpinned-base", action="store_true",
                        help="build the image from a base not pinned in lock.toml (recorded)")  # fmt: skip


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
    chosen: Path = args.wheelhouse or args.project / "wheelhouse"
    return chosen.resolve()


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
                        dry_run=getattr(args, "dry_run", False) or needs_only,
                        **_need_arguments({n: p.build_key for n, p in needs.items()},
                                          {n: p.version for n, p in needs.items()}, installed))  # fmt: skip
        planned[(name, resolved)] = the_plan
        return the_plan

    for name in names:
        visit(name, None)
    return list(planned.values())


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
    from . import bundle

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


def _need_arguments(keys: dict[str, str], versions: dict[str, str],
                    installed: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:  # fmt: skip
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
    from . import bundle

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
    if code == 0 and not args.dry_run and not args.keep_build_dir:
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
    from .preflight import run as run_preflight

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
    args.recipe, args.version, args.dry_run = None, None, False
    plans = _plans(args, project, workspace, args.recipes or available_recipes(project), top=None)
    outcomes: list[_Outcome] = []
    broken: set[str] = set()
    checked: set[str] = set()
    preflight_errors: dict[str, str] = {}

    def preflight(the_plan: BuildPlan) -> None:
        """The recipe's preflight, once, when it has one and is not up to date."""
        spec = the_plan.recipe.spec.preflight
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
    recipes = {name: load_recipe(project, name) for name in names}
    for name, recipe in recipes.items():
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_command

    project = args.project.resolve()
    target = load_target(project, args.target)
    return inspect_command(Path(args.path), target, as_json=args.json, console=console)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor_command

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


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_wheelhouse

    return serve_wheelhouse(_wheelhouse(args), args.host, args.port, quiet=args.quiet)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, export_command

    target = None if args.no_deps else load_target(args.project.resolve(), args.target)
    options = ExportOptions(
        index_url=args.index_url, deps_index_url=args.deps_index_url, target=target,
        output=args.output, pip_conf=args.pip_conf, uv_toml=args.uv_toml,
    )  # fmt: skip
    return export_command(Wheelhouse(_wheelhouse(args)), args.projects, options)


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import destination_for, publish

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
    from .patches import prove_series

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
    from .installcheck import check

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
    from .graph import recipe_levels

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparkforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sparkforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser(
        "check-patches", help="apply every patch series to its locked source (fetches sources)"
    )
    check.add_argument("recipes", nargs="*", help="recipes to check (default: all)")
    check.add_argument("--prove", action="store_true",
                       help="run each patch's Proof: command without and with the patch")  # fmt: skip
    _common(check)
    check.set_defaults(func=cmd_check_patches)

    build = sub.add_parser("build", help="build a recipe into the wheelhouse")
    _build_arguments(build)
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument("--dry-run", action="store_true", help="print the full plan and do nothing")
    build.add_argument("--preflight", action="store_true",
                       help="run up to upstream's configure step offline and check its results; "
                            "compile nothing")  # fmt: skip
    build.add_argument("--from-bundle", type=Path, metavar="FILE",
                       help="build from a bundle (sparkforge bundle): verified, no network, "
                            "a fresh workspace")  # fmt: skip
    build.add_argument("--keep-build-dir", action="store_true",
                       help="keep the build directory after a successful build")  # fmt: skip
    build.add_argument("--upstream-needs", action="store_true",
                       help="with --preflight: a need missing from the wheelhouse comes from "
                            "upstream's published wheel of the same version (said in the log)")  # fmt: skip
    build.add_argument("--no-wait", action="store_true",
                       help="fail instead of waiting when another run holds the workspace")  # fmt: skip
    _common(build)
    build.set_defaults(func=cmd_build)

    bundle = sub.add_parser(
        "bundle", help="write one plan's verified inputs into one file for an offline machine"
    )
    _build_arguments(bundle)
    bundle.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the bundle file (default: ./<recipe>-<version>-<target>-<key>.bundle.tar.xz)",
    )
    bundle.add_argument("--no-wait", action="store_true")
    _common(bundle)
    bundle.set_defaults(func=cmd_bundle, dry_run=False, bundle=True)

    build_all = sub.add_parser(
        "build-all", help="build every recipe in dependency order; a table of results"
    )
    build_all.add_argument("recipes", nargs="*", help="only these (and what they need)")
    _build_settings(build_all)
    build_all.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    build_all.add_argument("--no-wait", action="store_true")
    build_all.add_argument("--no-preflight", action="store_true",
                           help="skip each recipe's preflight before its build")  # fmt: skip
    _common(build_all)
    build_all.set_defaults(func=cmd_build_all)

    repro = sub.add_parser(
        "verify-repro", help="rebuild from the lock elsewhere and compare with the wheelhouse"
    )
    _build_arguments(repro)
    _common(repro)
    repro.set_defaults(func=cmd_verify_repro)

    smoke = sub.add_parser(
        "smoke", help="install from the wheelhouse index into a fresh venv and run smoke.py"
    )
    smoke.add_argument("recipe")
    smoke.add_argument("--target", default=DEFAULT_TARGET)
    smoke.add_argument("--version", dest="version", help="exact wheel version to install")
    smoke.add_argument("--python", help="interpreter for the venv (default: the target's Python)")
    smoke.add_argument("--require-gpu", action="store_true", help="no CUDA device is a failure")
    _runner_options(smoke)
    _common(smoke)
    smoke.set_defaults(func=cmd_smoke)

    lock = sub.add_parser("lock", help="resolve recipes into lock.toml")
    lock.add_argument("recipes", nargs="*", help="recipes to (re)lock (default: all)")
    lock.add_argument(
        "--upgrade",
        action="append",
        default=[],
        metavar="RECIPE",
        help="move branch refs and requirements to their newest commit/version",
    )
    lock.add_argument("--builder", action="store_true",
                      help="pin the targets' builder base images (needs docker or podman with the image)")  # fmt: skip
    lock.add_argument(
        "--target", action="append", default=[], help="with --builder: only these targets"
    )
    lock.add_argument("--engine", help="container engine for --builder")
    lock.add_argument("--engines", type=Path, help="engine settings file")
    _common(lock)
    lock.set_defaults(func=cmd_lock)

    index = sub.add_parser("index", help="regenerate the wheelhouse index and list its wheels")
    _common(index)
    index.set_defaults(func=cmd_index)

    inspect = sub.add_parser(
        "inspect", help="list the CUDA code in a wheel or library and judge it for a target"
    )
    inspect.add_argument("path")
    inspect.add_argument("--target", default=DEFAULT_TARGET)
    inspect.add_argument("--json", action="store_true")
    _common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    doctor = sub.add_parser("doctor", help="check this host before a build and say what to fix")
    doctor.add_argument(
        "recipes", nargs="*", help="recipes to size disk and memory for (default: all)"
    )
    doctor.add_argument("--target", default=DEFAULT_TARGET)
    doctor.add_argument("--json", action="store_true")
    _common(doctor)
    doctor.set_defaults(func=cmd_doctor)

    serve = sub.add_parser("serve", help="serve the wheelhouse index over HTTP (read-only)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port, 0 for any (default: 8000)")
    serve.add_argument("--quiet", action="store_true", help="no access log on stderr")
    _common(serve)
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser(
        "export", help="pin the wheelhouse's wheels (and dependencies) by sha256 for installs"
    )
    export.add_argument("projects", nargs="*", metavar="PROJECT[==VERSION]",
                        help="projects to pin (default: all, newest version of each)")  # fmt: skip
    export.add_argument("--index-url", default="http://127.0.0.1:8000/simple/",
                        help="the team index the configuration points at (default: sparkforge serve's)")  # fmt: skip
    export.add_argument("-o", "--output", type=Path,
                        help="requirements file to write (default: standard output)")  # fmt: skip
    export.add_argument("--pip-conf", type=Path, help="also write a pip.conf for the team index")
    export.add_argument("--uv-toml", type=Path, help="also write a uv.toml for the team index")
    export.add_argument("--no-deps", action="store_true",
                        help="pin only the wheelhouse's wheels, not their dependencies")  # fmt: skip
    export.add_argument("--target", default=DEFAULT_TARGET,
                        help="where the dependencies must install (default: dgx-spark)")  # fmt: skip
    export.add_argument("--deps-index-url", default="https://pypi.org/simple",
                        help="index the dependencies are resolved from (default: PyPI)")  # fmt: skip
    _common(export)
    export.set_defaults(func=cmd_export)

    publish = sub.add_parser(
        "publish", help="push the wheelhouse to a team index (upload API, directory or rsync)"
    )
    publish.add_argument("projects", nargs="*", metavar="PROJECT",
                         help="projects to publish (default: every wheel in the wheelhouse)")  # fmt: skip
    publish.add_argument("--to", required=True, metavar="URL",
                         help="http(s):// upload URL (credentials from TWINE_USERNAME/TWINE_PASSWORD "
                              "or keyring), a directory or file:// URL, rsync:// or [user@]host:/path")  # fmt: skip
    publish.add_argument("--simple-url", metavar="URL",
                         help="the index's PEP 503 simple API (default: <upload URL>/simple/)")  # fmt: skip
    _common(publish)
    publish.set_defaults(func=cmd_publish)

    install = sub.add_parser(
        "check-install",
        help="resolve each wheelhouse wheel's requirements for the target (wheelhouse + index)",
    )
    install.add_argument("projects", nargs="*", help="projects to check (default: all)")
    install.add_argument("--target", default=DEFAULT_TARGET)
    install.add_argument(
        "--index-url", help="the index besides the wheelhouse (default: uv's, PyPI)"
    )
    _common(install)
    install.set_defaults(func=cmd_check_install)

    graph = sub.add_parser(
        "graph", help="recipes in build order: levels whose recipes can build in parallel"
    )
    graph.add_argument("recipes", nargs="*", help="these and what they need (default: all)")
    graph.add_argument("--json", action="store_true", help="levels as JSON (for CI matrices)")
    _common(graph)
    graph.set_defaults(func=cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SparkforgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the wheelhouse was not changed by the unfinished step", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
