"""A stand-in of the quark0/darts CIFAR search supernet (``cnn/model_search.py``), our own code.

What it keeps from upstream, because it decides the cost of an architect step: the eight DARTS
operations (``none`` included) with ``affine=False`` BatchNorm, pools followed by a non-affine
BatchNorm, separable convolutions as two ReLU-depthwise-pointwise-BN blocks, dilated convolutions,
``FactorizedReduce`` for stride-2 skips and after a reduction cell, 4 nodes = 14 mixed edges per
cell, the last 4 node states concatenated, a stem of ``3 C`` channels, reduction cells at 1/3 and
2/3 of the depth with doubled channels, alphas shared by all normal / all reduction cells and
softmaxed in every cell's forward, and upstream's interface quirks that its architect relies on:
alphas as plain leaf tensors outside ``parameters()`` (``arch_parameters()``), ``_loss`` through a
stored criterion and ``new()`` (a fresh copy with the same alphas, which upstream's second-order
step builds every step).

    from darts_supernet import DartsSearchNet
    net = DartsSearchNet(C=8, layers=5)      # upstream's defaults: C=16, layers=8
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PRIMITIVES", "DartsSearchNet"]

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def _relu_conv_bn(c_in: int, c_out: int, k: int, stride: int, pad: int) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(c_out, affine=False),
    )


def _dil_conv(c: int, k: int, stride: int, pad: int, dilation: int) -> list[nn.Module]:
    return [
        nn.ReLU(),
        nn.Conv2d(c, c, k, stride, pad, dilation=dilation, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False),
    ]


def _make_op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name.startswith("sep_conv"):
        k = int(name[-1])
        return nn.Sequential(*_dil_conv(c, k, stride, k // 2, 1), *_dil_conv(c, k, 1, k // 2, 1))
    if name.startswith("dil_conv"):
        k = int(name[-1])
        return nn.Sequential(*_dil_conv(c, k, stride, k - 1, 2))
    raise ValueError(f"unknown op {name!r}")


class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(_make_op(name, c, stride) for name in PRIMITIVES)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


class Cell(nn.Module):
    def __init__(
        self, steps: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else _relu_conv_bn(c_pp, c, 1, 1, 0)
        self.pre1 = _relu_conv_bn(c_p, c, 1, 1, 0)
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class DartsSearchNet(nn.Module):
    """The DARTS search network: ``layers`` cells, 4 nodes each, 8 ops per edge."""

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4) -> None:
        super().__init__()
        self._C, self._num_classes, self._layers, self._steps = C, num_classes, layers, steps
        self._criterion = nn.CrossEntropyLoss()
        c_curr = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(Cell(steps, c_pp, c_p, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c_curr
        self.classifier = nn.Linear(c_p, num_classes)
        self._initialize_alphas()

    def _initialize_alphas(self) -> None:
        k = sum(2 + i for i in range(self._steps))
        ref = self.stem[0].weight
        # plain leaf tensors, as upstream: not in parameters(), state_dict() or .to()
        self.alphas_normal = (1e-3 * torch.randn(k, len(PRIMITIVES))).to(ref).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(k, len(PRIMITIVES))).to(ref).requires_grad_()
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def arch_parameters(self) -> list[Tensor]:
        return self._arch_parameters

    def new(self) -> DartsSearchNet:
        """A fresh network with the same alphas (what upstream's second-order step builds)."""
        ref = self.stem[0].weight
        twin = type(self)(self._C, self._num_classes, self._layers, self._steps).to(ref)
        twin._initialize_alphas()
        for mine, theirs in zip(twin.arch_parameters(), self.arch_parameters(), strict=True):
            mine.data.copy_(theirs.data)
        return twin

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        return self.classifier(s1.mean(dim=(2, 3)))

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self._criterion(self(x), y)
