"""A cheaper double backward through grouped (depthwise) convolutions, for the exact products.

Why: PyTorch's double backward of a convolution with ``groups > 1``
(``aten::_convolution_double_backward``) runs one small convolution per group for the weight
term and another per group for the input term. DARTS' separable and dilated convolutions are
depthwise (``groups = C``), so an H v product on the DARTS supernet ran ~12 convolution calls per
convolution (measured: 10,969 calls for 885 convolutions, C=8, 5 cells), and the two
double-backward passes dominated an exact amended step.

How: inside :func:`fast_grouped_conv` (a ``TorchFunctionMode``, thread-local, active only while
the training loss and its gradient graph are built), ``conv2d`` with ``groups > 1`` is computed
by :class:`_GroupedConv`, whose backward is written with ordinary *forward* convolutions
(``conv_transpose2d`` for the input gradient, a native weight gradient whose own backward is
``conv2d`` / ``conv_transpose2d``), all of them natively grouped. The double backward then costs
a handful of grouped convolutions per layer instead of a loop over groups. The values are the
same function (tested against the native path to round-off in float64); third derivatives are
not supported through this path (nothing here needs them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["fast_grouped_conv"]

_aten = torch.ops.aten


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _input_grad(gy: Tensor, w: Tensor, x_shape: torch.Size, conf: tuple) -> Tensor:
    """d conv2d(x, w) / dx applied to ``gy``: a transposed convolution (differentiable)."""
    stride, padding, dilation, groups = conf
    # output_padding: the rows a strided convolution dropped, so the result has x's size
    reach = [
        (gy.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1
        for i in range(2)
    ]
    out_pad = [x_shape[2 + i] - reach[i] for i in range(2)]
    return F.conv_transpose2d(gy, w, None, stride, padding, out_pad, groups, dilation)


class _WeightGrad(torch.autograd.Function):
    """``gW = d <conv2d(x, w), gy> / dw`` (native kernel); its backward by forward convolutions:
    d/dgy = conv2d(x, G), d/dx = conv_transpose2d(gy, G)."""

    @staticmethod
    def forward(ctx, x: Tensor, gy: Tensor, w: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, gy)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        return _aten.convolution_backward(
            gy,
            x,
            w,
            None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [False, True, False],
        )[1]

    @staticmethod
    def backward(ctx, G: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, gy = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        gx = _input_grad(gy, G, x.shape, ctx.conf) if ctx.needs_input_grad[0] else None
        ggy = (
            F.conv2d(x, G, None, stride, padding, dilation, groups)
            if ctx.needs_input_grad[1]
            else None
        )
        return gx, ggy, None, None


class _GroupedConv(torch.autograd.Function):
    """``conv2d(x, w, groups=g)`` without bias, with a backward made of differentiable,
    natively grouped convolutions (so its double backward has no per-group loop)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, conf: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        gx = _input_grad(gy, w, x.shape, ctx.conf) if ctx.needs_input_grad[0] else None
        gw = _WeightGrad.apply(x, gy, w.detach(), ctx.conf) if ctx.needs_input_grad[1] else None
        return gx, gw, None


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)


class _GroupedConvMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_grad_enabled():
            bound = dict(zip(_CONV_ARGS, _CONV_DEFAULTS, strict=True))
            bound.update(zip(_CONV_ARGS, args, strict=False))
            bound.update(kwargs)
            x, w, bias = bound["input"], bound["weight"], bound["bias"]
            groups, padding = bound["groups"], bound["padding"]
            if (
                isinstance(groups, int)
                and groups > 1
                and not isinstance(padding, str)
                and isinstance(x, Tensor)
                and isinstance(w, Tensor)
                and x.dim() == 4
                and w.dim() == 4
                and (x.requires_grad or w.requires_grad)
            ):
                conf = (
                    _pair(bound["stride"]),
                    _pair(padding),
                    _pair(bound["dilation"]),
                    groups,
                )
                out = _GroupedConv.apply(x, w, conf)
                return out if bias is None else out + bias.view(1, -1, 1, 1)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_grouped_conv(enabled: bool = True) -> Iterator[None]:
    """Route ``conv2d`` with ``groups > 1`` through :class:`_GroupedConv` while active."""
    if not enabled:
        yield
        return
    with _GroupedConvMode():
        yield
