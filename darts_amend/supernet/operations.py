"""Building blocks shared by the search and the evaluation networks.

One set of operations, configured by ``(C, stride, affine)``: the search network builds them with
``affine=False`` (as DARTS does, so that the only per-op scale is the architecture weight) and the
evaluation networks with ``affine=True``.

Every stride-2 operation maps an ``H x W`` map to ``ceil(H/2) x ceil(W/2)``, also for odd sizes,
so any image size >= 8 works (upstream DARTS needs even sizes in ``FactorizedReduce``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PRIMITIVES",
    "OPS",
    "PARAMETER_FREE",
    "make_op",
    "ReLUConvBN",
    "DilConv",
    "SepConv",
    "Conv7x1x1x7",
    "Identity",
    "Zero",
    "Noise",
    "FactorizedReduce",
    "AuxiliaryHead",
    "make_head",
    "make_stem",
    "drop_path",
    "MixedOp",
    "channel_shuffle",
]

#: The eight DARTS candidate operations, in the order of the DARTS paper (and of its alphas).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Drop whole samples of ``x`` with probability ``drop_prob``; rescale the rest by 1/keep.

    Out of place, so it is safe under double backward.
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k x k) -> BatchNorm."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BatchNorm."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in,
                C_in,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=C_in,
                bias=False,
            ),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked separable convolutions (the first carries the stride), as in DARTS."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )


class Conv7x1x1x7(nn.Sequential):
    """ReLU -> 1x7 conv -> 7x1 conv -> BatchNorm (used by NASNet / AmoebaNet genotypes)."""

    def __init__(self, C: int, stride: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class Identity(nn.Module):
    """skip_connect at stride 1. Its own class so drop-path can recognise and spare it."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation: a zero map of the output shape (keeps the graph connected)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x * 0.0
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class Noise(nn.Module):
    """The ``noise`` operation of RobustDARTS' space S4: standard Gaussian noise of the output's
    shape, independent of the input values (so no gradient reaches the input) and without
    parameters. Stride-2 edges give the ``ceil(H/2) x ceil(W/2)`` shape of the other ops.

    Drawn from torch's default generator of the input's device, in its dtype: reproducible under
    ``torch.manual_seed``, and a fresh draw on every forward (as upstream). The estimators
    replay one draw per estimate by default (``common_random_numbers``), so finite differences
    compare passes that see the same noise.
    """

    def __init__(self, stride: int, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.stride, self.mean, self.std = stride, float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn(x.shape, device=x.device, dtype=x.dtype) * self.std + self.mean


class FactorizedReduce(nn.Module):
    """Halve the resolution with two stride-2 1x1 convs on offset grids, concatenated.

    The second path sees the map shifted by one pixel; the shifted map is zero-padded on the
    bottom/right so both paths give ``ceil(H/2)`` rows also for odd ``H``.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(
                f"FactorizedReduce needs an even number of output channels, got {C_out}"
            )
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


OpFactory = Callable[[int, int, bool], nn.Module]

#: name -> factory(C, stride, affine). Every op keeps the channel count C.
OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),  # RobustDARTS S4
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
    ),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda C, stride, affine: Conv7x1x1x7(C, stride, affine=affine),
    # NAS-Bench-201's convolutions: ReLU -> conv -> BN
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine),
}

#: Operations without parameters (by name; ``skip_connect`` counts as one although its
#: stride-2 form, a factorized reduce, has a 1x1 convolution): the ops a collapsed search
#: piles up (see ``parameter_free_share`` in :mod:`darts_amend.supernet.search`).
PARAMETER_FREE: frozenset[str] = frozenset(
    {"none", "noise", "skip_connect", "max_pool_3x3", "avg_pool_3x3"}
)


def make_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build operation ``name``; ValueError naming the known operations for an unknown name."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPS)}") from None
    return factory(C, stride, affine)


def make_stem(kind: str, in_channels: int, C_out: int) -> tuple[nn.Module, nn.Module | None]:
    """The network stem: ``"cifar"`` (one 3x3 conv, stride 1) or ``"imagenet"`` (two stages,
    stride 8 in all, as DARTS' ImageNet network). Returns ``(stem0, stem1)``; ``stem1`` is None
    for the one-stage CIFAR stem."""
    if kind == "cifar":
        return nn.Sequential(
            nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out)
        ), None
    if kind == "imagenet":
        if C_out % 2:
            raise ValueError(f"the ImageNet stem needs an even channel count, got {C_out}")
        stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C_out // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_out // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_out // 2, C_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_out),
        )
        stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_out, C_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_out),
        )
        return stem0, stem1
    raise ValueError(f"unknown stem {kind!r}; expected 'cifar' or 'imagenet'")


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier tower placed after the cell at 2/3 depth.

    ``pool_stride=3`` is DARTS' CIFAR head (8x8 input), ``pool_stride=2`` its ImageNet head (7x7
    input): ReLU, 5x5 average pool, 1x1 conv to 128, 2x2 conv to 768, linear. For feature maps
    of other sizes the pooled map is brought to 2x2 adaptively (a no-op at the standard sizes),
    and maps smaller than 5x5 are pooled adaptively straight away, so any image size works.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int = 3) -> None:
        super().__init__()
        self.pool_stride = pool_stride
        self.relu = nn.ReLU(inplace=False)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=self.pool_stride, padding=0, count_include_pad=False)
        if tuple(x.shape[-2:]) != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        return self.classifier(x.flatten(1))


def make_head(
    C_prev: int, C_aux: int, num_classes: int, *, auxiliary: bool, stem: str, dropout: float
) -> tuple[AuxiliaryHead | None, nn.Module, nn.Module, nn.Linear]:
    """The network head: ``(auxiliary_head, global_pooling, dropout, classifier)``, built in this
    order (so parameter initialisation draws the same random numbers in every network).
    ``auxiliary_head`` (on ``C_aux`` channels) is None without ``auxiliary``; its pooling
    stride follows the stem (3 for CIFAR, 2 for ImageNet); ``dropout`` is an identity at 0."""
    auxiliary_head = (
        AuxiliaryHead(C_aux, num_classes, pool_stride=3 if stem == "cifar" else 2)
        if auxiliary
        else None
    )
    pooling = nn.AdaptiveAvgPool2d(1)
    drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    return auxiliary_head, pooling, drop, nn.Linear(C_prev, num_classes)


# --------------------------------------------------------------------------- mixed edges


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet), as PC-DARTS does after a partial edge."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """sum_o w_o * o(x) over the candidate operations, on 1/K of the channels (PC-DARTS)."""

    def __init__(
        self,
        C: int,
        stride: int,
        op_names: Sequence[str],
        partial_channels: int = 1,
        pool_bn: bool = True,
    ) -> None:
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must be >= 1 and divide C={C}")
        self.k = partial_channels
        self.stride = stride
        c_op = C // partial_channels
        self.ops = nn.ModuleList()
        for name in op_names:
            op = make_op(name, c_op, stride, affine=False)
            if pool_bn and "pool" in name:  # as DARTS: a non-affine BN puts pooled maps on
                # the conv ops' scale (NAS-Bench-201 pools without it: pool_bn=False)
                op = nn.Sequential(op, nn.BatchNorm2d(c_op, affine=False))
            self.ops.append(op)
        # drop-path spares identities (as in evaluation) and pointless zero maps
        self._droppable = [not isinstance(op, (Identity, Zero)) for op in self.ops]

    def forward(self, x: Tensor, weights: Tensor, drop_prob: float = 0.0) -> Tensor:
        if self.k > 1:
            split = x.shape[1] // self.k
            x, rest = x[:, :split], x[:, split:]
        out = None
        for w, op, droppable in zip(weights, self.ops, self._droppable, strict=True):
            y = op(x)
            if droppable and drop_prob > 0.0:
                y = drop_path(y, drop_prob)
            out = w * y if out is None else out + w * y
        assert out is not None
        if self.k > 1:
            if self.stride > 1:
                rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
            out = channel_shuffle(torch.cat([out, rest], dim=1), self.k)
        return out
