"""Reading a discrete architecture off the supernet's weights (the genotype rules).

For one cell kind, ``op_weights`` are the softmaxed alphas (``edges x ops``, alpha-row order of
:meth:`SearchSpace.edges`); with PC-DARTS edge normalisation each row is scaled by the edge's
weight. The space's cell topology (:mod:`darts_amend.supernet.topology`) says which edges a
genotype keeps:

* DARTS cells with free edges: per node, the ``inputs_per_node`` inputs whose best non-``none``
  weight is largest, each with that op (DARTS' rule);
* fixed edges, and topologies that keep every edge (NB201): every edge with its argmax op
  (``none`` only where the topology keeps it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .genotypes import CellGenotype, NB201Genotype
from .operations import PARAMETER_FREE
from .spaces import SearchSpace

__all__ = ["derive_cell", "derive_nb201", "kept_edges", "parameter_free_share"]


def kept_edges(
    space: SearchSpace,
    op_weights: Tensor,
    edge_weights: Tensor | None = None,
    *,
    reduction: bool = False,
) -> list[tuple[int, int]]:
    """The ``(edge_index, op_index)`` pairs the space's genotype rule keeps, node by node.

    darts-style spaces: per node, the ``inputs_per_node`` inputs whose best non-``none`` weight
    (times the edge weight, with edge normalisation) is largest, each with that op. Fixed-edge
    spaces: every edge with its argmax op (``none`` excluded). NB201: every edge with its argmax
    op, ``none`` included (NAS-Bench-201's rule). ``noise`` is an op like any other (RobustDARTS
    S4 keeps it). ``reduction`` picks the op lists of spaces with per-edge ops (s1r).
    """
    w = op_weights.detach().to(torch.float64).cpu()
    if edge_weights is not None:
        w = w * edge_weights.detach().to(torch.float64).cpu()[:, None]
    names = space.edge_op_names(reduction)
    if w.shape != (len(names), space.ops_per_edge):
        raise ValueError(f"space {space.name!r}: weights of shape {tuple(w.shape)}, expected "
                         f"{(len(names), space.ops_per_edge)}")
    allowed = torch.tensor([[op != "none" or space.keeps_none for op in ops] for ops in names])
    masked = w.masked_fill(~allowed, float("-inf"))
    best_val, best_op = masked.max(dim=1)
    kept: list[tuple[int, int]] = []
    e = 0
    for node in range(space.steps):
        idx = list(range(e, e + len(space.node_inputs(node))))
        if space.fixed_edges or space.topology.keeps_all_edges:
            chosen = idx
        else:  # stable sort: ties go to the lower input index
            chosen = sorted(idx, key=lambda i: -float(best_val[i]))[: space.inputs_per_node]
        kept += [(i, int(best_op[i])) for i in chosen]
        e += len(idx)
    return kept


def derive_cell(
    space: SearchSpace,
    op_weights: Tensor,
    edge_weights: Tensor | None = None,
    *,
    reduction: bool = False,
) -> tuple[CellGenotype, list[tuple[int, int]]]:
    """Read a DARTS-type cell genotype off softmaxed weights (``edges x ops``), under the rule
    of :func:`kept_edges`. Returns the genotype and the kept ``(edge_index, op_index)`` pairs.
    (NB201 cells: :func:`darts_amend.supernet.nb201.derive_nb201`.)"""
    if space.cell != "darts":
        raise ValueError(f"space {space.name!r} has {space.cell} cells; use derive_nb201")
    kept = kept_edges(space, op_weights, edge_weights, reduction=reduction)
    edges, names = space.edges(), space.edge_op_names(reduction)
    genes = tuple((names[i][o], edges[i][1]) for i, o in kept)
    return CellGenotype(genes, space.concat), kept


def parameter_free_share(
    space: SearchSpace,
    op_weights: Mapping[str, Tensor | Sequence[Sequence[float]]],
    edge_weights: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """How parameter-free (:data:`~darts_amend.supernet.operations.PARAMETER_FREE`: none, noise,
    skip, pools) an architecture is, from the softmax weights of every alpha set.

    - ``pf_share``: over the edges the genotype keeps, the fraction whose top op among *all*
      candidates (``none`` included) is parameter-free. An edge that ``none`` dominates counts,
      although DARTS' rule then writes its best other op into the genotype (s3r).
    - ``pf_share_genotype``: the fraction of the genotype's ops that are parameter-free.
    In spaces without ``none`` (and in NB201, which keeps ``none``) the two are equal.
    ``op_weights`` maps cell kind -> ``edges x ops`` weights (tensors or nested lists, as
    ``metrics.jsonl`` stores them), e.g. :meth:`SearchNetwork.edge_weights`; ``edge_weights``
    the PC-DARTS edge normalisers per cell kind (as :meth:`SearchNetwork.edge_normalizers`),
    which choose the kept edges as in the genotype.
    """
    kept_pf = genotype_pf = total = 0
    for kind, w in op_weights.items():
        w = torch.as_tensor(w, dtype=torch.float64)
        reduction = kind == "reduce"
        names = space.edge_op_names(reduction)
        top = w.argmax(dim=1)
        edge_w = None if edge_weights is None else edge_weights.get(kind)
        for e, o in kept_edges(space, w, edge_w, reduction=reduction):
            total += 1
            kept_pf += names[e][int(top[e])] in PARAMETER_FREE
            genotype_pf += names[e][o] in PARAMETER_FREE
    if total == 0:
        raise ValueError("no alpha sets given")
    return {"pf_share": kept_pf / total, "pf_share_genotype": genotype_pf / total}




def derive_nb201(space: SearchSpace, op_weights: Tensor) -> tuple[NB201Genotype, list]:
    """NB201's rule: every edge keeps its argmax op (``none`` included). Returns the genotype
    and the kept ``(edge_index, op_index)`` pairs."""
    kept = kept_edges(space, op_weights)
    it = iter(kept)
    nodes = tuple(tuple((space.ops[next(it)[1]], j) for j in space.node_inputs(n))
                  for n in range(space.steps))
    return NB201Genotype(nodes), kept
