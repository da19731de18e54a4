"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020): genotype, supernet and re-training net.

The cell has one input (state 0) and three nodes; node ``i`` (state ``i``, 1..3) sums one
operation on every earlier state, so 6 edges, each one of ``none``, ``skip_connect``,
``nor_conv_1x1``, ``nor_conv_3x3``, ``avg_pool_3x3`` (``nor_conv`` = ReLU - conv - BN; the pool
has no BN); the output is node 3. The network: a 3x3 conv stem with C channels, then three stages
of N cells (C, 2C, 4C channels) with a residual reduction block (stride 2) between stages, then
BN - ReLU - global pool - linear. NAS-Bench-201 uses C=16, N=5; its 15,625 cells were trained on
CIFAR-10 / 100 and ImageNet-16-120, and DARTS (V1 and V2) searched there ends at the all-skip
cell (54.30% CIFAR-10 test accuracy), shipped as :data:`NB201_DARTS`.

The genotype is NB201's string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (node by node, input
after the ``~``); the search reads it off with NB201's rule: every edge keeps its argmax op,
``none`` included (a cut edge). Stride-2 blocks give ``ceil(H/2)``, so odd sizes work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .derive import derive_nb201, parameter_free_share
from .genotypes import NB201_DARTS, NB201Genotype
from .operations import Identity, MixedOp, ReLUConvBN, Zero, drop_path, make_op
from .spaces import SearchSpace, get_space

__all__ = [
    "NB201Genotype",
    "NB201_DARTS",
    "ResidualBlock",
    "NB201SearchNetwork",
    "NB201Network",
    "build_nb201_search_network",
    "derive_nb201",
]

class ResidualBlock(nn.Module):
    """NAS-Bench-201's residual block between stages: ReLU-conv3x3(stride)-BN, ReLU-conv3x3-BN,
    plus a shortcut (2x2 average pool + 1x1 conv when it reduces, ceil mode for odd sizes)."""

    def __init__(self, C_in: int, C_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        if stride == 2:
            self.downsample: nn.Module | None = nn.Sequential(
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(C_in, C_out, 1, bias=False),
            )
        elif C_in != C_out:
            self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0)
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


class _Body(nn.Module):
    """Stem, 3 stages of ``layers`` cells with residual blocks between them, head.
    ``make_cell(C)`` builds one cell of C channels."""

    def __init__(self, C: int, num_classes: int, layers: int, in_channels: int, dropout: float,
                 make_cell: Callable[[int], nn.Module]) -> None:
        super().__init__()
        for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers),
                            ("in_channels", in_channels)):
            if int(value) < 1:
                raise ValueError(f"invalid {name}: {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"invalid dropout: {dropout}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        for stage in range(3):
            if stage:
                self.cells.append(ResidualBlock(C << (stage - 1), C << stage, 2))
            self.cells.extend(make_cell(C << stage) for _ in range(layers))
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(4 * C, num_classes)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )

    def _head(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.global_pooling(self.lastact(x)).flatten(1)))


class _SearchCell(nn.Module):
    def __init__(self, space: SearchSpace, C: int) -> None:
        super().__init__()
        self.space = space
        self.ops = nn.ModuleList(MixedOp(C, 1, space.ops, pool_bn=False) for _ in space.edges())

    def forward(self, x: Tensor, weights: Tensor, drop_prob: float = 0.0) -> Tensor:
        states, e = [x], 0
        for node in range(self.space.steps):
            total = None
            for src in self.space.node_inputs(node):
                h = self.ops[e](states[src], weights[e], drop_prob)
                total = h if total is None else total + h
                e += 1
            assert total is not None
            states.append(total)
        return states[-1]


