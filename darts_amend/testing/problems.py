"""Toy bilevel problems with their exact hypergradient, ready to check an estimator against.

Each factory returns a fresh :class:`BilevelProblem`: a supernet whose weights already sit at the
inner optimum ``w*(alpha)`` (closed form, or Newton to machine precision), a training and a
validation batch, and the exact hypergradient ``g = g1 - B H^-1 v`` there, in float64.

    darts_1d              the DARTS paper's example: w* = alpha, g = 2 alpha - 2
    ridge                 least squares with one log-penalty per feature as the alphas
    softmax_mixture       a smooth two-op mixed edge (tanh, GELU) + linear head, Newton-solved
    angle_counterexample  docs/math.md: H = diag(1, k), B = [1, 1], v = (1, -1), where the
                          amended term points against the exact one
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from darts_amend._types import Batch, LossFn
from darts_amend.estimators import Hypergradient

from .dense import exact_hypergradient, solve_inner_
from .models import DartsToy, MixedMLP, QuadraticBilevel, RidgeRegression

__all__ = [
    "PROBLEMS",
    "BilevelProblem",
    "all_problems",
    "angle_counterexample",
    "darts_1d",
    "make_problem",
    "ridge",
    "softmax_mixture",
]

Device = torch.device | str | None

_MIXTURE_OPTIMA: dict[tuple[Any, ...], list[Tensor]] = {}  # softmax_mixture: solved w* by options


@dataclass(frozen=True)
class BilevelProblem:
    """A supernet at its inner optimum, two batches, and the exact hypergradient there.

    ``exact`` has the estimators' result type: ``exact.grads`` (aligned with
    ``model.arch_parameters()``) and ``exact.terms["g1"]`` / ``["g2"]``. ``exact_with`` names
    library estimators, with options, that are exact on this problem up to rounding (the
    checks a correct implementation must pass); ``loss_fn`` is ``None`` when the model's own
    ``_loss`` is the loss.
    """

    name: str
    model: nn.Module = field(repr=False)
    train_batch: Batch = field(repr=False)
    valid_batch: Batch = field(repr=False)
    exact: Hypergradient = field(repr=False)
    description: str = ""
    loss_fn: LossFn | None = field(default=None, repr=False)
    exact_with: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def alphas(self) -> list[Tensor]:
        """``model.arch_parameters()`` as a list."""
        return list(self.model.arch_parameters())  # type: ignore[operator]


def _maker(dtype: torch.dtype, device: Device) -> Callable[[Any], Tensor]:
    """``t(values)``: a tensor of the problem's dtype and device."""
    return lambda values: torch.tensor(values, dtype=dtype, device=device)


def _hypergradient(
    g1: Tensor, g2: Tensor, val_loss: Tensor, train_loss: Tensor
) -> Hypergradient:
    """A one-alpha-tensor result ``g = g1 + g2`` (all detached)."""
    g1, g2 = g1.detach(), g2.detach()
    return Hypergradient(
        grads=(g1 + g2,), terms={"g1": (g1,), "g2": (g2,)},
        val_loss=val_loss.detach().reshape(()), train_loss=train_loss.detach().reshape(()),
    )


def darts_1d(
    alpha: float = 0.5, *, dtype: torch.dtype = torch.float64, device: Device = None
) -> BilevelProblem:
    """The DARTS paper's example: ``L_val = alpha w - 2 alpha + 1``,
    ``L_train = w^2 - 2 alpha w + alpha^2``.

    ``w*(alpha) = alpha``, ``L_val(w*, alpha) = (alpha - 1)^2``, so the true hypergradient is
    ``2 alpha - 2`` (g1 = alpha - 2, g2 = alpha; H = 2, B = -2, v = alpha). H is a multiple of
    the identity, so amended (eta = 1/4), unrolled (xi = 1/2) and a one-term Neumann series
    (gamma = 1/2) are exact here too; first-order DARTS is off by alpha.
    """
    model = DartsToy(alpha, w=alpha, dtype=dtype, device=device)  # w* = alpha
    t = _maker(dtype, device)
    train = (t([1.0, -2.0, 1.0, 0.0, 0.0, 0.0]), t([]))
    valid = (t([0.0, 1.0, 0.0, 0.0, -2.0, 1.0]), t([]))
    a = t([alpha])
    exact = _hypergradient(a - 2.0, a.clone(), (a - 1.0).square(), t(0.0))
    return BilevelProblem(
        "darts_1d", model, train, valid, exact,
        description=f"DARTS 1-D example at alpha = {alpha:g}: w* = alpha, g = 2 alpha - 2",
        exact_with={
            "implicit_cg": {"iterations": 1},
            "implicit_neumann": {"terms": 1, "gamma": 0.5},
            "amended": {"eta": 0.25},
            "unrolled": {"xi": 0.5},
        },
    )


