"""Search-space descriptions: which edges a cell has, which operations an edge mixes, whether
cells share their architecture parameters, and how a genotype is read off the weights.

=========  =====================================  ==============  ========  ===============  ======
space      edges per cell                          ops per edge    alphas    genotype rule    size
=========  =====================================  ==============  ========  ===============  ======
``darts``  14: every node <- all earlier states    8 (+none)       shared    top-2 inputs     1.1e18
``s1``     8: node i <- node i-1 and c_{k-2}       7               shared    argmax per edge  3.3e13
``s2``     8: node i <- node i-1 and c_{k-2}       2               per cell  argmax per edge  1.5e48
``s1r``    14 (DARTS cell)                         2, per edge     shared    top-2 inputs     2.1e9
``s2r``    14 (DARTS cell)                         skip, sep3      shared    top-2 inputs     2.1e9
``s3r``    14 (DARTS cell)                         none, skip, s3  shared    top-2 inputs     2.1e9
``s4r``    14 (DARTS cell)                         noise, sep3     shared    top-2 inputs     2.1e9
``nb201``  6: every node <- all earlier nodes      5 (with none)   shared    argmax per edge  15625
=========  =====================================  ==============  ========  ===============  ======

``s1r`` .. ``s4r`` are RobustDARTS' reduced spaces S1-S4 (Zela et al., "Understanding and
Robustifying Differentiable Architecture Search", ICLR 2020), in which DARTS is known to collapse
to parameter-free cells; ``nb201`` is the NAS-Bench-201 cell (Dong & Yang, ICLR 2020), built by
:mod:`darts_amend.supernet.nb201`. (Sizes at the default 8 cells; see :func:`space_size`.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .operations import OPS, PRIMITIVES
from .topology import CELL_TOPOLOGIES, CellTopology

__all__ = ["SearchSpace", "SPACES", "CELL_TYPES", "get_space", "space_size"]

#: ``darts``: two inputs (c_{k-2}, c_{k-1}), ``steps`` nodes, output = concat of the last
#: ``multiplier`` states. ``nb201``: one input, ``steps`` nodes each summing every earlier state,
#: output = the last node (NAS-Bench-201).
CELL_TYPES = tuple(CELL_TOPOLOGIES)

EdgeOps = tuple[tuple[str, ...], ...]


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
        layers: default number of cells of the search network (for ``cell="nb201"``: cells per
            stage, of 3 stages).
        inputs_per_node: inputs kept per node by the genotype (2 in DARTS).
        edge_ops: per-edge candidate lists ``(normal_cell_edges, reduction_cell_edges)``, each
            one tuple of op names per edge (alpha-row order), all of the same length (RobustDARTS
            S1); None = ``ops`` on every edge. ``ops`` then lists every op used.
        cell: ``"darts"`` or ``"nb201"`` (see :data:`CELL_TYPES`). The NB201 cell has one input
            (state 0; node ``i`` is state ``i + 1``), keeps every edge, and its genotype may keep
            ``none`` (an edge that is cut), as NAS-Bench-201's argmax rule.
    """

    name: str
    ops: tuple[str, ...]
    steps: int = 4
    multiplier: int = 4
    fixed_edges: bool = False
    per_cell: bool = False
    layers: int = 8
    inputs_per_node: int = 2
    edge_ops: tuple[EdgeOps, EdgeOps] | None = None
    cell: str = "darts"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.cell not in CELL_TOPOLOGIES:
            raise ValueError(f"space {self.name!r}: unknown cell type {self.cell!r}; "
                             f"known: {list(CELL_TYPES)}")
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
        self.topology.check(
            self.name,
            fixed_edges=self.fixed_edges,
            per_cell=self.per_cell,
            multiplier=self.multiplier,
            inputs_per_node=self.inputs_per_node,
            edge_ops=self.edge_ops,
        )
        if self.edge_ops is not None:
            self._check_edge_ops()

    def _check_edge_ops(self) -> None:
        eo = self.edge_ops
        if self.per_cell or not isinstance(eo, (tuple, list)) or len(eo) != 2:
            raise ValueError(f"space {self.name!r}: edge_ops needs shared alphas and two lists "
                             "(normal cell, reduction cell)")
        normal, reduce = (tuple(tuple(ops) for ops in cell) for cell in eo)
        eo = (normal, reduce)
        object.__setattr__(self, "edge_ops", eo)
        widths = {len(ops) for cell in eo for ops in cell}
        for kind, cell in zip(("normal", "reduction"), eo, strict=True):
            if len(cell) != self.num_edges:
                raise ValueError(f"space {self.name!r}: {kind} edge_ops lists {len(cell)} edges, "
                                 f"the cell has {self.num_edges}")
            for e, ops in enumerate(cell):
                if len(set(ops)) != len(ops) or not set(ops) <= set(self.ops):
                    raise ValueError(f"space {self.name!r}: {kind} edge {e} ops {list(ops)} must "
                                     f"be distinct names from ops {list(self.ops)}")
                if all(op == "none" for op in ops):
                    raise ValueError(f"space {self.name!r}: {kind} edge {e} has only 'none'")
        if len(widths) != 1:
            raise ValueError(f"space {self.name!r}: every edge needs the same number of ops "
                             f"(one alpha matrix per cell type), got {sorted(widths)}")

    # -- structure -----------------------------------------------------------------------
    @property
    def topology(self) -> CellTopology:
        """The cell topology named by ``cell`` (:mod:`darts_amend.supernet.topology`)."""
        return CELL_TOPOLOGIES[self.cell]

    @property
    def num_inputs(self) -> int:
        """States a cell receives: 2 (c_{k-2}, c_{k-1}) for DARTS cells, 1 for NB201."""
        return self.topology.num_inputs

    def node_inputs(self, node: int) -> tuple[int, ...]:
        """State indices that feed intermediate node ``node`` in the search cell."""
        if self.fixed_edges:
            return (0, node + 1)  # c_{k-2} and the previous state (c_{k-1} for node 0)
        return tuple(range(node + self.num_inputs))

    def edges(self) -> list[tuple[int, int]]:
        """All search-cell edges as ``(node, input_state)``, in alpha-row order."""
        return [(node, src) for node in range(self.steps) for src in self.node_inputs(node)]

    @property
    def num_edges(self) -> int:
        return len(self.edges())

    @property
    def concat(self) -> tuple[int, ...]:
        """State indices concatenated into the cell output."""
        end = self.num_inputs + self.steps
        return tuple(range(end - self.multiplier, end))

    @property
    def keeps_none(self) -> bool:
        """Whether a genotype may keep ``none`` (NB201's argmax rule; DARTS' rules never do)."""
        return self.topology.keeps_none

    @property
    def kept_ops(self) -> tuple[str, ...]:
        """Operations a genotype may keep (``none`` only in NB201 cells)."""
        return tuple(op for op in self.ops if op != "none" or self.keeps_none)

    @property
    def ops_per_edge(self) -> int:
        """Candidate operations per edge (alpha columns)."""
        return len(self.ops) if self.edge_ops is None else len(self.edge_ops[0][0])

    def edge_op_names(self, reduction: bool = False) -> tuple[tuple[str, ...], ...]:
        """The candidate ops of every edge (alpha-row order) of a normal / reduction cell."""
        if self.edge_ops is None:
            return (self.ops,) * self.num_edges
        return self.edge_ops[1 if reduction else 0]

    def cell_kinds(self, layers: int | None = None) -> list[str]:
        """Names of the alpha sets: ``["normal", "reduce"]``, ``["cell_0", ...]`` (per cell) or
        ``["cell"]`` (NB201: one set for every cell)."""
        layers = self.layers if layers is None else layers
        if self.topology.one_alpha_set:
            return ["cell"]
        if self.per_cell:
            return [f"cell_{i}" for i in range(layers)]
        return ["normal", "reduce"]

    def cell_size(self, reduction: bool = False) -> int:
        """Number of distinct genotypes of one (normal / reduction) cell."""
        m = [sum(op != "none" or self.keeps_none for op in ops)
             for ops in self.edge_op_names(reduction)]
        if self.fixed_edges or self.topology.keeps_all_edges:
            return math.prod(m)
        total, e = 1, 0
        for node in range(self.steps):
            idx = range(e, e + len(self.node_inputs(node)))
            total *= sum(math.prod(m[i] for i in pick)
                         for pick in itertools.combinations(idx, self.inputs_per_node))
            e += len(idx)
        return total

    def size(self, layers: int | None = None) -> int:
        """Number of architectures: the product of the cell sizes of the alpha sets."""
        return math.prod(self.cell_size(kind == "reduce") for kind in self.cell_kinds(layers))


