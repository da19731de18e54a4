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
  kink-smoothed estimate, not a cheaper copy of the exact product (DESIGN.md 2.1).
* ``"forward_difference"``: one-sided differences ``(g(w + R u) - g(w)) / R``, error O(R)
  instead of O(R^2); the gradient at w is shared by all products of one point, so each product
  costs one forward/backward instead of two.

Products can be accumulated over micro-batches (``chunks``), which bounds memory; that is exact
only for losses that are a mean over independent samples (:func:`split_batch`).

Every function leaves parameters and buffers (BatchNorm running statistics) bit-exactly as it
found them, also when the loss raises, and never writes ``.grad``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import randomness
from ._depthwise import fast_grouped_conv
from ._types import MODES, Batch, LossFn, Matvec, TensorList

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
    "resolve_loss",
    "second_order_products",
    "split_batch",
    "split_parameters",
    "take_batch",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(ValueError):
    """A loss evaluated by an estimator or product was nan or inf."""


# --------------------------------------------------------------------------- model protocol


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module behind ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers) or (
        not hasattr(model, "arch_parameters")
        and isinstance(getattr(model, "module", None), nn.Module)
    ):
        model = model.module
    return model


def split_parameters(model: nn.Module) -> tuple[TensorList, TensorList]:
    """Split a supernet into ``(alphas, weights)``.

    ``alphas = list(model.arch_parameters())`` (validated: non-empty, tensors, leaves that require
    grad, no duplicates); ``weights`` are the trainable ``model.parameters()`` that are not alphas,
    compared by identity, so alphas registered as module parameters (P-DARTS) are excluded, not
    rejected. DataParallel / DDP wrappers are unwrapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    net = unwrap_model(model)
    arch = getattr(net, "arch_parameters", None)
    if arch is None:
        raise TypeError(
            f"{type(net).__name__} has no arch_parameters(): a supernet must expose its "
            "architecture parameters (alphas) through a method arch_parameters()"
        )
    if not callable(arch):
        raise TypeError(
            f"{type(net).__name__}.arch_parameters must be a method, got {type(arch).__name__}"
        )
    alphas = list(arch())
    if not alphas:
        raise ValueError(f"{type(net).__name__}.arch_parameters() returned no tensors")
    seen: set[int] = set()
    for i, a in enumerate(alphas):
        if not isinstance(a, Tensor):
            raise TypeError(f"arch_parameters()[{i}] is a {type(a).__name__}, not a torch.Tensor")
        if not a.is_floating_point():
            raise TypeError(
                f"arch_parameters()[{i}] has dtype {a.dtype}; alphas must be floating point"
            )
        if not a.requires_grad:
            raise ValueError(
                f"arch_parameters()[{i}] does not require grad (call .requires_grad_())"
            )
        if not a.is_leaf:
            raise ValueError(
                f"arch_parameters()[{i}] is not a leaf tensor (it was computed from other "
                "tensors); "
                "register alphas as nn.Parameter"
            )
        if id(a) in seen:
            raise ValueError(f"arch_parameters()[{i}] appears more than once")
        seen.add(id(a))
    weights = [p for p in net.parameters() if p.requires_grad and id(p) not in seen]
    if not weights:
        raise ValueError(f"{type(net).__name__} has no trainable weights besides arch_parameters()")
    return alphas, weights


def _default_loss(model: nn.Module, inputs: Any, targets: Any) -> Tensor:
    loss_method = getattr(model, "_loss", None)
    if callable(loss_method):
        return loss_method(inputs, targets)
    out = model(inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return F.cross_entropy(out, targets)


def resolve_loss(loss_fn: LossFn | None = None) -> LossFn:
    """``loss_fn`` itself, or the default: ``model._loss(x, y)`` if the model has one, else the
    cross-entropy of ``model(x)`` (first element when the model returns a tuple)."""
    if loss_fn is None:
        return _default_loss
    if not callable(loss_fn):
        raise TypeError(
            "loss_fn must be callable (model, inputs, targets) -> Tensor, "
            f"got {type(loss_fn).__name__}"
        )
    return loss_fn


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def check_batch(
    batch: Any, name: str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Batch:
    """Validate an ``(inputs, targets)`` pair: its tensors live on ``device``, floating-point
    inputs have the model's floating ``dtype``, and tensor inputs and targets agree on the
    (non-zero) batch size. Raises TypeError / ValueError naming the problem."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"{name} must be an (inputs, targets) pair, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    if device is not None:
        for part, obj in zip(("inputs", "targets"), batch, strict=True):
            for t in _tensors(obj):
                if t.device != device:
                    raise ValueError(
                        f"{name} {part} are on {t.device} but the model's arch_parameters() are on "
                        f"{device}; move the batch to the model's device"
                    )
    inputs, targets = batch
    if dtype is not None and dtype.is_floating_point:
        for t in _tensors(inputs):
            if t.is_floating_point() and t.dtype != dtype:
                raise ValueError(
                    f"{name} inputs are {t.dtype} but the model's parameters are {dtype}; "
                    f"convert the batch (inputs.to({dtype})) or the model"
                )
    if isinstance(inputs, Tensor) and isinstance(targets, Tensor) and inputs.dim() > 0:
        n = inputs.shape[0]
        if n == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        # an empty targets tensor is a placeholder (losses that read only the inputs)
        if targets.dim() > 0 and targets.shape[0] not in (n, 0):
            raise ValueError(
                f"{name} has {n} inputs but {targets.shape[0]} targets (first dimensions differ)"
            )
    return batch[0], batch[1]


