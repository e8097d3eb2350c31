"""The wheels a build installs for its needs: this wheelhouse's builds of them (or a
bundle's), or, for a preflight that asks for it, upstream's published wheel."""

from __future__ import annotations

from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from sparkforge.building.buildenv import upstream_wheels
from sparkforge.building.plan import BuildPlan
from sparkforge.config.recipes import load_recipe
from sparkforge.util.digest import sha256_file
from sparkforge.util.errors import BuildError
from sparkforge.util.progress import BuildLog
from sparkforge.wheelhouse.store import Wheelhouse


def needed_wheels(plan: BuildPlan, upstream: BuildLog | None = None) -> list[Path]:
    """This wheelhouse's builds of the recipe's needs (``prepare`` wheels them into the
    build directory, which it makes afresh).

    With ``upstream`` (a preflight that asked for it), a need the wheelhouse lacks is
    taken from upstream's published wheel of the same version, hash noted in the log."""
    house = Wheelhouse(plan.wheelhouse)
    wheels = []
    for need, key in plan.need_keys.items():
        if need in plan.installed_needs:
            continue  # the build interpreter has it (--installed-need); see make_env
        found = house.built(key) if key else None
        if found is None and key:
            found = plan.workspace.bundle_need(key)
        if found is None and upstream is not None:
            dist = load_recipe(plan.project, need).dist
            version = plan.need_versions.get(need, "")
            published = upstream_wheels(dist, version, python=plan.target.python,
                                        manylinux=plan.target.manylinux,
                                        dest=plan.workspace.root / "upstream-wheels")  # fmt: skip
            # What the lock pins stays as locked; the rest of the need's dependencies join it.
            locked = {canonicalize_name(r.name) for r in plan.lock.build_requires}
            names = {p: canonicalize_name(parse_wheel_filename(p.name)[0]) for p in published}
            found = next(p for p, n in names.items() if n == canonicalize_name(dist))
            extra = [p for p, n in names.items() if p != found and n not in locked]
            upstream.note(
                f"{need} {version} is not in the wheelhouse: this preflight uses upstream's "
                f"published wheel {found.name} (sha256 {sha256_file(found)}) and {len(extra)} "
                "wheels of what it declares (PyPI, not locked)"
            )
            wheels.extend(extra)
        if found is None:
            raise BuildError(
                f"{plan.recipe.name} needs {need}, which is not in {plan.wheelhouse} for this "
                f"target; build it first (`nox -s build-{need}`), use `sparkforge build` "
                "(it builds what is needed first), or for a preflight pass --upstream-needs"
            )
        wheels.append(found)
    return wheels