def ridge(
    features: int = 4,
    *,
    n_train: int = 24,
    n_valid: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Device = None,
) -> BilevelProblem:
    """Ridge regression with a penalty ``exp(alpha_j)`` per feature (see :class:`RidgeRegression`).

    In closed form: ``H = X^T X / n + diag(e^alpha)``, ``w* = H^-1 X^T y / n``,
    ``B = diag(e^alpha * w*)``, ``v = X_v^T (X_v w* - y_v) / n_v``, ``g1 = 0`` and
    ``g = -(e^alpha * w*) * (H^-1 v)``: the whole hypergradient is the second term.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    w_true = randn(features)
    xt, xv = randn(n_train, features), randn(n_valid, features)
    yt, yv = xt @ w_true + 0.5 * randn(n_train), xv @ w_true + 0.5 * randn(n_valid)
    alpha = math.log(0.3) + 0.7 * randn(features)
    xt, xv, yt, yv, alpha = (t.to(dtype=dtype, device=device) for t in (xt, xv, yt, yv, alpha))
    pen = alpha.exp()
    h = xt.T @ xt / n_train + torch.diag(pen)
    w_star = torch.linalg.solve(h, xt.T @ yt / n_train)
    model = RidgeRegression(features, log_penalty=alpha, dtype=dtype, device=device)
    with torch.no_grad():
        model.w.copy_(w_star)
    one, zero = torch.ones_like(yt[0]), torch.zeros_like(yt[0])  # rho: penalty on / off
    train, valid = ((xt, one), yt), ((xv, zero), yv)
    v = xv.T @ (xv @ w_star - yv) / n_valid
    g2 = -(pen * w_star) * torch.linalg.solve(h, v)  # -B H^-1 v with B = diag(e^alpha w*)
    val_loss = 0.5 * (xv @ w_star - yv).square().mean()
    train_loss = 0.5 * (xt @ w_star - yt).square().mean() + 0.5 * (pen * w_star.square()).sum()
    return BilevelProblem(
        "ridge", model, train, valid,
        _hypergradient(torch.zeros_like(g2), g2, val_loss, train_loss),
        description=f"ridge regression, {features} per-feature log-penalties as alphas "
        f"(seed {seed})",
        exact_with={"implicit_cg": {"iterations": 4 * features}},
    )


def softmax_mixture(
    seed: int = 0,
    *,
    d_in: int = 3,
    hidden: int = 3,
    classes: int = 3,
    n_train: int = 32,
    n_valid: int = 24,
    weight_decay: float = 0.1,
    dtype: torch.dtype = torch.float64,
    device: Device = None,
) -> BilevelProblem:
    """A two-op mixed edge, ``softmax(alpha)`` over ``tanh`` and ``GELU`` (see :class:`MixedMLP`),
    cross-entropy plus weight decay, with ``w*`` found by Newton (``||grad_w L_train|| <= 1e-12``)
    and the exact hypergradient from the dense Hessian (:func:`exact_hypergradient`).

    With the defaults H is well conditioned (eigenvalues 0.008..0.49) and the optimum is not the
    trivial w = 0 (much larger weight decay collapses it there, and the hypergradient to ~0).
    The global random state is not touched (the model is drawn under a forked RNG).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixedMLP(d_in, hidden, classes, 2, activation=("tanh", "gelu"),
                         weight_decay=weight_decay, dtype=dtype, device=device)
        x = torch.randn(n_train + n_valid, d_in, dtype=dtype)
        y = torch.randint(0, classes, (n_train + n_valid,))
    x, y = x.to(device), y.to(device)
    train, valid = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    key = (seed, d_in, hidden, classes, n_train, n_valid, weight_decay, dtype, str(device))
    weights = [p for p in model.parameters() if p.requires_grad]
    if key not in _MIXTURE_OPTIMA:  # Newton costs ~0.5 s: solve each configuration once
        solve_inner_(model, train, tol=1e-12)
        _MIXTURE_OPTIMA[key] = [p.detach().clone() for p in weights]
    with torch.no_grad():
        for p, s in zip(weights, _MIXTURE_OPTIMA[key], strict=True):
            p.copy_(s)
    n = sum(p.numel() for p in model.parameters())
    return BilevelProblem(
        "softmax_mixture", model, train, valid, exact_hypergradient(model, train, valid),
        description=f"softmax mixture of tanh and GELU ops on one edge, {n} weights, Newton-solved "
        f"inner optimum (seed {seed})",
        exact_with={"implicit_cg": {"iterations": 4 * n}},
    )


