"""Dense ground truth for small supernets: derivatives, the exact hypergradient, the inner optimum.

Everything here builds Hessians entry by entry with plain ``torch.autograd.grad`` (one double
backward per row), independently of the Hessian-vector products the estimators use
(:mod:`darts_amend.hvp`), so it can serve as their reference. It works on any model that
follows the supernet protocol; the cost grows with the number of weights, hence the limit
:data:`MAX_DENSE_WEIGHTS`.

    g = g1 - B H^-1 v,   g1 = grad_alpha L_val,  v = grad_w L_val,
                         H = grad^2_ww L_train,  B = grad^2_{alpha w} L_train (rows: alpha)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from darts_amend._types import Batch, LossFn
from darts_amend.estimators import Hypergradient
from darts_amend.model import check_finite, evaluate_loss, prepare, preserve_state
from darts_amend.tensorlist import flatten, list_grad, unflatten

__all__ = [
    "MAX_DENSE_WEIGHTS",
    "DenseDerivatives",
    "dense_derivatives",
    "exact_hypergradient",
    "solve_inner_",
]

#: The most weights :func:`exact_hypergradient` and friends accept by default (a dense
#: n x n Hessian costs n double-backward passes and n^2 numbers).
MAX_DENSE_WEIGHTS = 4096


class DenseDerivatives(NamedTuple):
    """First and second derivatives of one loss, flattened over (alphas, weights).

    Vectors and matrix rows follow ``model.arch_parameters()`` then the weights in
    ``split_parameters`` order, each tensor flattened (``reshape(-1)``).
    """

    loss: Tensor  #: the detached loss
    grad_alphas: Tensor  #: (m,)   grad_alpha L
    grad_weights: Tensor  #: (n,)  grad_w L
    alpha_alpha: Tensor  #: (m, m) grad^2_{alpha alpha} L
    alpha_weight: Tensor  #: (m, n) B = grad^2_{alpha w} L
    weight_weight: Tensor  #: (n, n) H = grad^2_{ww} L


def _unflat(vec: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(unflatten(vec, like))


def _check_size(weights: Sequence[Tensor], max_weights: int, what: str) -> int:
    n = sum(w.numel() for w in weights)
    if n > max_weights:
        raise ValueError(
            f"{what} builds a dense {n} x {n} Hessian (one double backward per weight): the model "
            f"has {n} weights, above the limit max_weights={max_weights}; use a smaller toy model, "
            "raise max_weights, or use an iterative estimator (implicit_cg) instead"
        )
    return n


def _derivatives(
    loss: Tensor, alphas: Sequence[Tensor], weights: Sequence[Tensor], rows: str | None
) -> tuple[Tensor, Tensor | None]:
    """``(gradient, Hessian rows)`` over ``alphas + weights``; ``rows`` is ``None`` (gradient
    only), ``"weights"`` (the rows of the weight entries) or ``"all"``."""
    params = list(alphas) + list(weights)
    g = flatten(list_grad(loss, params, create_graph=rows is not None))
    if rows is None:
        return g.detach(), None
    m = sum(a.numel() for a in alphas)
    wanted = range(m, g.numel()) if rows == "weights" else range(g.numel())
    out = []
    for i in wanted:  # row i: grad_theta (dL/dtheta_i), one double backward each
        gi = g[i]
        out.append(
            flatten(list_grad(gi, params, retain_graph=True))
            if gi.requires_grad
            else torch.zeros_like(g)
        )
    return g.detach(), torch.stack(out).detach() if out else g.new_zeros(0, g.numel())


def dense_derivatives(
    model: nn.Module,
    batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    max_weights: int = MAX_DENSE_WEIGHTS,
) -> DenseDerivatives:
    """Gradient and full dense Hessian of ``loss_fn(model, *batch)`` over (alphas, weights).

    One forward, one ``create_graph`` backward and one double backward per alpha and weight
    entry. Parameters are never written, ``.grad`` is untouched and buffers (BatchNorm running
    statistics) are restored. ValueError above ``max_weights`` weights.
    """
    net, alphas, weights, loss_fn = prepare(model, loss_fn, batch=batch)
    _check_size(weights, max_weights, "dense_derivatives")
    with preserve_state(net, parameters=False):
        loss = evaluate_loss(loss_fn, net, batch, "loss")
        check_finite(loss, "loss")
        g, hess = _derivatives(loss, alphas, weights, "all")
    assert hess is not None
    m = sum(a.numel() for a in alphas)
    hess = 0.5 * (hess + hess.T)  # symmetric up to rounding
    return DenseDerivatives(
        loss.detach(), g[:m], g[m:], hess[:m, :m], hess[:m, m:], hess[m:, m:]
    )


def exact_hypergradient(
    model: nn.Module,
    train_batch: Batch,
    valid_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    max_weights: int = MAX_DENSE_WEIGHTS,
) -> Hypergradient:
    """The implicit-function hypergradient ``g = g1 - B H^-1 v`` at the current weights, densely.

    Same signature and result type as the estimators (``grads`` aligned with
    ``model.arch_parameters()``, ``terms`` ``g1`` and ``g2 = -B H^-1 v``), so it can stand in
    for one. It is the gradient of ``alpha -> L_val(w*(alpha), alpha)`` when the weights sit
    at an inner optimum ``w*`` (:func:`solve_inner_` puts them there). H is built from one
    double backward per weight and solved directly; ValueError when the model has more than
    ``max_weights`` weights or H is singular. The model is left exactly as found.
    """
    net, alphas, weights, loss_fn = prepare(
        model, loss_fn, train_batch=train_batch, valid_batch=valid_batch
    )
    _check_size(weights, max_weights, "exact_hypergradient")
    m = sum(a.numel() for a in alphas)
    with preserve_state(net, parameters=False):
        val_loss = evaluate_loss(loss_fn, net, valid_batch, "validation loss")
        check_finite(val_loss, "validation loss")
        g_val, _ = _derivatives(val_loss, alphas, weights, None)
        train_loss = evaluate_loss(loss_fn, net, train_batch, "training loss")
        check_finite(train_loss, "training loss")
        _, rows = _derivatives(train_loss, alphas, weights, "weights")
    assert rows is not None
    g1, v = g_val[:m], g_val[m:]
    h = rows[:, m:]
    h = 0.5 * (h + h.T)  # symmetric up to rounding
    b = rows[:, :m].T  # (m, n): row i of the Hessian restricted to the alphas is B's column
    try:
        x = torch.linalg.solve(h, v)
    except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"exact_hypergradient: H is singular ({exc})") from exc
    g2 = -(b @ x)  # g2 = -B H^-1 v
    g1_t, g2_t = _unflat(g1, alphas), _unflat(g2, alphas)
    return Hypergradient(
        grads=tuple(a + c for a, c in zip(g1_t, g2_t, strict=True)),
        terms={"g1": g1_t, "g2": g2_t},
        val_loss=val_loss.detach(),
        train_loss=train_loss.detach(),
    )


def solve_inner_(
    model: nn.Module,
    train_batch: Batch,
    *,
    loss_fn: LossFn | None = None,
    tol: float = 1e-12,
    max_iterations: int = 100,
    max_weights: int = MAX_DENSE_WEIGHTS,
) -> float:
    """Move the weights, in place, to a strict local minimum of the training loss (Newton).

    Damped Newton with a dense Hessian: ``w <- w - (H + mu I)^-1 grad``, ``mu`` grown until
    ``H + mu I`` is positive definite and the loss does not rise, shrunk to 0 near the minimum
    (quadratic convergence there). Stops when ``||grad_w L_train|| <= tol`` and returns that
    norm; RuntimeError when it does not get there in ``max_iterations`` steps or H is not
    positive definite at the end. Alphas are not touched; buffers are restored.
    """
    net, alphas, weights, loss_fn = prepare(model, loss_fn, train_batch=train_batch)
    n = _check_size(weights, max_weights, "solve_inner_")
    like = weights[0]
    eye = torch.eye(n, dtype=like.dtype, device=like.device)

    def write_(theta: Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(weights, _unflat(theta, weights), strict=True):
                p.copy_(t)

    def value() -> float:
        with torch.no_grad():
            return float(_evaluate_no_grad(loss_fn, net, train_batch))

    with preserve_state(net, parameters=False):
        mu = 0.0
        for _ in range(max_iterations):
            loss = evaluate_loss(loss_fn, net, train_batch, "training loss")
            check_finite(loss, "training loss")
            g, rows = _derivatives(loss, [], weights, "all")
            assert rows is not None
            h = 0.5 * (rows + rows.T)
            gnorm = float(g.norm())
            if gnorm <= tol:
                if not bool(torch.linalg.cholesky_ex(h).info == 0):
                    raise RuntimeError(
                        "solve_inner_: the gradient vanishes but H is not positive definite "
                        "(a saddle point, not a strict local minimum)"
                    )
                return gnorm
            w0, f0 = flatten([w.detach() for w in weights]).clone(), float(loss.detach())
            scale = max(float(h.diagonal().abs().max()), 1e-12)
            for _ in range(60):  # find mu: H + mu I positive definite and a loss that does not rise
                chol, info = torch.linalg.cholesky_ex(h + mu * eye)
                if int(info) == 0:
                    step = torch.cholesky_solve(g.unsqueeze(1), chol).squeeze(1)
                    write_(w0 - step)
                    f1 = value()
                    if math.isfinite(f1) and f1 <= f0 + 1e-13 * max(1.0, abs(f0)):
                        mu = 0.0 if mu < 1e-10 * scale else mu / 10.0
                        break
                mu = max(4.0 * mu, 1e-8 * scale)
            else:
                write_(w0)
                raise RuntimeError("solve_inner_: no Newton step decreases the training loss")
        raise RuntimeError(
            f"solve_inner_: ||grad_w L_train|| = {gnorm:.3g} > tol = {tol:g} after "
            f"{max_iterations} Newton steps"
        )


def _evaluate_no_grad(loss_fn: LossFn, net: nn.Module, batch: Batch) -> Tensor:
    loss = loss_fn(net, batch[0], batch[1])
    return loss.detach().reshape(())
