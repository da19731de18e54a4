"""Algebra on lists of tensors seen as one vector (aligned with a list of parameters).

    <xs, ys> = sum_i sum(xs_i * ys_i),   ||xs|| = sqrt(<xs, xs>),   cos = <xs, ys> / (||xs|| ||ys||)

Plus :func:`list_grad` (``torch.autograd.grad`` that tolerates unused inputs),
:func:`flatten` / :func:`unflatten` and :func:`bits_equal`. No model, no batch: pure tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._types import TensorList

__all__ = [
    "bits_equal",
    "check_aligned",
    "flatten",
    "list_cosine",
    "list_dot",
    "list_grad",
    "list_norm",
    "unflatten",
]


def list_dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """<xs, ys> summed over a list of tensors (a 0-d tensor)."""
    if len(xs) != len(ys):
        raise ValueError(f"tensor lists differ in length: {len(xs)} vs {len(ys)}")
    if not xs:
        return torch.zeros(())
    return sum(
        ((x * y).sum() for x, y in zip(xs, ys, strict=True)),
        torch.zeros((), dtype=xs[0].dtype, device=xs[0].device),
    )


def list_norm(xs: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of a list of tensors seen as one vector (a 0-d tensor)."""
    return list_dot(xs, xs).sqrt()


def list_cosine(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> float:
    """Cosine of the angle between two tensor lists; ``nan`` when either is zero."""
    nx, ny = float(list_norm(xs)), float(list_norm(ys))
    if nx == 0.0 or ny == 0.0 or not math.isfinite(nx * ny):
        return math.nan
    return float(list_dot(xs, ys)) / (nx * ny)


def list_grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> TensorList:
    """``torch.autograd.grad`` that tolerates unused inputs and outputs without a graph (zeros).

    With ``grad_outputs = u`` this is the vector-Jacobian product ``grad_inputs <outputs, u>``,
    the building block of every Hessian-vector product (:mod:`darts_amend.hvp`)."""
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    gos: list[Tensor | None] = [None] * len(outs) if grad_outputs is None else list(grad_outputs)
    live = [(o, g) for o, g in zip(outs, gos, strict=True) if o.requires_grad]
    if not live:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [o for o, _ in live],
        list(inputs),
        grad_outputs=None if grad_outputs is None else [g for _, g in live],
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]


def check_aligned(vector: Any, params: Sequence[Tensor], name: str, against: str) -> TensorList:
    """``vector`` as a detached tensor list aligned with ``params`` (same length, shapes and
    devices; cast to the parameters' dtypes). TypeError / ValueError naming the problem."""
    if isinstance(vector, Tensor) or not isinstance(vector, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors aligned with the {against}")
    if len(vector) != len(params):
        raise ValueError(f"{name} has {len(vector)} tensors but there are {len(params)} {against}")
    out = []
    for i, (u, p) in enumerate(zip(vector, params, strict=True)):
        if not isinstance(u, Tensor):
            raise TypeError(f"{name}[{i}] is a {type(u).__name__}, not a Tensor")
        if u.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(u.shape)}, the {against}[{i}] {tuple(p.shape)}"
            )
        if u.device != p.device:
            raise ValueError(f"{name}[{i}] is on {u.device}, the {against}[{i}] on {p.device}")
        out.append(u.detach().to(p.dtype))
    return out


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors concatenated into one vector (``reshape(-1)`` each)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Inverse of :func:`flatten`: views of ``flat`` shaped like ``like``."""
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def bits_equal(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype and bits (floating point compared as integers: -0.0 != 0.0, and a nan
    equals the same nan)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.view(view), b.view(view))
    return torch.equal(a, b)