def angle_counterexample(
    k: float = 4.0, *, dtype: torch.dtype = torch.float64, device: Device = None
) -> BilevelProblem:
    """docs/math.md: ``H = diag(1, k)``, ``B = [1, 1]``, ``v = (1, -1)``, alpha = 0.

    ``w* = 0``, ``g1 = 0`` and the exact ``g = g2 = -B H^-1 v = -(1 - 1/k)``, while amended's
    ``g2' = -eta B H v = -eta (1 - k)`` has the opposite sign for every ``k != 1``: the paper's
    angle claim fails here, so amended does *not* pass this problem (that is the point).
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"invalid k: {k!r} (H = diag(1, k) must be positive definite: k > 0)")
    t = _maker(dtype, device)
    c = t([[1.0, 1.0]])
    m_train = torch.diag(t([1.0, float(k)]))
    train = (m_train, t([0.0, 0.0]))
    # valid loss -b^T w with b = (-1, 1): v = grad_w L_val = C^T alpha - b = (1, -1)
    valid = (t([[0.0, 0.0], [0.0, 0.0]]), t([-1.0, 1.0]))
    alpha = t([0.0])
    w_star = torch.linalg.solve(m_train, train[1] - c.T @ alpha)  # grad_w L_train = 0
    model = QuadraticBilevel(c, w_star, alpha)
    v = valid[0] @ w_star + c.T @ alpha - valid[1]
    g1 = c @ w_star
    g2 = -(c @ torch.linalg.solve(m_train, v))  # -B H^-1 v = -(1 - 1/k)
    val_loss = 0.5 * w_star @ valid[0] @ w_star + alpha @ c @ w_star - valid[1] @ w_star
    train_loss = 0.5 * w_star @ m_train @ w_star + alpha @ c @ w_star - train[1] @ w_star
    return BilevelProblem(
        "angle_counterexample", model, train, valid, _hypergradient(g1, g2, val_loss, train_loss),
        description=f"angle counterexample (docs/math.md), H = diag(1, {k:g}), B = [1, 1], "
        "v = (1, -1): amended's second term points against the exact one",
        exact_with={"implicit_cg": {"iterations": 2}},
    )


#: Every problem factory by name.
PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {
    "darts_1d": darts_1d,
    "ridge": ridge,
    "softmax_mixture": softmax_mixture,
    "angle_counterexample": angle_counterexample,
}


def make_problem(name: str, **options: Any) -> BilevelProblem:
    """A fresh problem by name; options go to its factory (``make_problem("ridge", seed=1)``)."""
    if not isinstance(name, str) or name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](**options)


def all_problems(
    *, dtype: torch.dtype = torch.float64, device: Device = None
) -> list[BilevelProblem]:
    """One fresh instance of every problem in :data:`PROBLEMS`, default options."""
    return [factory(dtype=dtype, device=device) for factory in PROBLEMS.values()]
