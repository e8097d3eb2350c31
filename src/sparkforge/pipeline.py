"""The conductor: one build plan through every stage, in order.

sources and build (``build.plan.prepare`` / ``build.plan.compile_wheel``) → wheel
(normalize, repair, tags, the CUDA audit) → wheelhouse (provenance, publish). The
stages never call one another backwards; this module is the only place that holds
them all, and the wheelhouse changes only in its last step.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from sparkforge.building.plan import BuildPlan, compile_wheel, prepare
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import BuildError, WheelError
from sparkforge.util.progress import BuildLog
from sparkforge.wheel import compat, cudabin
from sparkforge.wheel import repair as wheels
from sparkforge.wheelhouse.needs import needed_wheels
from sparkforge.wheelhouse.provenance import statement
from sparkforge.wheelhouse.store import StoredWheel, Wheelhouse


def up_to_date(plan: BuildPlan) -> Path | None:
    """The wheel already published with this build key, if any (one file read)."""
    return Wheelhouse(plan.wheelhouse).built(plan.build_key)


def execute(plan: BuildPlan, console: Console) -> StoredWheel:
    """Run the build; the wheelhouse changes only in the final publish step."""
    log = BuildLog(plan.log_path, console, plan.workspace.expected_seconds(plan.history_key))
    started = time.time()
    try:
        return _phases(plan, log, started)
    except BuildError:
        log.show_failure()
        raise
    finally:
        log.close()


def _phases(plan: BuildPlan, log: BuildLog, started: float) -> StoredWheel:
    toolchain = prepare(plan, log, local_wheels=needed_wheels(plan))
    raw, toolchain = compile_wheel(plan, log, toolchain)
    with log.phase("repair"):
        # The local label goes on first so that auditwheel's SBOM names the final version.
        labelled = wheels.normalize(
            raw,
            out_dir=plan.build_dir / "labelled",
            source_date_epoch=plan.lock.source_date_epoch,
            local_version=plan.local_version,
            requires=plan.recipe.runtime_requires(plan.version),
        )
        tool, where = plan.runner.auditwheel(log.line)
        repaired = wheels.repair(
            labelled,
            policy=plan.target.manylinux,
            excludes=plan.repair_exclude,
            out_dir=plan.build_dir / "repaired",
            env={"SOURCE_DATE_EPOCH": str(plan.lock.source_date_epoch)},
            log=log.line,
            auditwheel=tool,
            execute=where,
        )
        if plan.recipe.repair.rpath:
            repaired = wheels.prepend_rpath(
                repaired, plan.recipe.repair.rpath, plan.build_dir / "rpath"
            )
            log.note(f"RPATH entries put in front: {plan.recipe.repair.rpath}")
    with log.phase("normalize"):
        final = wheels.normalize(
            repaired,
            out_dir=plan.build_dir / "final",
            source_date_epoch=plan.lock.source_date_epoch,
        )
        wheels.check_tags(final, plan.target)
    with log.phase("audit"):
        reports = cudabin.scan_wheel(final)
        audits = {
            a.name: compat.audit(
                reports, a.sm, machine=plan.target.machine, cuda_required=plan.recipe.cuda
            )
            for a in plan.archs
        }
        for name, result in audits.items():
            log.note(f"{name}: {result.summary}")
        gaps = [name for name, result in audits.items() if not result.ok]
        if plan.recipe.cuda and all(
            r.status is compat.Status.NO_CUDA_CODE for r in audits.values()
        ):
            raise WheelError(
                f"{final.name}: no library in the wheel holds CUDA device code: a CPU-only build. "
                f"Check the recipe's CUDA flags ({plan.recipe.path}); nothing was published"
            )
        if gaps and not plan.options.allow_arch_gaps:
            raise WheelError(
                f"{final.name}: will not run on {', '.join(gaps)} (see the audit above); nothing was "
                "published. Fix the arch list, or pass --allow-arch-gaps to publish anyway (recorded "
                "in provenance)"
            )
    with log.phase("publish"):
        digest = sha256_file(final)
        durations = dict(log.durations)
        body = statement(
            plan,
            final.name,
            digest,
            durations=durations,
            started=started,
            audit={name: r.to_json() for name, r in audits.items()},
            arch_gaps_allowed=bool(gaps),
            toolchain=toolchain,
        )
        house = Wheelhouse(plan.wheelhouse)
        stored = house.publish(final, body.to_json())
        house.remember_build(plan.build_key, stored.filename)
    plan.workspace.record_durations(plan.history_key, log.durations)
    if not plan.options.keep_build_dir:
        shutil.rmtree(plan.build_dir, ignore_errors=True)
    return stored
