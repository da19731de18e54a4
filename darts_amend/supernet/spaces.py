"""Search-space descriptions: which edges a cell has, which operations an edge mixes, whether
cells share their architecture parameters, and how a genotype is read off the weights.

=========  =====================================  =========  ==========  ===============  =======
space      edges per cell                          ops        alphas      genotype rule    size
=========  =====================================  =========  ==========  ===============  =======
``darts``  14: every node <- all earlier states    8 (+none)  shared      top-2 inputs     1.1e18
``s1``     8: node i <- node i-1 and c_{k-2}       7          shared      argmax per edge  3.3e13
``s2``     8: node i <- node i-1 and c_{k-2}       2          per cell    argmax per edge  1.5e48
=========  =====================================  =========  ==========  ===============  =======

(sizes at the default 8 cells for darts / s1 and 20 cells for s2; see :func:`space_size`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .operations import OPS, PRIMITIVES

__all__ = ["SearchSpace", "SPACES", "get_space", "space_size"]


@dataclass(frozen=True)
class SearchSpace:
    """A cell search space.

    State indices inside a cell: 0 is ``c_{k-2}``, 1 is ``c_{k-1}``, ``2 + i`` is intermediate
    node ``i``. The cell output concatenates the last ``multiplier`` states.

    Attributes:
        name: label ("darts", "s1", "s2" or a user's name).
        ops: candidate operations on every edge (names in :data:`OPS`), in alpha-column order.
        steps: number of intermediate nodes.
        multiplier: number of (last) states concatenated into the cell output.
        fixed_edges: True -> node i takes exactly node i-1 (``c_{k-1}`` for node 0) and
            ``c_{k-2}``; False -> node i takes every earlier state and the genotype keeps the
            best ``inputs_per_node`` of them.
        per_cell: True -> every cell has its own alphas (S2); False -> all normal cells share
            one set and all reduction cells another (DARTS, S1).
        layers: default number of cells of the search network.
        inputs_per_node: inputs kept per node by the genotype (2 in DARTS).
    """

    name: str
    ops: tuple[str, ...]
    steps: int = 4
    multiplier: int = 4
    fixed_edges: bool = False
    per_cell: bool = False
    layers: int = 8
    inputs_per_node: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ValueError(f"space {self.name!r}: needs at least one operation")
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(
                f"space {self.name!r}: unknown operations {unknown}; known: {sorted(OPS)}"
            )
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"space {self.name!r}: duplicate operations in {list(self.ops)}")
        if not any(op != "none" for op in self.ops):
            raise ValueError(f"space {self.name!r}: needs an operation other than 'none'")
        if self.steps < 1:
            raise ValueError(f"space {self.name!r}: invalid steps {self.steps}")
        if not 1 <= self.multiplier <= self.steps:
            raise ValueError(
                f"space {self.name!r}: invalid multiplier {self.multiplier} "
                f"(must be in 1..steps={self.steps})"
            )
        if self.layers < 1:
            raise ValueError(f"space {self.name!r}: invalid layers {self.layers}")
        if self.inputs_per_node < 1:
            raise ValueError(f"space {self.name!r}: invalid inputs_per_node {self.inputs_per_node}")
        if self.fixed_edges and self.inputs_per_node != 2:
            raise ValueError(f"space {self.name!r}: fixed edges give exactly 2 inputs per node")
        if not self.fixed_edges and self.inputs_per_node > 2:
            raise ValueError(
                f"space {self.name!r}: node 0 has only 2 possible inputs, "
                f"cannot keep {self.inputs_per_node}"
            )

    # -- structure -----------------------------------------------------------------------
    def node_inputs(self, node: int) -> tuple[int, ...]:
        """State indices that feed intermediate node ``node`` in the search cell."""
        if self.fixed_edges:
            return (0, node + 1)  # c_{k-2} and the previous state (c_{k-1} for node 0)
        return tuple(range(node + 2))

    def edges(self) -> list[tuple[int, int]]:
        """All search-cell edges as ``(node, input_state)``, in alpha-row order."""
        return [(node, src) for node in range(self.steps) for src in self.node_inputs(node)]

    @property
    def num_edges(self) -> int:
        return len(self.edges())

    @property
    def concat(self) -> tuple[int, ...]:
        """State indices concatenated into the cell output."""
        return tuple(range(2 + self.steps - self.multiplier, 2 + self.steps))

    @property
    def kept_ops(self) -> tuple[str, ...]:
        """Operations a genotype may keep (``none`` never is)."""
        return tuple(op for op in self.ops if op != "none")

    def cell_kinds(self, layers: int | None = None) -> list[str]:
        """Names of the alpha sets: ``["normal", "reduce"]`` or ``["cell_0", ...]``."""
        layers = self.layers if layers is None else layers
        if self.per_cell:
            return [f"cell_{i}" for i in range(layers)]
        return ["normal", "reduce"]

    def cell_size(self) -> int:
        """Number of distinct genotypes of one cell."""
        m = len(self.kept_ops)
        if self.fixed_edges:
            return m**self.num_edges
        k = self.inputs_per_node
        return math.prod(math.comb(len(self.node_inputs(n)), k) * m**k for n in range(self.steps))

    def size(self, layers: int | None = None) -> int:
        """Number of architectures: cell size to the power of the number of alpha sets."""
        return self.cell_size() ** len(self.cell_kinds(layers))


#: The paper's three spaces (Sec. 4.1): DARTS' own, and the edge-fixed S1 and S2.
SPACES: dict[str, SearchSpace] = {
    "darts": SearchSpace("darts", PRIMITIVES, fixed_edges=False, per_cell=False, layers=8),
    "s1": SearchSpace(
        "s1",
        tuple(op for op in PRIMITIVES if op != "none"),
        fixed_edges=True,
        per_cell=False,
        layers=8,
    ),
    "s2": SearchSpace(
        "s2", ("skip_connect", "sep_conv_3x3"), fixed_edges=True, per_cell=True, layers=20
    ),
}


def get_space(
    space: str | SearchSpace = "darts",
    *,
    ops: Sequence[str] | None = None,
    layers: int | None = None,
    steps: int | None = None,
    multiplier: int | None = None,
) -> SearchSpace:
    """A named space (or a given one) with its operations / cell count / nodes overridden."""
    if isinstance(space, SearchSpace):
        base = space
    else:
        try:
            base = SPACES[space]
        except KeyError:
            raise ValueError(f"unknown search space {space!r}; known: {sorted(SPACES)}") from None
    changes: dict[str, object] = {}
    if ops is not None:
        if isinstance(ops, str):
            raise TypeError("ops must be a sequence of operation names, not a string")
        changes["ops"] = tuple(ops)
    if layers is not None:
        changes["layers"] = int(layers)
    if steps is not None:
        changes["steps"] = int(steps)
        if multiplier is None:
            changes["multiplier"] = int(steps)
    if multiplier is not None:
        changes["multiplier"] = int(multiplier)
    return replace(base, **changes) if changes else base


def space_size(
    space: str | SearchSpace = "darts",
    *,
    ops: Sequence[str] | None = None,
    layers: int | None = None,
) -> int:
    """Number of architectures in a space (exact integer).

    >>> f"{space_size('s1'):.2e}", f"{space_size('s2'):.2e}", f"{space_size('darts'):.2e}"
    ('3.32e+13', '1.46e+48', '1.08e+18')
    """
    return get_space(space, ops=ops, layers=layers).size()
