"""Hypergradient estimators for the bilevel problem of DARTS (pure functions, one signature).

    min_alpha L_val(w*(alpha), alpha),   w*(alpha) = argmin_w L_train(w, alpha)

With v = grad_w L_val, H = grad^2_ww L_train, B = grad^2_{alpha w} L_train (B u = grad_alpha
<grad_w L_train, u>), the implicit-function gradient is g = g1 + g2 with g1 = grad_alpha L_val
and g2 = -B H^-1 v. The estimators differ in how they treat g2:

    first_order        g = g1
    unrolled           g = grad_alpha L_val(w') - xi * B(w) v(w'),  w' = one SGD step from w
    amended            g = g1 - eta * B H v                       (Amended-DARTS, eq. 7)
    implicit_cg        g = g1 - B x,  (H + damping I) x = v by conjugate gradient
    implicit_neumann   g = g1 - B x,  x = gamma * sum_{j<K} (I - gamma H)^j v

Each is ``f(model, train_batch, valid_batch, *, loss_fn=None, **options) -> Hypergradient``.
They never write ``.grad`` and leave weights and buffers (BatchNorm running statistics) exactly
as they found them, also on exception. Options are validated before anything is computed.
Every estimator also takes ``common_random_numbers`` (None = detect, True, False): all loss
evaluations of one estimate replay the same random numbers when the forward draws some
(:mod:`darts_amend.randomness`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._types import Batch, LossFn, Matvec, TensorList
from .hvp import training_products
from .linear_solve import make_ridge_matvec, solve_cg, solve_neumann
from .model import Prepared, check_finite, evaluate_loss, prepare, preserve_state
from .options import (
    ProductOptions,
    check_option,
    estimator_options,
    validate_options,
)
from .randomness import with_common_random_numbers
from .tensorlist import list_cosine, list_grad, list_norm

__all__ = [
    "ESTIMATORS",
    "Hypergradient",
    "amended",
    "conjugate_gradient",
    "estimator_options",
    "first_order",
    "get_estimator",
    "implicit_cg",
    "implicit_neumann",
    "neumann_series",
    "unrolled",
    "validate_options",
    "write_grads_",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hypergradient:
    """The result of an estimator.

    ``grads``: the hypergradient, aligned with ``model.arch_parameters()``;
    ``terms``: its named parts, always ``"g1"`` (grad_alpha L_val), and ``"g2"`` (the second /
    amending term, ``grads = g1 + g2``) for every estimator but ``first_order``;
    ``val_loss``: the detached validation loss at which ``g1`` was taken;
    ``train_loss``: the detached training loss where the estimator evaluated it (else ``None``);
    ``info``: what the estimator's solver did (``implicit_cg``: ``"cg_iterations"``, the CG
    updates made, and ``"cg_stop"``, ``"tol"`` / ``"iterations"`` / ``"curvature"``; see
    :class:`darts_amend.linear_solve.CGInfo`); empty for the other estimators.
    """

    grads: tuple[Tensor, ...]
    terms: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)
    val_loss: Tensor = field(default_factory=lambda: torch.tensor(math.nan))
    train_loss: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def is_finite(self) -> bool:
        """True when the loss and every hypergradient entry are finite."""
        return bool(torch.isfinite(self.val_loss).all()) and all(
            bool(torch.isfinite(g).all()) for g in self.grads
        )

    def norm(self, term: str | None = None) -> float:
        """Euclidean norm of ``grads`` (or of one term)."""
        return float(list_norm(self.grads if term is None else self.terms[term]))

    def cosine(self, a: str = "g1", b: str = "g2") -> float:
        """Cosine between two terms (``nan`` if one is missing or zero)."""
        if a not in self.terms or b not in self.terms:
            return math.nan
        return list_cosine(self.terms[a], self.terms[b])


def write_grads_(
    alphas: Sequence[Tensor], grads: Sequence[Tensor], *, accumulate: bool = False
) -> None:
    """Write a hypergradient into ``alpha.grad`` (replacing it, or adding when ``accumulate``)."""
    if len(alphas) != len(grads):
        raise ValueError(f"{len(grads)} gradients for {len(alphas)} alphas")
    for a, g in zip(alphas, grads, strict=True):
        g = g.detach().to(dtype=a.dtype, device=a.device)
        if accumulate and a.grad is not None:
            a.grad.add_(g)
        else:
            a.grad = g.clone()


# --------------------------------------------------------------------------- shared pieces


def _val_pass(
    prepared: Prepared, batch: Batch, *, need_v: bool = True
) -> tuple[Tensor, tuple[Tensor, ...], TensorList]:
    """One forward/backward on the validation batch: (L_val, g1 = grad_alpha, v = grad_w)."""
    net, alphas, weights, loss_fn = prepared
    loss = evaluate_loss(loss_fn, net, batch, "validation loss")
    check_finite(loss, "validation loss")
    grads = list_grad(loss, alphas + weights if need_v else alphas)
    g1 = tuple(g.detach() for g in grads[: len(alphas)])
    v = [g.detach() for g in grads[len(alphas) :]]
    return loss.detach(), g1, v


def _combine(g1: Sequence[Tensor], g2: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(a + b for a, b in zip(g1, g2, strict=True))


#: The solvers under their first names (public API since 0.1).
conjugate_gradient = solve_cg
neumann_series = solve_neumann


# --------------------------------------------------------------------------- estimators


@with_common_random_numbers
def first_order(
    model: nn.Module, train_batch: Batch, valid_batch: Batch, *, loss_fn: LossFn | None = None
) -> Hypergradient:
    """First-order DARTS: ``g = g1 = grad_alpha L_val(w, alpha)`` (one forward/backward)."""
    prepared = prepare(model, loss_fn, train_batch=train_batch, valid_batch=valid_batch)
    val_loss, g1 = _first_order_pass(prepared, valid_batch)
    return Hypergradient(grads=g1, terms={"g1": g1}, val_loss=val_loss)


def _first_order_pass(
    prepared: Prepared, valid_batch: Batch
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(L_val, g1)`` from one forward/backward on the validation batch (buffers restored)."""
    with preserve_state(prepared.net, parameters=False):
        val_loss, g1, _ = _val_pass(prepared, valid_batch, need_v=False)
    return val_loss, g1


