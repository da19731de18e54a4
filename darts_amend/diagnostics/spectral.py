"""Extreme eigenvalues of symmetric operators given only as matrix-vector products.

Everything here works on a *closure* ``matvec: Tensor(n) -> Tensor(n)`` over flat vectors, so
the same code serves the Hessian of the validation loss in the alphas (RobustDARTS' collapse
signal) and the Hessian H of the training loss in the weights, without ever forming a dense
Hessian. :func:`dominant_eigenvalue` wires a model and a batch to these solvers through
:func:`darts_amend.hvp.hessian_matvec` (many products on one shared graph).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from darts_amend._types import LossFn
from darts_amend.tensorlist import flatten, unflatten

from ._random import fixed_randomness

__all__ = [
    "EigenResult",
    "power_iteration",
    "lanczos",
    "dominant_eigenvalue",
]

logger = logging.getLogger(__name__)

Matvec = Callable[[Tensor], Tensor]
_WHICH = ("largest", "magnitude")
_METHODS = ("lanczos", "power")


@dataclass(frozen=True)
class EigenResult:
    """An eigenvalue estimate.

    ``value``: the estimate; ``residual``: ``||A q - value q||`` for the unit Ritz vector ``q``
    (an exact bound on the distance from ``value`` to the spectrum of a symmetric ``A``);
    ``iterations``: matrix-vector products used; ``converged``: residual <= tol * |value|;
    ``seconds``: wall-clock time (set by :func:`dominant_eigenvalue`, 0.0 otherwise).
    """

    value: float
    residual: float
    iterations: int
    converged: bool
    seconds: float = 0.0


def _start_vector(n: int, like: Tensor, seed: int) -> Tensor:
    # A private generator: estimating an eigenvalue must not advance the caller's RNG stream.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    return v / v.norm()


def _check(n: int, iterations: int, tol: float) -> None:
    if n < 1:
        raise ValueError(f"invalid dimension: {n} (the operator acts on an empty vector)")
    if iterations < 1:
        raise ValueError(f"invalid iterations: {iterations}")
    if not tol > 0:
        raise ValueError(f"invalid tol: {tol}")


def power_iteration(
    matvec: Matvec, v0: Tensor, *, iterations: int = 50, tol: float = 1e-4
) -> EigenResult:
    """Eigenvalue of largest magnitude of a symmetric operator, by power iteration.

    ``v0`` is a non-zero flat start vector (it also fixes dtype and device). Each step costs one
    ``matvec``; the estimate is the Rayleigh quotient ``q^T A q`` and iteration stops once its
    residual ``||A q - lambda q|| <= tol * |lambda|``. Convergence is geometric in
    ``|lambda_2 / lambda_1|``, so it is slow when the two largest magnitudes are close; prefer
    :func:`lanczos`, which needs fewer products for the same accuracy.
    """
    if v0.dim() != 1:
        raise ValueError(f"v0 must be a flat vector, got shape {tuple(v0.shape)}")
    _check(v0.numel(), iterations, tol)
    norm = v0.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("v0 must be finite and non-zero")
    q = v0 / norm
    value, residual = 0.0, math.inf
    for it in range(1, iterations + 1):
        w = matvec(q)
        lam = torch.dot(q, w)
        residual = float((w - lam * q).norm())
        value = float(lam)
        if not math.isfinite(value):
            raise FloatingPointError("power iteration: the operator produced a non-finite value")
        if residual <= tol * abs(value):
            return EigenResult(value, residual, it, True)
        w_norm = w.norm()
        if w_norm == 0:  # q is in the null space: 0 is an eigenvalue and nothing larger is seen
            return EigenResult(0.0, 0.0, it, True)
        q = w / w_norm
    return EigenResult(value, residual, iterations, False)


def lanczos(
    matvec: Matvec,
    v0: Tensor,
    *,
    iterations: int = 20,
    tol: float = 1e-4,
    which: str = "largest",
) -> EigenResult:
    """Extreme eigenvalue of a symmetric operator by the Lanczos method.

    Builds an orthonormal Krylov basis ``Q`` of ``span{v0, A v0, ...}`` (with full
    re-orthogonalisation, cheap for the few dozen steps used here) and the tridiagonal
    ``T = Q^T A Q``; the Ritz values (eigenvalues of ``T``) approach the extreme eigenvalues of
    ``A``. ``which="largest"``: the largest (algebraic) eigenvalue, the RobustDARTS signal;
    ``"magnitude"``: the eigenvalue of largest absolute value (what power iteration finds).
    Stops when the Ritz residual ``|beta_k s_k| <= tol * |theta|``, when the Krylov space
    is exhausted (then the answer is exact up to rounding), or after ``iterations`` products.
    """
    if which not in _WHICH:
        raise ValueError(f"invalid which: {which!r} (expected one of {_WHICH})")
    if v0.dim() != 1:
        raise ValueError(f"v0 must be a flat vector, got shape {tuple(v0.shape)}")
    n = v0.numel()
    _check(n, iterations, tol)
    norm = v0.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("v0 must be finite and non-zero")
    steps = min(iterations, n)
    basis = [v0 / norm]
    alphas: list[float] = []
    betas: list[float] = []
    value, residual, converged = 0.0, math.inf, False
    for k in range(steps):
        q = basis[-1]
        w = matvec(q)
        a = torch.dot(q, w)
        if not torch.isfinite(a):
            raise FloatingPointError("lanczos: the operator produced a non-finite value")
        alphas.append(float(a))
        # three-term recurrence, then full re-orthogonalisation (twice is enough)
        w = w - a * q
        if k > 0:
            w = w - betas[-1] * basis[-2]
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        b = float(w.norm())
        # Ritz values and vectors of T_k
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        idx = int(evals.argmax()) if which == "largest" else int(evals.abs().argmax())
        value = float(evals[idx])
        residual = abs(b * float(evecs[-1, idx]))
        scale = max(abs(value), float(evals.abs().max()) * 1e-12, 1e-300)
        if b <= 1e-10 * scale or residual <= tol * max(abs(value), 1e-300):
            converged = True
            return EigenResult(value, residual, k + 1, converged)
        betas.append(b)
        basis.append(w / b)
    return EigenResult(value, residual, steps, converged)


def dominant_eigenvalue(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    *,
    wrt: str = "alphas",
    loss_fn: LossFn | None = None,
    method: str = "lanczos",
    which: str = "largest",
    iterations: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
) -> EigenResult:
    """Dominant eigenvalue of the Hessian of ``loss_fn(model, *batch)`` in the alphas or weights.

    ``wrt="alphas"`` with the validation batch is RobustDARTS' collapse signal (the curvature of
    the validation loss in the architecture); ``wrt="weights"`` with the training batch is the
    top of the spectrum of H, the matrix the amended term multiplies by. Only exact
    Hessian-vector products are used: one forward and one ``create_graph`` backward, then one
    double backward per iteration, all on the same graph (so dropout masks are the same in
    every product). Weights, BatchNorm running statistics and the global RNG are left exactly
    as found. ``method``: ``"lanczos"`` (default) or ``"power"`` (which finds the eigenvalue of
    largest magnitude, so it requires ``which="magnitude"``). ``tol`` bounds the relative
    residual ``||A q - lambda q|| / |lambda|``; the eigenvalue error of a Ritz value is of the
    order of the residual squared over the spectral gap, so 1e-2 gives a value good to far
    better than 1% -- ample for a trend -- in fewer products than a tighter tolerance.
    """
    from darts_amend.hvp import hessian_matvec
    from darts_amend.model import preserve_state, split_parameters

    if wrt not in ("alphas", "weights"):
        raise ValueError(f"invalid wrt: {wrt!r} (expected 'alphas' or 'weights')")
    if method not in _METHODS:
        raise ValueError(f"invalid method: {method!r} (expected one of {_METHODS})")
    if which not in _WHICH:
        raise ValueError(f"invalid which: {which!r} (expected one of {_WHICH})")
    if method == "power" and which != "magnitude":
        raise ValueError("method='power' finds the eigenvalue of largest magnitude: "
                         "pass which='magnitude' or use method='lanczos'")
    _check(1, iterations, tol)
    alphas, weights = split_parameters(model)
    params = alphas if wrt == "alphas" else weights
    start = time.perf_counter()
    with (
        preserve_state(model),
        fixed_randomness(alphas[0].device),
        hessian_matvec(model, batch, wrt=wrt, loss_fn=loss_fn) as hvp,
    ):
        # the solvers work on flat vectors; the core's products on lists aligned with params
        def matvec(u: Tensor) -> Tensor:
            return flatten(hvp(unflatten(u, params)))

        v0 = _start_vector(sum(p.numel() for p in params), params[0].detach(), seed)
        if method == "lanczos":
            res = lanczos(matvec, v0, iterations=iterations, tol=tol, which=which)
        else:
            res = power_iteration(matvec, v0, iterations=iterations, tol=tol)
    seconds = time.perf_counter() - start
    if not res.converged:
        logger.info("dominant eigenvalue (%s) not converged after %d products: %.4g +- %.2g",
                    wrt, res.iterations, res.value, res.residual)
    return EigenResult(res.value, res.residual, res.iterations, res.converged, seconds)
