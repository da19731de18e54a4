"""The search network (supernet): mixed operations, search cells and the network, configured by
a :class:`~darts_amend.supernet.spaces.SearchSpace`.

Architecture parameters are registered on the module: ``alphas`` (one ``edges x ops`` tensor per
cell kind, softmaxed over ops) and, with PC-DARTS edge normalisation, ``betas`` (one value per
edge, softmaxed over the inputs of each node). ``arch_parameters()`` returns alphas then betas;
every other trainable parameter is a weight (``weight_parameters()``).

Options beyond DARTS:
- ``partial_channels=K`` (PC-DARTS): an edge mixes only 1/K of the channels, the rest bypass it
  (max-pooled in reduction edges), followed by a channel shuffle with K groups;
- ``edge_normalization`` (PC-DARTS): node inputs weighted by softmax(betas); the genotype ranks
  edges by alpha-softmax x beta-softmax;
- "consistent search" (Amended-DARTS, Sec. 4.1.2): drop-path on every candidate operation's
  output (sparing identities), dropout before the classifier and an auxiliary tower at 2/3 depth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .derive import derive_cell, kept_edges, parameter_free_share
from .genotypes import CellGenotype, Genotype
from .nb201 import NB201SearchNetwork, build_nb201_search_network
from .operations import (
    FactorizedReduce,
    MixedOp,
    ReLUConvBN,
    channel_shuffle,
    make_head,
    make_stem,
)
from .spaces import SearchSpace, get_space

__all__ = [
    "MixedOp",
    "SearchCell",
    "SearchNetwork",
    "build_search_network",
    "channel_shuffle",
    "derive_cell",
    "is_converged",
    "kept_edges",
    "parameter_free_share",
    "SEARCH_NETWORKS",
]

logger = logging.getLogger(__name__)

Criterion = Callable[[Tensor, Tensor], Tensor]


class SearchCell(nn.Module):
    """A search cell: every edge of ``space.edges()`` is a MixedOp."""

    def __init__(
        self,
        space: SearchSpace,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.space = space
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = space.edges()
        self.ops = nn.ModuleList(
            MixedOp(C, 2 if reduction and src < 2 else 1, names, partial_channels)
            for (_, src), names in zip(self.edges, space.edge_op_names(reduction), strict=True)
        )

    def forward(
        self,
        s0: Tensor,
        s1: Tensor,
        weights: Tensor,
        edge_weights: Tensor | None = None,
        drop_prob: float = 0.0,
    ) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for node in range(self.space.steps):
            total = None
            for src in self.space.node_inputs(node):
                h = self.ops[e](states[src], weights[e], drop_prob)
                if edge_weights is not None:
                    h = edge_weights[e] * h
                total = h if total is None else total + h
                e += 1
            states.append(total)
        return torch.cat(states[-self.space.multiplier :], dim=1)


def _node_softmax(space: SearchSpace, betas: Tensor) -> Tensor:
    """softmax of the betas over the inputs of each node (PC-DARTS edge normalisation)."""
    parts, start = [], 0
    for node in range(space.steps):
        n = len(space.node_inputs(node))
        parts.append(F.softmax(betas[start : start + n], dim=-1))
        start += n
    return torch.cat(parts)


class SearchNetwork(nn.Module):
    """DARTS-style supernet over a :class:`SearchSpace`. Build it with :func:`build_search_network`.

    ``forward(x)`` returns logits, or ``(logits, aux_logits)`` in training mode with
    ``auxiliary=True``. ``_loss(x, y)`` adds ``auxiliary_weight`` x the auxiliary loss.
    ``drop_path_prob`` is a plain attribute (a trainer may schedule it).
    """

    def __init__(
        self,
        space: SearchSpace,
        C: int = 16,
        num_classes: int = 10,
        layers: int | None = None,
        in_channels: int = 3,
        partial_channels: int = 1,
        edge_normalization: bool = False,
        drop_path_prob: float = 0.0,
        dropout: float = 0.0,
        auxiliary: bool = False,
        auxiliary_weight: float = 0.4,
        stem: str = "cifar",
        stem_multiplier: int = 3,
        criterion: Criterion | None = None,
    ) -> None:
        super().__init__()
        layers = space.layers if layers is None else int(layers)
        if layers < 1:
            raise ValueError(f"invalid layers: {layers}")
        space = get_space(space, layers=layers)
        for name, value in (("C", C), ("num_classes", num_classes), ("in_channels", in_channels)):
            if int(value) < 1:
                raise ValueError(f"invalid {name}: {value}")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"invalid drop_path_prob: {drop_path_prob}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"invalid dropout: {dropout}")
        if auxiliary_weight < 0:
            raise ValueError(f"invalid auxiliary_weight: {auxiliary_weight}")
        if partial_channels < 1 or C % partial_channels:  # (< 1 first: no modulo by zero)
            raise ValueError(
                f"partial_channels={partial_channels!r} must be an integer >= 1 that divides C={C}"
            )
        self.space = space
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.in_channels = in_channels
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization
        self.drop_path_prob = float(drop_path_prob)
        self.auxiliary = auxiliary
        self.auxiliary_weight = float(auxiliary_weight)
        self.criterion: Criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        # alpha-column names; with per-edge ops (s1r) the columns are positions ("op0", "op1")
        # and space.edge_op_names(reduction) names them edge by edge
        self.op_names: list[str] = (
            list(space.ops)
            if space.edge_ops is None
            else [f"op{i}" for i in range(space.ops_per_edge)]
        )
        self.cell_kinds: list[str] = space.cell_kinds(layers)

        if stem == "cifar":
            C_curr = stem_multiplier * C
            self.stem0, self.stem1 = make_stem("cifar", in_channels, C_curr)
            reduction_prev = False
        else:
            C_curr = C
            self.stem0, self.stem1 = make_stem(stem, in_channels, C_curr)
            reduction_prev = True
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.reduction_layers = sorted({layers // 3, 2 * layers // 3})
        self.aux_layer = 2 * layers // 3
        self.cells = nn.ModuleList()
        self._cell_kind_index: list[int] = []
        C_aux = C_prev
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            self.cells.append(
                SearchCell(
                    space, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, partial_channels
                )
            )
            self._cell_kind_index.append(i if space.per_cell else int(reduction))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, space.multiplier * C_curr
            if i == self.aux_layer:
                C_aux = C_prev
        self.auxiliary_head, self.global_pooling, self.dropout, self.classifier = make_head(
            C_prev, C_aux, num_classes, auxiliary=auxiliary, stem=stem, dropout=dropout
        )

        # architecture parameters: alphas (edges x ops) per cell kind, betas (edges) per kind
        n_kinds, n_edges, n_ops = len(self.cell_kinds), space.num_edges, space.ops_per_edge
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(n_edges, n_ops)) for _ in range(n_kinds)
        )
        self.betas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(n_edges))
            for _ in range(n_kinds if edge_normalization else 0)
        )

    # -- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Alphas (one per cell kind), then betas when edge normalisation is on."""
        return list(self.alphas) + list(self.betas)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture parameter (for the weight optimizer)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- forward ----------------------------------------------------------------------------
    def _weights(self) -> tuple[list[Tensor], list[Tensor | None]]:
        ops = [F.softmax(a, dim=-1) for a in self.alphas]
        edges: list[Tensor | None] = (
            [_node_softmax(self.space, b) for b in self.betas]
            if self.edge_normalization
            else [None] * len(ops)
        )
        return ops, edges

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        op_w, edge_w = self._weights()
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        drop = self.drop_path_prob if self.training else 0.0
        aux = None
        for i, cell in enumerate(self.cells):
            k = self._cell_kind_index[i]
            s0, s1 = s1, cell(s0, s1, op_w[k], edge_w[k], drop)
            if i == self.aux_layer and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.dropout(self.global_pooling(s1).flatten(1)))
        return (logits, aux) if aux is not None else logits

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        out = self(x)
        if isinstance(out, tuple):
            logits, aux = out
            return self.criterion(logits, y) + self.auxiliary_weight * self.criterion(aux, y)
        return self.criterion(out, y)

    # -- architecture read-out ----------------------------------------------------------------
    def edge_weights(self) -> dict[str, Tensor]:
        """cell kind -> softmax over ops of its alphas (``edges x ops``, detached)."""
        return {
            kind: F.softmax(a.detach(), dim=-1)
            for kind, a in zip(self.cell_kinds, self.alphas, strict=True)
        }

    def edge_normalizers(self) -> dict[str, Tensor]:
        """cell kind -> per-edge weights: softmax(betas) over each node's inputs."""
        return {
            kind: _node_softmax(self.space, b.detach())
            for kind, b in zip(self.cell_kinds, self.betas, strict=True)
        }

    def _derived(self) -> list[tuple[CellGenotype, list[tuple[int, int]]]]:
        op_w = self.edge_weights()
        edge_w = self.edge_normalizers() if self.edge_normalization else {}
        return [
            derive_cell(self.space, op_w[k], edge_w.get(k), reduction=k == "reduce")
            for k in self.cell_kinds
        ]

    def genotype(self) -> Genotype:
        """The discrete architecture under the space's genotype rule."""
        cells = [cell for cell, _ in self._derived()]
        if self.space.per_cell:
            return Genotype.per_cell(cells)
        return Genotype.shared(cells[0], cells[1])

    def kept_op_weights(self) -> dict[str, list[float]]:
        """cell kind -> softmax weight (over ops) of every kept operation, genotype order."""
        out = {}
        for kind, (_, kept) in zip(self.cell_kinds, self._derived(), strict=True):
            w = F.softmax(self.alphas[self.cell_kinds.index(kind)].detach(), dim=-1)
            out[kind] = [float(w[e, o]) for e, o in kept]
        return out

    def parameter_free_share(self) -> dict[str, float]:
        """:func:`parameter_free_share` of the current alphas."""
        edge_w = self.edge_normalizers() if self.edge_normalization else None
        return parameter_free_share(self.space, self.edge_weights(), edge_w)