def _with_second_term(
    prepared: Prepared,
    train_batch: Batch,
    valid_batch: Batch,
    options: ProductOptions,
    apply: Callable[[Matvec, TensorList], TensorList],
    scale: float = 1.0,
) -> Hypergradient:
    """``g = g1 + g2`` with ``g2 = -scale * B apply(H, v)``, everything at the current w.

    ``apply(hvp, v)`` is ``H v`` for amended (``scale = eta``) and ``x ~ H^-1 v`` for the
    implicit estimators (``scale = 1``). In exact mode H and B share one ``create_graph``
    backward on the training batch (:func:`darts_amend.hvp.second_order_products`);
    ``options`` select the mode, micro-batches and a sub-batch for the products.
    """
    with preserve_state(prepared.net, parameters=(options.mode != "exact")):
        val_loss, g1, v = _val_pass(prepared, valid_batch)
        products = training_products(prepared, train_batch, options)
        bx = products.mixed(apply(products.hvp, v))
    g2 = tuple(-scale * t for t in bx)  # eq. 7: -eta B (H v); implicit: -B x, x ~ H^-1 v
    return Hypergradient(
        grads=_combine(g1, g2),
        terms={"g1": g1, "g2": g2},
        val_loss=val_loss,
        train_loss=products.loss,
    )