class NB201SearchNetwork(_Body):
    """The NB201 supernet (DARTS on NAS-Bench-201): one alpha set (6 edges x 5 ops) shared by
    every cell, non-affine BN in the cells, as NB201's DARTS. The same protocol as
    :class:`~darts_amend.supernet.SearchNetwork` (``arch_parameters``, ``weight_parameters``,
    ``_loss``, ``edge_weights``, ``genotype``, ``kept_op_weights``, ``op_names``,
    ``cell_kinds`` = ``["cell"]``), so estimators, diagnostics and the CLI work unchanged."""

    def __init__(self, space: SearchSpace | str = "nb201", C: int = 16, num_classes: int = 10,
                 layers: int | None = None, in_channels: int = 3, drop_path_prob: float = 0.0,
                 dropout: float = 0.0, criterion: Callable[[Tensor, Tensor], Tensor] | None = None
                 ) -> None:
        space = get_space(space, layers=layers)
        if space.cell != "nb201":
            raise ValueError(f"space {space.name!r} does not have nb201 cells")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"invalid drop_path_prob: {drop_path_prob}")
        super().__init__(C, num_classes, space.layers, in_channels, dropout,
                         lambda c: _SearchCell(space, c))
        self.space = space
        self.drop_path_prob = float(drop_path_prob)
        self.auxiliary, self.auxiliary_weight = False, 0.0
        self.partial_channels, self.edge_normalization = 1, False
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.op_names: list[str] = list(space.ops)
        self.cell_kinds: list[str] = space.cell_kinds()
        self.alphas = nn.ParameterList(
            [nn.Parameter(1e-3 * torch.randn(space.num_edges, len(space.ops)))])
        self.betas = nn.ParameterList()

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        weights = F.softmax(self.alphas[0], dim=-1)
        drop = self.drop_path_prob if self.training else 0.0
        s = self.stem(x)
        for cell in self.cells:
            s = cell(s, weights, drop) if isinstance(cell, _SearchCell) else cell(s)
        return self._head(s)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.criterion(self(x), y)

    def edge_weights(self) -> dict[str, Tensor]:
        return {"cell": F.softmax(self.alphas[0].detach(), dim=-1)}

    def edge_normalizers(self) -> dict[str, Tensor]:
        return {}

    def genotype(self) -> NB201Genotype:
        return derive_nb201(self.space, self.edge_weights()["cell"])[0]

    def kept_op_weights(self) -> dict[str, list[float]]:
        w = self.edge_weights()["cell"]
        _, kept = derive_nb201(self.space, w)
        return {"cell": [float(w[e, o]) for e, o in kept]}

    def parameter_free_share(self) -> dict[str, float]:
        return parameter_free_share(self.space, self.edge_weights())


class _Cell(nn.Module):
    def __init__(self, genotype: NB201Genotype, C: int) -> None:
        super().__init__()
        self.inputs = [j for _, j, _ in genotype.edges]
        self.sizes = [len(node) for node in genotype.nodes]
        self.ops = nn.ModuleList(make_op(op, C, 1, affine=True) for _, _, op in genotype.edges)

    def forward(self, x: Tensor, drop_prob: float = 0.0) -> Tensor:
        states, e = [x], 0
        for size in self.sizes:
            total = None
            for _ in range(size):
                op = self.ops[e]
                h = op(states[self.inputs[e]])
                if self.training and drop_prob > 0.0 and not isinstance(op, (Identity, Zero)):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
                e += 1
            assert total is not None
            states.append(total)
        return states[-1]


class NB201Network(_Body):
    """The NB201 re-training network of a genotype (``layers`` cells per stage, NB201: C=16,
    N=5). Returns logits; ``drop_path_prob`` (a plain attribute a trainer may schedule) drops
    non-identity edges in training."""

    def __init__(self, C: int, num_classes: int, layers: int, genotype: NB201Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0, dropout: float = 0.0) -> None:
        if not isinstance(genotype, NB201Genotype):
            raise TypeError(f"genotype must be an NB201Genotype, got {type(genotype).__name__}")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"invalid drop_path_prob: {drop_path_prob}")
        super().__init__(C, num_classes, layers, in_channels, dropout,
                         lambda c: _Cell(genotype, c))
        self.genotype = genotype
        self.drop_path_prob = float(drop_path_prob)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        s = self.stem(x)
        for cell in self.cells:
            s = cell(s, self.drop_path_prob) if isinstance(cell, _Cell) else cell(s)
        return self._head(s)


def build_nb201_search_network(
    spec: SearchSpace,
    *,
    C: int,
    num_classes: int,
    in_channels: int,
    partial_channels: int,
    edge_normalization: bool,
    drop_path_prob: float,
    dropout: float,
    auxiliary: bool,
    **kwargs: Any,
) -> NB201SearchNetwork:
    """The builder :func:`darts_amend.supernet.search.build_search_network` uses for NB201
    cells: no PC-DARTS options, no auxiliary tower, CIFAR stem only (ValueError otherwise)."""
    unsupported = {"partial_channels": partial_channels != 1, "auxiliary": auxiliary,
                   "edge_normalization": edge_normalization,
                   "stem": kwargs.pop("stem", "cifar") != "cifar"}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"the nb201 supernet does not support {', '.join(bad)}")
    kwargs.pop("auxiliary_weight", None)
    return NB201SearchNetwork(spec, C=C, num_classes=num_classes, layers=spec.layers,
                              in_channels=in_channels, drop_path_prob=drop_path_prob,
                              dropout=dropout, **kwargs)