def _evaluate(loss_fn: LossFn, net: nn.Module, batch: Batch, what: str = "loss") -> Tensor:
    with randomness.evaluation(batch):  # common random numbers within one estimate
        loss = loss_fn(net, batch[0], batch[1])
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if not loss.requires_grad:
        raise ValueError(f"the {what} does not depend on any parameter that requires grad")
    return loss.reshape(())


def _check_finite(loss: Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteLossError(f"the {what} is {loss.item()}")


# --------------------------------------------------------------------------- tensor-list algebra


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


def _check_vector(vector: Any, params: Sequence[Tensor], name: str, against: str) -> TensorList:
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


def _grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> TensorList:
    """``torch.autograd.grad`` that tolerates unused inputs and outputs without a graph (zeros)."""
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


# --------------------------------------------------------------------------- state


def _bits_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.view(view), b.view(view))
    return torch.equal(a, b)


@contextlib.contextmanager
def preserve_state(
    model: nn.Module, *, parameters: bool = True, buffers: bool = True
) -> Iterator[Callable[[], None]]:
    """Snapshot parameters and buffers; restore them bit-exactly on exit, also on exception.

    Yields a ``restore()`` function that puts the snapshot back early (and may be called again).
    Tensors that are bit-identical to the snapshot are not written, so their autograd version
    counters do not change.
    """
    net = unwrap_model(model)
    saved: list[tuple[Tensor, Tensor]] = []
    if parameters:
        saved += [(p, p.detach().clone()) for p in net.parameters()]
    if buffers:
        saved += [(b, b.detach().clone()) for b in net.buffers()]

    def restore() -> None:
        with torch.no_grad():
            for t, s in saved:
                if not _bits_equal(t.detach(), s):
                    t.copy_(s)

    try:
        yield restore
    finally:
        restore()


# --------------------------------------------------------------------------- products


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


# --------------------------------------------------------------------------- batches


def batch_size(batch: Batch) -> int:
    """The number of samples of a batch: the shared first dimension of its tensors."""
    sizes = {t.shape[0] for t in _tensors(batch) if t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            "cannot split the batch into samples: its tensors must share their first "
            f"(sample) dimension, got sizes {sorted(sizes) or 'none'}"
        )
    return sizes.pop()


def _slice(obj: Any, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[start:stop] if obj.dim() > 0 else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice(item, start, stop) for item in obj)
    if isinstance(obj, dict):
        return {k: _slice(v, start, stop) for k, v in obj.items()}
    return obj


def take_batch(batch: Batch, samples: int) -> Batch:
    """The first ``samples`` samples of a batch (all of it when it is not larger)."""
    n = batch_size(batch)
    return batch if samples >= n else (_slice(batch[0], 0, samples), _slice(batch[1], 0, samples))