@with_common_random_numbers
def amended(
    model: nn.Module,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    eta: float = 0.1,
    mode: str = "exact",
    r: float = 0.01,
    chunks: int = 1,
    second_order_batch: int | None = None,
    fast_depthwise: bool = True,
) -> Hypergradient:
    """Amended-DARTS (eq. 7): ``g = g1 + g2'`` with ``g2' = -eta * B H v`` at the current w.

    Exact mode shares work: one backward on the validation batch gives g1 and v; one forward and
    one ``create_graph`` backward on the training batch give grad_w L_train with its graph, from
    which H v and then B (H v) are two double-backward passes (the second only w.r.t. alphas).
    ``eta = 0`` is first-order DARTS (the second-order part is skipped).

    Cost options (every estimator with second-order products has them):

    * ``mode="forward_difference"``: one-sided differences, 4 forward/backward passes in all
      (central ``"finite_difference"``: 5), error O(r) instead of O(r^2);
    * ``chunks=K``: H v and B (H v) accumulated over K micro-batches of the training batch, one
      double-backward graph alive at a time (peak memory of the products ~1/K; in exact mode one
      extra forward + ``create_graph`` backward over the batch). The same numbers up to round-off
      when the loss is a mean over independent samples; with BatchNorm in training mode each
      micro-batch is normalised with its own statistics (a different, ghost-batch-norm
      estimator: a warning says so);
    * ``second_order_batch=M``: H and B on the first M samples of the training batch only (g1
      and v keep the whole validation batch): cheaper, and a different, noisier estimator of
      the same quantity -- never the default;
    * ``fast_depthwise`` (exact mode): grouped convolutions take a cheaper double backward
      (:mod:`darts_amend._depthwise`; same values up to round-off). ``False`` keeps PyTorch's.
    """
    eta = check_option("eta", eta)
    options = ProductOptions.check(mode, r, chunks, second_order_batch, fast_depthwise)
    prepared = prepare(model, loss_fn, train_batch=train_batch, valid_batch=valid_batch)
    if eta == 0.0:
        val_loss, g1 = _first_order_pass(prepared, valid_batch)
        g2 = tuple(torch.zeros_like(g) for g in g1)
        return Hypergradient(grads=g1, terms={"g1": g1, "g2": g2}, val_loss=val_loss)
    # g2' = -eta * B (H v)
    return _with_second_term(
        prepared, train_batch, valid_batch, options, lambda hvp, v: hvp(v), scale=eta
    )


@with_common_random_numbers
def unrolled(
    model: nn.Module,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    xi: float | None = None,
    momentum: float = 0.0,
    momentum_buffers: Sequence[Tensor | None] | None = None,
    weight_decay: float = 0.0,
    mode: str = "exact",
    r: float = 0.01,
    chunks: int = 1,
    second_order_batch: int | None = None,
    fast_depthwise: bool = True,
) -> Hypergradient:
    """Second-order DARTS, as upstream (quark0/darts) and the DARTS paper compute it.

    w' = w - xi * (momentum * buffer + grad_w L_train(w) + weight_decay * w), then
    g = grad_alpha L_val(w') - xi * B(w) v with v = grad_w L_val(w'); B is taken at w.
    ``xi`` is the weight learning rate (required); ``momentum_buffers`` is a list aligned with
    the weights (entries may be None) holding the weight optimizer's momentum, passed explicitly.
    ``mode="finite_difference"`` is upstream's central difference with R = r / ||v||;
    ``"forward_difference"`` reuses the training gradient at w (3 passes instead of 4). The cost
    options ``chunks``, ``second_order_batch`` and ``fast_depthwise`` act on the B v product as
    in :func:`amended`.
    """
    if xi is None:
        raise ValueError("unrolled needs xi, the learning rate of the weight optimizer")
    xi = check_option("xi", xi)
    momentum = check_option("momentum", momentum)
    weight_decay = check_option("weight_decay", weight_decay)
    options = ProductOptions.check(mode, r, chunks, second_order_batch, fast_depthwise)
    prepared = prepare(model, loss_fn, train_batch=train_batch, valid_batch=valid_batch)
    net, alphas, weights, loss_fn = prepared
    buffers = _check_buffers(momentum_buffers, weights)
    # forward differences reuse this pass's gradients at w as their base
    reuse = (
        options.mode == "forward_difference"
        and options.second_order_batch is None
        and options.chunks == 1
    )
    with preserve_state(net, parameters=True) as restore:
        train_loss = evaluate_loss(loss_fn, net, train_batch, "training loss")
        check_finite(train_loss, "training loss")
        grads = [g.detach() for g in list_grad(train_loss, weights + alphas if reuse else weights)]
        grad_w = grads[: len(weights)]
        base = (train_loss, grad_w, grads[len(weights) :]) if reuse else None
        with torch.no_grad():  # w <- w' in place (restored below, bit-exactly)
            for w, g, buf in zip(weights, grad_w, buffers, strict=True):
                step = g + weight_decay * w
                if buf is not None and momentum != 0.0:
                    step = step + momentum * buf
                w.sub_(xi * step)
        val_loss, g1, v = _val_pass(prepared, valid_batch)
        restore()  # back to w: B is taken at w
        bv = training_products(prepared, train_batch, options, base).mixed(v)
    g2 = tuple(-xi * t for t in bv)  # chain rule of the unrolled step: B at w, v at w'
    return Hypergradient(
        grads=_combine(g1, g2),
        terms={"g1": g1, "g2": g2},
        val_loss=val_loss,
        train_loss=train_loss.detach(),
    )


