"""Live paths of a discrete cell: which operations can carry the cell input to its output.

A searched cell can look healthy by op counts and still be degenerate. The parameter-free share
counts ``none`` as one more parameter-free op, so it cannot see a cell whose ``none`` edges cut
every path from the input to the output (the cell outputs a constant whatever its input), nor a
cell whose only input-to-output paths run through skip / pooling (the stem and the residual or
preprocessing blocks around it then do all the learning). This module reads the genotype
objects' public API (``NB201Genotype.nodes``, ``CellGenotype.edges`` / ``concat``,
``Genotype.cell_genotypes()``) and counts:

- *live edges*: edges that are not ``none`` and lie on a directed path from a cell input
  (NB201: state 0; DARTS cells: ``c_{k-2}`` and ``c_{k-1}``) to the cell output (NB201: the last
  node; DARTS cells: any concatenated state);
- *live parametric ops*: live edges whose op has parameters (not in
  :data:`~darts_amend.supernet.operations.PARAMETER_FREE`);
- *disconnected*: no live edge at all, i.e. no input-to-output path.

A cell is *degenerate* when it has no live parametric op (disconnected cells included).

:func:`nb201_canonical` gives NB201 cells a canonical form, so that isomorphic cells (cells that
compute the same function with the same parameters) are counted once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ..supernet.operations import PARAMETER_FREE

__all__ = [
    "CellPaths",
    "live_paths",
    "genotype_paths",
    "nb201_canonical",
    "LINEAR_PARAMETER_FREE",
]

#: Parameter-free ops that are linear maps of their input (stride 1): they distribute over the
#: sum at a node, ``op(a + b) = op(a) + op(b)``, and ``skip_connect`` is the identity.
LINEAR_PARAMETER_FREE: frozenset[str] = frozenset({"skip_connect", "avg_pool_3x3"})


@dataclass(frozen=True)
class CellPaths:
    """Live-path summary of one cell (or, from :func:`genotype_paths`, of all cells)."""

    edges: int  # all edges of the cell(s)
    live_edges: int  # not none, on an input-to-output path
    live_parametric: int  # live edges whose op has parameters
    disconnected: bool  # no input-to-output path (in some cell, for a whole genotype)

    @property
    def degenerate(self) -> bool:
        """No parametric op on any live path (disconnected cells included)."""
        return self.disconnected or self.live_parametric == 0

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "live_edges": self.live_edges,
                "live_parametric": self.live_parametric, "disconnected": self.disconnected,
                "degenerate": self.degenerate}


def _graph(cell: Any) -> tuple[list[tuple[int, int, str]], set[int], set[int]]:
    """``(edges as (src, dst, op), input states, output states)`` of an NB201 or DARTS cell."""
    if hasattr(cell, "nodes") and getattr(cell, "is_nb201", False):
        edges = [(j, i + 1, op) for i, node in enumerate(cell.nodes) for op, j in node]
        return edges, {0}, {len(cell.nodes)}
    if hasattr(cell, "edges") and hasattr(cell, "concat"):
        # DARTS cell: edge 2k and 2k+1 feed node k = state k + 2
        edges = [(j, pos // 2 + 2, op) for pos, (op, j) in enumerate(cell.edges)]
        return edges, {0, 1}, set(cell.concat)
    raise TypeError(f"expected an NB201Genotype or a CellGenotype, got {type(cell).__name__}")


def live_paths(cell: Any) -> CellPaths:
    """Live-path summary of one cell: an ``NB201Genotype`` or a ``CellGenotype``.

    An edge ``src -> dst`` is live when its op is not ``none``, ``src`` is reachable from an
    input over non-``none`` edges, and ``dst`` reaches an output over non-``none`` edges.
    """
    edges, inputs, outputs = _graph(cell)
    real = [(s, d, op) for s, d, op in edges if op != "none"]
    forward, backward = set(inputs), set(outputs)
    # states are numbered in topological order (an edge always goes to a larger state)
    for s, d, _ in sorted(real, key=lambda e: e[1]):
        if s in forward:
            forward.add(d)
    for s, d, _ in sorted(real, key=lambda e: -e[1]):
        if d in backward:
            backward.add(s)
    live = [(s, d, op) for s, d, op in real if s in forward and d in backward]
    return CellPaths(edges=len(edges), live_edges=len(live),
                     live_parametric=sum(op not in PARAMETER_FREE for _, _, op in live),
                     disconnected=not live)


def genotype_paths(genotype: Any) -> CellPaths:
    """Live-path summary of a whole genotype: an ``NB201Genotype`` (its one cell), or a
    ``Genotype`` (normal + reduction cell, or every cell of a per-cell genotype). Counts are
    summed over cells; ``disconnected`` is True when any cell is disconnected (a network of
    such cells cannot pass its input on), and ``degenerate`` when no cell has a live
    parametric op or some cell is disconnected."""
    if getattr(genotype, "is_nb201", False):
        return live_paths(genotype)
    if not hasattr(genotype, "cell_genotypes"):
        raise TypeError(f"expected a genotype, got {type(genotype).__name__}")
    parts = [live_paths(c) for c in genotype.cell_genotypes().values()]
    return CellPaths(edges=sum(p.edges for p in parts),
                     live_edges=sum(p.live_edges for p in parts),
                     live_parametric=sum(p.live_parametric for p in parts),
                     disconnected=any(p.disconnected for p in parts))


def nb201_canonical(genotype: Any) -> str:
    """A canonical string of an NB201 cell: equal for isomorphic cells, different otherwise.

    Two cells are isomorphic when they compute the same function of the input with the same
    parametric operations, up to renaming those operations. The output is written as a sum of
    terms. A node is the sum of its incoming edges; ``none`` edges are dropped;
    ``skip_connect`` (the identity) and ``avg_pool_3x3`` (linear) distribute over sums, so a
    term is a chain of pools (``avg.``) applied to an *atom*: the input ``x`` or one parametric
    op instance (an edge; ``op#k``) applied to a canonical sum. The instance labels ``k`` say
    which atoms are the same operation (shared by two paths) and which are two operations of
    one kind; they are numbered in the order of the sorted terms, the minimum over the orders
    of look-alike atoms. Terms form a multiset (``x + x`` is not ``x``). Sums that do not
    depend on ``x`` are dropped (a ``nor_conv`` of a cut node outputs only its BN bias); a cell
    whose output does not depend on ``x`` is ``"disconnected"``. So renumbering the intermediate
    nodes, routing a path through a skip node, or cutting dead edges gives the same string;
    distinct parametric structures, shared versus separate operations, or pools in other places
    do not.
    """
    if not getattr(genotype, "is_nb201", False):
        raise TypeError(f"expected an NB201Genotype, got {type(genotype).__name__}")
    # value of a state: list of terms (pools, atom); atom = -1 for x or an edge index whose
    # definition is (op, value of its source state)
    atoms: dict[int, tuple[str, list[tuple[int, int]]]] = {}
    values: list[list[tuple[int, int]]] = [[(0, -1)]]
    e = 0
    for node in genotype.nodes:
        terms: list[tuple[int, int]] = []
        for op, j in node:
            src = values[j]
            if op == "none" or not src:
                pass  # a cut edge, or an input that does not depend on x
            elif op == "skip_connect":
                terms.extend(src)
            elif op == "avg_pool_3x3":
                terms.extend((pools + 1, atom) for pools, atom in src)
            else:
                atoms[e] = (op, src)
                terms.append((0, e))
            e += 1
        values.append(terms)
    out = values[-1]
    if not out:
        return "disconnected"

    def render(value: list[tuple[int, int]], label: dict[int, str]) -> str:
        parts = []
        for pools, atom in value:
            if atom < 0:
                body = "x"
            else:
                op, arg = atoms[atom]
                body = f"{op}#{label.get(atom, '')}({render(arg, label)})"
            parts.append("avg." * pools + body)
        return "+".join(sorted(parts))

    used: set[int] = set()

    def collect(value: list[tuple[int, int]]) -> None:
        for _, atom in value:
            if atom >= 0 and atom not in used:
                used.add(atom)
                collect(atoms[atom][1])

    collect(out)
    # atoms that look alike without labels are the only ones whose labelling is ambiguous
    groups: dict[str, list[int]] = {}
    for a in used:
        groups.setdefault(render([(0, a)], {}), []).append(a)
    keys = sorted(groups)
    best = None
    for orders in itertools.product(*(itertools.permutations(groups[k]) for k in keys)):
        label = {a: str(i) for i, a in enumerate(a for order in orders for a in order)}
        text = render(out, label)
        if best is None or text < best:
            best = text
    assert best is not None
    return best