def is_converged(net: SearchNetwork, threshold: float = 0.5) -> bool:
    """The paper's convergence test (Sec. 4.1.1): every kept op has softmax weight >= threshold.

    (The paper also asks that the genotype stops changing; that needs the run's history, so the
    search loop checks it.) With two ops per edge (S2) the argmax op always weighs >= 0.5, so at
    the default threshold this test alone is always true there. DataParallel / DDP wrappers are
    unwrapped."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"invalid threshold: {threshold}")
    if not hasattr(net, "kept_op_weights") and hasattr(net, "module"):  # DataParallel / DDP
        net = net.module
    if not hasattr(net, "kept_op_weights"):
        raise TypeError(f"is_converged needs a SearchNetwork, got {type(net).__name__}")
    return all(w >= threshold for ws in net.kept_op_weights().values() for w in ws)


#: Builders of the search networks of cell topologies that are not DARTS cells, by
#: ``SearchSpace.cell`` (DARTS cells: :class:`SearchNetwork`).
SEARCH_NETWORKS: dict[str, Callable[..., nn.Module]] = {"nb201": build_nb201_search_network}


def build_search_network(
    space: str | SearchSpace = "darts",
    C: int = 16,
    num_classes: int = 10,
    layers: int | None = None,
    in_channels: int = 3,
    ops: Sequence[str] | None = None,
    partial_channels: int = 1,
    edge_normalization: bool = False,
    drop_path_prob: float = 0.0,
    dropout: float = 0.0,
    auxiliary: bool = False,
    **kwargs,
) -> SearchNetwork | NB201SearchNetwork:
    """Build the supernet of a named space (``"darts"``, ``"s1"``, ``"s2"``, ``"s1r"`` ..
    ``"s4r"``, ``"nb201"``) or a given one.

    ``ops`` replaces the space's operation list, ``layers`` its cell count (default: the
    space's: 8 for darts / s1 / s*r, 20 for s2; for nb201 the cells per stage, 5). Extra keyword
    arguments go to :class:`SearchNetwork` (``auxiliary_weight``, ``stem``, ``criterion``,
    ``stem_multiplier``). NB201 cells give a
    :class:`~darts_amend.supernet.nb201.NB201SearchNetwork` (no PC-DARTS options, no auxiliary
    tower, CIFAR stem only).
    """
    spec = get_space(space, ops=ops, layers=layers)
    builder = SEARCH_NETWORKS.get(spec.cell)
    if builder is not None:  # a cell topology with its own network (NB201)
        return builder(spec, C=C, num_classes=num_classes, in_channels=in_channels,
                       partial_channels=partial_channels, edge_normalization=edge_normalization,
                       drop_path_prob=drop_path_prob, dropout=dropout, auxiliary=auxiliary,
                       **kwargs)
    net = SearchNetwork(
        spec,
        C=C,
        num_classes=num_classes,
        layers=spec.layers,
        in_channels=in_channels,
        partial_channels=partial_channels,
        edge_normalization=edge_normalization,
        drop_path_prob=drop_path_prob,
        dropout=dropout,
        auxiliary=auxiliary,
        **kwargs,
    )
    logger.debug(
        "built %s supernet: %d cells, %d alpha sets, %d edges x %d ops",
        spec.name,
        net.layers,
        len(net.alphas),
        spec.num_edges,
        len(spec.ops),
    )
    return net
