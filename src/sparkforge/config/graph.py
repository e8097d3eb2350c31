"""The recipe graph: which recipes build against which, and what can build in parallel.

Recipes name what they build against in ``needs``. CI systems are the
distributed engine (docs/ci.md): they get the graph from ``sparkforge graph
--json`` as levels, where every recipe of a level needs only recipes of earlier
levels, so the recipes of one level can build on different runners at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from packaging.utils import canonicalize_name

from sparkforge.config.recipes import Recipe, available_recipes, load_recipe
from sparkforge.util.errors import ConfigError


@dataclass(frozen=True)
class Node:
    """One recipe as a CI job needs to know it."""

    recipe: str
    dist: str
    needs: tuple[str, ...]

    @property
    def files(self) -> str:
        """Glob of this recipe's files in ``wheelhouse/files`` (wheel and sidecars).

        Wheel file names carry the distribution name normalized with ``_``, and
        the ``-`` after it keeps ``torch-*`` from matching ``torchvision-*``.
        """
        return canonicalize_name(self.dist).replace("-", "_") + "-*"

    def as_json(self) -> dict[str, object]:
        return {"recipe": self.recipe, "dist": self.dist, "needs": list(self.needs),
                "files": self.files}  # fmt: skip


def recipe_levels(project: Path, wanted: list[str] | None = None) -> list[list[Node]]:
    """The wanted recipes (default: all) and everything they need, in build levels.

    Level 0 needs nothing; level n needs only levels < n. Within a level the
    order is by name, so the output is the same on every machine.
    """
    nodes = _closure(project, wanted or available_recipes(project))
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in sorted(nodes):
        sorter.add(name, *nodes[name].needs)
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise ConfigError(
            f"recipes need each other in a cycle ({cycle}); remove one 'needs' entry"
        ) from exc
    levels: list[list[Node]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        levels.append([nodes[name] for name in ready])
        sorter.done(*ready)
    return levels


def _closure(project: Path, names: list[str]) -> dict[str, Node]:
    """Load ``names`` and, transitively, every recipe they need."""
    nodes: dict[str, Node] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in nodes:
            continue
        recipe: Recipe = load_recipe(project, name)
        nodes[name] = Node(name, recipe.dist, tuple(sorted(recipe.needs)))
        pending.extend(recipe.needs)
    return nodes
