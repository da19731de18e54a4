"""Cell topologies: how a search cell is wired and how its genotype is read.

A :class:`CellTopology` is the small protocol every cell type implements as data; a
:class:`~darts_amend.supernet.spaces.SearchSpace` names its topology (``cell="darts"``) and
asks it instead of testing the name:

* ``num_inputs``: states a cell receives (DARTS: c_{k-2} and c_{k-1}; NB201: one);
* ``keeps_all_edges``: the genotype keeps every edge with its argmax op (NB201), instead of the
  best ``inputs_per_node`` inputs per node (DARTS);
* ``keeps_none``: the genotype may keep ``none`` (a cut edge; NAS-Bench-201's rule);
* ``one_alpha_set``: every cell shares one alpha set named ``"cell"`` (no reduction cells).

Adding a topology: a :class:`CellTopology` in :data:`CELL_TOPOLOGIES`, a search network and a
re-training network for it (as :mod:`darts_amend.supernet.nb201`), its builder in
``darts_amend.supernet.search.SEARCH_NETWORKS``, and, when its genotype is not a
:class:`~darts_amend.supernet.genotypes.CellGenotype`, a genotype class and a reader in
:mod:`darts_amend.supernet.derive`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CELL_TOPOLOGIES", "CellTopology", "DARTS_CELL", "NB201_CELL"]


@dataclass(frozen=True)
class CellTopology:
    """One cell type (see the module docstring for the fields)."""

    name: str
    num_inputs: int
    keeps_all_edges: bool
    keeps_none: bool
    one_alpha_set: bool
    doc: str

    def check(
        self,
        space_name: str,
        *,
        fixed_edges: bool,
        per_cell: bool,
        multiplier: int,
        inputs_per_node: int,
        edge_ops: object,
    ) -> None:
        """ValueError when a space's settings contradict this topology."""
        if self.keeps_all_edges and (fixed_edges or per_cell or multiplier != 1 or edge_ops):
            raise ValueError(
                f"space {space_name!r}: an {self.name} cell has free edges (all kept), shared "
                "alphas, one output node (multiplier 1) and the same ops on every edge"
            )
        if not self.keeps_all_edges and not fixed_edges and inputs_per_node > self.num_inputs:
            # node 0 sees only the cell inputs
            raise ValueError(
                f"space {space_name!r}: node 0 has only {self.num_inputs} possible inputs, "
                f"cannot keep {inputs_per_node}"
            )


#: The DARTS cell: inputs c_{k-2}, c_{k-1}; ``steps`` nodes; output = concat of the last
#: ``multiplier`` states; genotype = the best ``inputs_per_node`` inputs per node.
DARTS_CELL = CellTopology(
    "darts",
    num_inputs=2,
    keeps_all_edges=False,
    keeps_none=False,
    one_alpha_set=False,
    doc="two inputs (c_{k-2}, c_{k-1}); output = concat of the last `multiplier` states",
)

#: The NAS-Bench-201 cell: one input, every node sums every earlier state, output = last node.
NB201_CELL = CellTopology(
    "nb201",
    num_inputs=1,
    keeps_all_edges=True,
    keeps_none=True,
    one_alpha_set=True,
    doc="one input; node i sums every earlier state; output = the last node (NAS-Bench-201)",
)

#: Every cell topology, by name (``SearchSpace.cell``).
CELL_TOPOLOGIES: dict[str, CellTopology] = {t.name: t for t in (DARTS_CELL, NB201_CELL)}