def split_batch(batch: Batch, chunks: int) -> list[tuple[Batch, float]]:
    """``chunks`` consecutive micro-batches of near-equal size (at most one per sample), each
    with its share ``n_k / n`` of the samples: for a loss that is the mean over samples,
    ``L = sum_k share_k * L_k``."""
    if chunks <= 1:
        return [(batch, 1.0)]
    n = batch_size(batch)
    chunks = min(chunks, n)
    parts, start = [], 0
    for k in range(chunks):
        stop = start + n // chunks + (1 if k < n % chunks else 0)
        part = (_slice(batch[0], start, stop), _slice(batch[1], start, stop))
        parts.append((part, (stop - start) / n))
        start = stop
    return parts


def _coupled_batchnorm(net: nn.Module) -> list[str]:
    """Names of BatchNorm modules in training mode (their batch statistics couple samples)."""
    return [
        name or type(net).__name__
        for name, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def _warn_if_coupled(net: nn.Module, what: str) -> None:
    """Warn that micro-batches change the loss when BatchNorm normalises with batch statistics."""
    coupled = _coupled_batchnorm(net)
    if coupled:
        warnings.warn(
            f"{what}: {len(coupled)} BatchNorm module(s) in training mode (e.g. {coupled[0]!r}) "
            "normalise each micro-batch with its own statistics, so the products are those of "
            "a ghost-batch-norm loss, not the full-batch products (a different estimator; "
            "exact only for losses that are a mean over independent samples, e.g. BatchNorm "
            "in eval mode or no BatchNorm)",
            UserWarning,
            stacklevel=3,
        )


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
        loss = _evaluate(loss_fn, net, batch, "training loss")
        _check_finite(loss, what)
        grads = [g.detach() for g in _grad(loss, targets)]
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
        loss = _evaluate(loss_fn, net, batch, what)
    _check_finite(loss, what)
    return loss, _grad(loss, params, create_graph=True)


def _graph_product(
    grads: Sequence[Tensor], targets: Sequence[Tensor], u: Sequence[Tensor], *, retain: bool
) -> TensorList:
    """``grad_targets <grads, u>`` (detached) on the graph of ``grads`` (from
    :func:`_gradient_graph`); ``retain`` keeps that graph for further products."""
    return [t.detach() for t in _grad(grads, targets, u, retain_graph=retain)]


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
    _check_mode(mode, r)
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


def _check_mode(mode: str, r: float) -> None:
    if mode not in MODES:
        raise ValueError(f"invalid mode: {mode!r}; valid modes: {', '.join(MODES)}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise ValueError(
            f"invalid r: {r!r} (the finite-difference scale must be a positive number)"
        )


def _prepare_wrt(
    model: nn.Module, batch: Batch, wrt: str, loss_fn: LossFn | None
) -> tuple[nn.Module, TensorList, LossFn]:
    """Checks shared by the Hessian products: ``(net, params of wrt, loss_fn)``."""
    if wrt not in ("weights", "alphas"):
        raise ValueError(f"invalid wrt: {wrt!r}; use 'weights' or 'alphas'")
    alphas, weights = split_parameters(model)
    check_batch(batch, "batch", alphas[0].device)
    return unwrap_model(model), weights if wrt == "weights" else alphas, resolve_loss(loss_fn)


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
    _check_mode(mode, r)
    net, params, loss_fn = _prepare_wrt(model, batch, wrt, loss_fn)
    u = _check_vector(vector, params, "vector", wrt)
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
    net, params, loss_fn = _prepare_wrt(model, batch, wrt, loss_fn)
    with preserve_state(net, parameters=False):
        graph = list(_gradient_graph(net, batch, loss_fn, params, "loss")[1])

        def hvp(vector: Sequence[Tensor]) -> TensorList:
            if not graph:
                raise RuntimeError("hessian_matvec: hvp() called after its with-block ended")
            u = _check_vector(vector, params, "vector", wrt)
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
    _check_mode(mode, r)
    alphas, weights = split_parameters(model)
    net = unwrap_model(model)
    u = _check_vector(vector, weights, "vector", "weights")
    check_batch(batch, "batch", alphas[0].device)
    loss_fn = resolve_loss(loss_fn)
    with preserve_state(net, parameters=(mode != "exact")):
        return second_order_products(net, batch, loss_fn, alphas, weights, mode=mode, r=r).mixed(u)