def _check_buffers(
    buffers: Sequence[Tensor | None] | None, weights: TensorList
) -> list[Tensor | None]:
    if buffers is None:
        return [None] * len(weights)
    if isinstance(buffers, Tensor) or not isinstance(buffers, (list, tuple)):
        raise TypeError(
            "momentum_buffers must be a list aligned with the weights (entries may be None)"
        )
    if len(buffers) != len(weights):
        raise ValueError(
            f"momentum_buffers has {len(buffers)} entries but there are {len(weights)} weights"
        )
    for i, (b, w) in enumerate(zip(buffers, weights, strict=True)):
        if b is not None and (not isinstance(b, Tensor) or b.shape != w.shape):
            raise ValueError(
                f"momentum_buffers[{i}] does not match the shape {tuple(w.shape)} of weights[{i}]"
            )
    return [None if b is None else b.detach() for b in buffers]


@with_common_random_numbers
def implicit_cg(
    model: nn.Module,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    iterations: int = 10,
    damping: float = 0.0,
    tol: float = 1e-12,
    mode: str = "exact",
    r: float = 0.01,
    chunks: int = 1,
    second_order_batch: int | None = None,
    fast_depthwise: bool = True,
) -> Hypergradient:
    """Implicit-function gradient with ``(H + damping I) x = v`` solved by ``iterations`` steps
    of conjugate gradient: ``g = g1 - B x`` (converges to g1 - B H^-1 v at an inner optimum)."""
    iterations = check_option("iterations", iterations)
    damping = check_option("damping", damping)
    tol = check_option("tol", tol)
    options = ProductOptions.check(mode, r, chunks, second_order_batch, fast_depthwise)

    cg: list[Any] = []

    def solve(hvp: Matvec, v: TensorList) -> TensorList:
        # (H + d I) x = v
        x, info = solve_cg(make_ridge_matvec(hvp, damping), v, iterations, tol=tol,
                           return_info=True)
        cg.append(info)
        return x

    prepared = prepare(model, loss_fn, train_batch=train_batch, valid_batch=valid_batch)
    result = _with_second_term(prepared, train_batch, valid_batch, options, solve)
    (info,) = cg
    if info.stop == "curvature" and info.iterations == 0:
        warnings.warn(
            # one text for every occurrence, so the default filter shows it once per place
            "implicit_cg: <v, (H + damping I) v> is not positive, so conjugate gradient "
            "stopped before its first update and g2 = 0: this estimate is the first-order "
            "one (a larger damping makes this rarer; Hypergradient.info records it)",
            RuntimeWarning,
            stacklevel=3,
        )
    return dataclasses.replace(
        result, info={"cg_iterations": info.iterations, "cg_stop": info.stop}
    )


@with_common_random_numbers
def implicit_neumann(
    model: nn.Module,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    terms: int = 10,
    gamma: float = 0.01,
    mode: str = "exact",
    r: float = 0.01,
    chunks: int = 1,
    second_order_batch: int | None = None,
    fast_depthwise: bool = True,
) -> Hypergradient:
    """iDARTS-style Neumann series: ``H^-1 v ~ gamma * sum_{j<terms} (I - gamma H)^j v``,
    ``g = g1 - B x``. Converges when ``0 < gamma < 2 / lambda_max(H)`` and H is positive
    definite."""
    terms = check_option("terms", terms)
    gamma = check_option("gamma", gamma)
    options = ProductOptions.check(mode, r, chunks, second_order_batch, fast_depthwise)
    prepared = prepare(model, loss_fn, train_batch=train_batch, valid_batch=valid_batch)
    return _with_second_term(
        prepared,
        train_batch,
        valid_batch,
        options,
        lambda hvp, v: solve_neumann(hvp, v, terms, gamma),  # x ~ H^-1 v
    )


ESTIMATORS: dict[str, Callable[..., Hypergradient]] = {
    "first_order": first_order,
    "unrolled": unrolled,
    "amended": amended,
    "implicit_cg": implicit_cg,
    "implicit_neumann": implicit_neumann,
}


def get_estimator(name: str) -> Callable[..., Hypergradient]:
    """The estimator function registered under ``name``."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]
