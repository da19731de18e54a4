"""Hessian-vector and mixed second-order products on lists of tensors (never a dense Hessian).

Notation (docs/math.md): for a loss L(w, alpha) on one batch,

    H u = grad_w <grad_w L, u>          (u aligned with the weights)
    B u = grad_alpha <grad_w L, u>      (u aligned with the weights, result aligned with alphas)

Three modes:

* ``"exact"``: reverse-over-reverse (double backward). In ReLU networks this is the Hessian
  almost everywhere (each ReLU is treated as locally linear). Grouped (depthwise) convolutions
  take a cheaper double-backward path (:mod:`darts_amend._depthwise`).
* ``"finite_difference"``: central differences of the gradient at ``w +- R u`` with
  ``R = r / ||u||`` (DARTS uses r = 0.01). Memory-light; on ReLU networks it is a different,
  kink-smoothed estimate, not a cheaper copy of the exact product (docs/math.md).
* ``"forward_difference"``: one-sided differences ``(g(w + R u) - g(w)) / R``, error O(R)
  instead of O(R^2); the gradient at w is shared by all products of one point, so each product
  costs one forward/backward instead of two.

Products can be accumulated over micro-batches (``chunks``), which bounds memory; that is exact
only for losses that are a mean over independent samples (:func:`split_batch`).

Every function leaves parameters and buffers (BatchNorm running statistics) bit-exactly as it
found them, also when the loss raises, and never writes ``.grad``.

The supernet protocol, tensor-list algebra and batch slicing these products use live in
:mod:`darts_amend.model`, :mod:`darts_amend.tensorlist` and :mod:`darts_amend.batches`; their
public names are re-exported here, where they were first defined.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._depthwise import fast_grouped_conv
from ._types import MODES, Batch, LossFn, Matvec, TensorList
from .batches import batch_size, split_batch, take_batch, warn_if_coupled
from .model import (
    NonFiniteLossError,
    Prepared,
    check_batch,
    check_finite,
    evaluate_loss,
    prepare,
    preserve_state,
    resolve_loss,
    split_parameters,
    unwrap_model,
)
from .options import ProductOptions, check_mode
from .tensorlist import check_aligned, list_cosine, list_dot, list_grad, list_norm

__all__ = [
    "MODES",
    "NonFiniteLossError",
    "Products",
    "batch_size",
    "check_batch",
    "hessian_matvec",
    "hessian_vector_product",
    "list_cosine",
    "list_dot",
    "list_norm",
    "mixed_vector_product",
    "preserve_state",
    "training_products",
    "resolve_loss",
    "second_order_products",
    "split_batch",
    "split_parameters",
    "take_batch",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


@dataclass
class Products:
    """Second-order products of one training loss at the current point.

    ``hvp(u) = H u`` (u, result aligned with the weights); ``mixed(u) = B u`` (u aligned with the
    weights, result aligned with the alphas); ``loss`` is the detached loss at the current point
    once a product has evaluated it there (``None`` in central-difference mode, which never
    does).
    """

    hvp: Matvec
    mixed: Callable[..., TensorList]
    loss: Tensor | None = None


# --------------------------------------------------------------------------- products


def _fd_step(direction: Sequence[Tensor], r: float) -> float | None:
    norm = float(list_norm(direction))
    if not math.isfinite(norm):
        raise ValueError(f"finite-difference direction has non-finite norm {norm}")
    return None if norm == 0.0 else r / norm


def _accumulated_grads(
    net: nn.Module,
    parts: Sequence[tuple[Batch, float]],
    loss_fn: LossFn,
    targets: Sequence[Tensor],
    what: str,
) -> tuple[Tensor, TensorList]:
    """``(L, grad_targets L)`` detached, with ``L = sum_k share_k L_k`` over the micro-batches
    (one forward/backward per micro-batch, so only one graph is alive at a time)."""
    total: Tensor | None = None
    acc: TensorList | None = None
    for batch, share in parts:
        loss = evaluate_loss(loss_fn, net, batch, "training loss")
        check_finite(loss, what)
        grads = [g.detach() for g in list_grad(loss, targets)]
        if share != 1.0:
            grads = [share * g for g in grads]
            loss = share * loss
        total = loss.detach() if total is None else total + loss.detach()
        acc = grads if acc is None else [a + g for a, g in zip(acc, grads, strict=True)]
    assert total is not None and acc is not None
    return total, acc


def _difference(
    net: nn.Module,
    parts: Sequence[tuple[Batch, float]],
    loss_fn: LossFn,
    move: Sequence[Tensor],
    direction: Sequence[Tensor],
    targets: Sequence[Tensor],
    r: float,
    base: TensorList | None = None,
) -> TensorList:
    """Finite difference of ``grad_targets L`` along ``direction`` in ``move``, R = r / ||d||:
    central, (g(move + R d) - g(move - R d)) / 2R, or, given ``base`` = g(move), forward,
    (g(move + R d) - base) / R."""
    step = _fd_step(direction, r)
    if step is None:
        return [torch.zeros_like(t) for t in targets]
    saved = [p.detach().clone() for p in move]

    def grads_at(scale: float) -> TensorList:
        with torch.no_grad():
            for p, b, d in zip(move, saved, direction, strict=True):
                p.copy_(b).add_(d, alpha=scale)
        what = "training loss (finite difference)"
        return _accumulated_grads(net, parts, loss_fn, targets, what)[1]

    try:
        plus = grads_at(step)
        if base is not None:
            return [(a - b) / step for a, b in zip(plus, base, strict=True)]
        minus = grads_at(-step)
    finally:
        with torch.no_grad():
            for p, b in zip(move, saved, strict=True):
                p.copy_(b)
    return [(a - b) / (2.0 * step) for a, b in zip(plus, minus, strict=True)]


def _gradient_graph(
    net: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    params: Sequence[Tensor],
    what: str,
    fast_depthwise: bool = True,
) -> tuple[Tensor, TensorList]:
    """One forward and one ``create_graph`` backward: ``(loss, grad_params L)``, the gradient
    still carrying its graph, so that each product ``grad_x <grad_params L, u>`` is one double
    backward (:func:`_graph_product`). The forward runs under
    :func:`darts_amend._depthwise.fast_grouped_conv` unless ``fast_depthwise`` is False.
    Raises :class:`NonFiniteLossError` for a nan/inf loss."""
    with fast_grouped_conv(fast_depthwise):
        loss = evaluate_loss(loss_fn, net, batch, what)
    check_finite(loss, what)
    return loss, list_grad(loss, params, create_graph=True)


def _graph_product(
    grads: Sequence[Tensor], targets: Sequence[Tensor], u: Sequence[Tensor], *, retain: bool
) -> TensorList:
    """``grad_targets <grads, u>`` (detached) on the graph of ``grads`` (from
    :func:`_gradient_graph`); ``retain`` keeps that graph for further products."""
    return [t.detach() for t in list_grad(grads, targets, u, retain_graph=retain)]


def second_order_products(
    net: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    alphas: Sequence[Tensor],
    weights: Sequence[Tensor],
    *,
    mode: str = "exact",
    r: float = 0.01,
    chunks: int = 1,
    fast_depthwise: bool = True,
    base: tuple[Tensor, TensorList, TensorList] | None = None,
) -> Products:
    """H u and B u of ``loss_fn`` on ``batch`` at the current point, as closures.

    ``mode="exact"``, ``chunks=1``: one forward and one ``create_graph`` backward now; every
    ``hvp`` and the ``mixed`` product then reuse that graph (one double backward each). Call
    ``mixed(u)`` last, or pass ``retain=True`` to keep the graph.

    ``chunks=K``: every product is accumulated over K micro-batches, ``sum_k (n_k/n) P_k u``,
    one graph alive at a time (peak memory ~1/K of the graph), the same numbers as one batch up
    to round-off when the loss is the mean of independent per-sample losses (not with BatchNorm
    in training mode: the caller warns). In exact mode each product then rebuilds the graphs
    (one extra forward + ``create_graph`` backward over the batch per product).

    ``"finite_difference"``: two forward/backward passes per product (central differences).
    ``"forward_difference"``: one per product, plus one shared pass at the current point that
    gives the base gradients of both products (pass it as ``base = (loss, grad_w, grad_alpha)``
    when the caller has it). The caller restores parameters and buffers (``preserve_state``).
    """
    check_mode(mode, r)
    parts = split_batch(batch, chunks)
    if mode in ("finite_difference", "forward_difference"):
        products = Products(hvp=lambda u: [], mixed=lambda u, retain=False: [])
        cache: list[tuple[TensorList, TensorList]] = []
        if base is not None:
            products.loss = base[0].detach()
            cache.append(([g.detach() for g in base[1]], [g.detach() for g in base[2]]))

        def base_grads() -> tuple[TensorList, TensorList] | tuple[None, None]:
            if mode == "finite_difference":
                return None, None
            if not cache:  # grad_w and grad_alpha at w from one pass
                loss, grads = _accumulated_grads(
                    net, parts, loss_fn, list(weights) + list(alphas), "training loss"
                )
                products.loss = loss
                cache.append((grads[: len(weights)], grads[len(weights) :]))
            return cache[0]

        def fd_hvp(u: TensorList) -> TensorList:
            return _difference(net, parts, loss_fn, weights, u, weights, r, base_grads()[0])

        def fd_mixed(u: TensorList, retain: bool = False) -> TensorList:
            return _difference(net, parts, loss_fn, weights, u, alphas, r, base_grads()[1])

        products.hvp, products.mixed = fd_hvp, fd_mixed
        return products
    if len(parts) == 1:
        # g_w = grad_w L with its graph: H u = grad_w <g_w, u>, B u = grad_alpha <g_w, u>
        loss, g_w = _gradient_graph(net, batch, loss_fn, weights, "training loss", fast_depthwise)

        def hvp(u: TensorList) -> TensorList:
            return _graph_product(g_w, weights, u, retain=True)

        def mixed(u: TensorList, retain: bool = False) -> TensorList:
            return _graph_product(g_w, alphas, u, retain=retain)

        return Products(hvp=hvp, mixed=mixed, loss=loss.detach())

    products = Products(hvp=lambda u: [], mixed=lambda u, retain=False: [])

    def chunked(u: TensorList, targets: Sequence[Tensor]) -> TensorList:
        acc: TensorList | None = None
        total: Tensor | None = None
        for part, share in parts:
            loss, g_w = _gradient_graph(
                net, part, loss_fn, weights, "training loss", fast_depthwise
            )
            p = [share * t for t in _graph_product(g_w, targets, u, retain=False)]
            del g_w  # free this micro-batch's graph before the next one is built
            acc = p if acc is None else [a + t for a, t in zip(acc, p, strict=True)]
            total = share * loss.detach() if total is None else total + share * loss.detach()
        products.loss = total
        assert acc is not None
        return acc

    products.hvp = lambda u: chunked(u, weights)
    products.mixed = lambda u, retain=False: chunked(u, alphas)
    return products


def training_products(
    prepared: Prepared,
    batch: Batch,
    options: ProductOptions | None = None,
    base: tuple[Tensor, TensorList, TensorList] | None = None,
) -> Products:
    """:func:`second_order_products` of a prepared supernet as ``options`` say: on the first
    ``options.second_order_batch`` samples of ``batch`` (then ``base``, taken on the whole
    batch, is not used), in ``options.chunks`` micro-batches (a warning when train-mode
    BatchNorm couples them); ``options=None`` is ``ProductOptions()``."""
    if options is None:
        options = ProductOptions()
    if options.second_order_batch is not None:
        batch = take_batch(batch, options.second_order_batch)
        base = None  # the base gradients were taken on the whole batch
    if options.chunks > 1:
        warn_if_coupled(prepared.net, f"chunks={options.chunks}")
    return second_order_products(
        prepared.net,
        batch,
        prepared.loss_fn,
        prepared.alphas,
        prepared.weights,
        mode=options.mode,
        r=options.r,
        chunks=options.chunks,
        fast_depthwise=options.fast_depthwise,
        base=base,
    )


def _prepare_wrt(
    model: nn.Module, batch: Batch, wrt: str, loss_fn: LossFn | None
) -> tuple[Prepared, TensorList]:
    """Checks shared by the Hessian products: the prepared call and the params of ``wrt``."""
    if wrt not in ("weights", "alphas"):
        raise ValueError(f"invalid wrt: {wrt!r}; use 'weights' or 'alphas'")
    prepared = prepare(model, loss_fn, batch=batch)
    return prepared, prepared.weights if wrt == "weights" else prepared.alphas


def hessian_vector_product(
    model: nn.Module,
    batch: Batch,
    vector: Sequence[Tensor],
    *,
    wrt: str = "weights",
    loss_fn: LossFn | None = None,
    mode: str = "exact",
    r: float = 0.01,
) -> TensorList:
    """Hessian of ``loss_fn(model, *batch)`` w.r.t. ``wrt`` ("weights" or "alphas") times
    ``vector`` (aligned with those parameters). Returns detached tensors aligned likewise."""
    check_mode(mode, r)
    (net, _, _, loss_fn), params = _prepare_wrt(model, batch, wrt, loss_fn)
    u = check_aligned(vector, params, "vector", wrt)
    if mode != "exact":
        parts = [(batch, 1.0)]
        with preserve_state(net, parameters=True):
            base = None
            if mode == "forward_difference":
                base = _accumulated_grads(net, parts, loss_fn, params, "loss")[1]
            return _difference(net, parts, loss_fn, params, u, params, r, base)
    with preserve_state(net, parameters=False):
        _, grads = _gradient_graph(net, batch, loss_fn, params, "loss")
        return _graph_product(grads, params, u, retain=False)


@contextlib.contextmanager
def hessian_matvec(
    model: nn.Module,
    batch: Batch,
    *,
    wrt: str = "weights",
    loss_fn: LossFn | None = None,
) -> Iterator[Matvec]:
    """The exact Hessian of ``loss_fn(model, *batch)`` w.r.t. ``wrt`` ("weights" or "alphas") as
    a closure ``u -> H u`` over ONE shared graph, for many products at one point (power
    iteration, Lanczos, a dense Hessian column by column)::

        with hessian_matvec(model, batch, wrt="alphas") as hvp:
            hu, hv = hvp(u), hvp(v)     # u, v: tensor lists aligned with the alphas

    Entering runs one forward and one ``create_graph`` backward (the model, batch and
    ``loss_fn`` are checked first, like :func:`hessian_vector_product`; a nan/inf loss raises
    :class:`NonFiniteLossError`); each ``hvp(u)`` is one double backward on that graph, so every
    product sees the same function (same dropout masks, same batch statistics). Each ``u`` is
    checked like ``vector`` there; results are detached and aligned with the parameters.
    Parameters are never written and ``.grad`` is untouched; buffers (BatchNorm running
    statistics) are restored bit-exactly on exit, also on error. The graph is freed on exit;
    calling ``hvp`` after that raises ``RuntimeError``.
    """
    (net, _, _, loss_fn), params = _prepare_wrt(model, batch, wrt, loss_fn)
    with preserve_state(net, parameters=False):
        graph = list(_gradient_graph(net, batch, loss_fn, params, "loss")[1])

        def hvp(vector: Sequence[Tensor]) -> TensorList:
            if not graph:
                raise RuntimeError("hessian_matvec: hvp() called after its with-block ended")
            u = check_aligned(vector, params, "vector", wrt)
            return _graph_product(graph, params, u, retain=True)

        try:
            yield hvp
        finally:
            graph.clear()  # drop the double-backward graph before the buffers are restored


def mixed_vector_product(
    model: nn.Module,
    batch: Batch,
    vector: Sequence[Tensor],
    *,
    loss_fn: LossFn | None = None,
    mode: str = "exact",
    r: float = 0.01,
) -> TensorList:
    """B u = grad_alpha <grad_w L, u> for ``L = loss_fn(model, *batch)``; ``vector`` aligned with
    the weights, the result (detached) with the alphas."""
    check_mode(mode, r)
    net, alphas, weights, loss_fn = prepare(model, loss_fn, batch=batch)
    u = check_aligned(vector, weights, "vector", "weights")
    with preserve_state(net, parameters=(mode != "exact")):
        return second_order_products(net, batch, loss_fn, alphas, weights, mode=mode, r=r).mixed(u)