# RobustDARTS S1 (src/spaces.py of automl/RobustDARTS): two candidate ops per edge, chosen there
# as the two strongest ops of each edge in an earlier DARTS run; alpha-row order of the DARTS cell
_S1R_NORMAL = (
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
    ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "sep_conv_3x3"),
    ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
    ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"),
)
_S1R_REDUCE = (
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
)
_S1R_OPS = tuple(op for op in PRIMITIVES if any(op in e for e in _S1R_NORMAL + _S1R_REDUCE))

#: NAS-Bench-201's five operations, in its alpha-column order.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

#: The paper's three spaces (Sec. 4.1): DARTS' own, and the edge-fixed S1 and S2; RobustDARTS'
#: reduced spaces S1-S4 (the DARTS cell with 2-3 ops per edge, where DARTS collapses); and the
#: NAS-Bench-201 cell.
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
    "s1r": SearchSpace("s1r", _S1R_OPS, edge_ops=(_S1R_NORMAL, _S1R_REDUCE)),
    "s2r": SearchSpace("s2r", ("skip_connect", "sep_conv_3x3")),
    "s3r": SearchSpace("s3r", ("none", "skip_connect", "sep_conv_3x3")),
    "s4r": SearchSpace("s4r", ("noise", "sep_conv_3x3")),
    "nb201": SearchSpace("nb201", NB201_OPS, steps=3, multiplier=1, layers=5, cell="nb201"),
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
    >>> space_size('nb201'), f"{space_size('s2r'):.2e}", f"{space_size('s1r'):.2e}"
    (15625, '2.12e+09', '2.12e+09')
    """
    return get_space(space, ops=ops, layers=layers).size()
