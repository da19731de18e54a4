"""Reference supernet: DARTS, S1 and S2 search spaces (paper Sec. 4.1), RobustDARTS' reduced
spaces s1r-s4r and the NAS-Bench-201 cell, PC-DARTS options, genotypes, evaluation networks and
cell plots.

API notes (deviations from / additions to the coordination contract):
- ``build_search_network(layers=None)``: None means the space's own cell count (8 for darts and
  s1, 20 for s2); pass an int to override.
- Alphas are registered parameters, so ``net.parameters()`` includes them: give the weight
  optimizer ``net.weight_parameters()`` (or ``darts_amend.model.split_parameters``).
- ``NetworkCIFAR`` / ``NetworkImageNet`` return logits, or ``(logits, aux_logits)`` in training
  mode with an auxiliary head -- the same convention as the search network (upstream DARTS
  always returns a pair).
- ``CellGenotype`` exists; ``Genotype`` keeps DARTS' field names (``normal``, ``normal_concat``,
  ``reduce``, ``reduce_concat``) for shared cells and has ``cells`` for per-cell (S2) genotypes.
"""

from __future__ import annotations

from .derive import derive_cell, derive_nb201, kept_edges, parameter_free_share
from .evaluation import (
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    count_multiply_adds,
    count_parameters,
)
from .genotypes import (
    DARTS_V1,
    DARTS_V2,
    GENOTYPES,
    NB201_DARTS,
    CellGenotype,
    Genotype,
    NB201Genotype,
)
from .nb201 import NB201Network, NB201SearchNetwork
from .operations import OPS, PARAMETER_FREE, PRIMITIVES, MixedOp
from .plot import genotype_to_dot, plot_cell, plot_genotype, plot_network, plot_space
from .search import SearchCell, SearchNetwork, build_search_network, is_converged
from .spaces import SPACES, SearchSpace, get_space, space_size
from .topology import CELL_TOPOLOGIES, CellTopology

__all__ = [
    "PRIMITIVES",
    "OPS",
    "SPACES",
    "SearchSpace",
    "get_space",
    "space_size",
    "CELL_TOPOLOGIES",
    "CellTopology",
    "MixedOp",
    "SearchCell",
    "SearchNetwork",
    "build_search_network",
    "derive_cell",
    "derive_nb201",
    "kept_edges",
    "is_converged",
    "parameter_free_share",
    "PARAMETER_FREE",
    "NB201Genotype",
    "NB201_DARTS",
    "NB201SearchNetwork",
    "NB201Network",
    "CellGenotype",
    "Genotype",
    "DARTS_V1",
    "DARTS_V2",
    "GENOTYPES",
    "EvalCell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "count_parameters",
    "count_multiply_adds",
    "plot_genotype",
    "plot_cell",
    "plot_network",
    "plot_space",
    "genotype_to_dot",
]
