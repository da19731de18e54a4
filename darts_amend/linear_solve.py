"""Linear solvers on tensor lists: ``(matvec, b) -> x`` with ``A x ~ b``, ``A`` given only as a
product ``matvec(u) = A u`` (for the hypergradient: A = H, b = v, so x ~ H^-1 v).

Damping is not a solver option but a different matrix: :func:`make_ridge_matvec` turns
``u -> A u`` into ``u -> (A + damping I) u`` (torchopt's habit).
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch

from ._types import Matvec, TensorList
from .tensorlist import list_dot

__all__ = ["CGInfo", "make_ridge_matvec", "solve_cg", "solve_neumann"]

logger = logging.getLogger(__name__)


def make_ridge_matvec(matvec: Matvec, damping: float) -> Matvec:
    """``u -> (A + damping I) u`` (``matvec`` itself when ``damping`` is 0)."""
    if damping == 0.0:
        return matvec
    return lambda u: [h + damping * t for h, t in zip(matvec(u), u, strict=True)]


class CGInfo(NamedTuple):
    """How :func:`solve_cg` ended.

    ``iterations``: updates of x made (0: x = 0); ``stop``: ``"tol"`` (residual small enough),
    ``"iterations"`` (the budget ran out) or ``"curvature"`` (a direction with ``<p, A p> <= 0``
    or not finite: A is not positive-definite there, x is the iterate before it);
    ``curvature``: that ``<p, A p>`` (nan unless ``stop == "curvature"``).
    """

    iterations: int
    stop: str
    curvature: float = math.nan


def solve_cg(
    matvec: Matvec,
    b: TensorList,
    iterations: int,
    *,
    tol: float = 1e-12,
    return_info: bool = False,
) -> TensorList | tuple[TensorList, CGInfo]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` (x0 = 0) by
    conjugate gradient.

    Stops after ``iterations`` products, when the residual norm falls below ``tol * ||b||``, or
    at a direction of non-positive curvature (``A`` not positive-definite there; logged). With
    ``return_info=True`` returns ``(x, CGInfo)``, which says which of the three happened.
    """
    x = [torch.zeros_like(t) for t in b]
    res = [t.clone() for t in b]  # r0 = b - A x0 = b
    p = [t.clone() for t in b]
    rs = float(list_dot(res, res))
    stop = (tol**2) * rs
    info = CGInfo(iterations, "iterations")
    for k in range(iterations):
        if rs <= stop or rs == 0.0:
            info = CGInfo(k, "tol")
            break
        ap = matvec(p)
        pap = float(list_dot(p, ap))
        if not (pap > 0.0) or not math.isfinite(pap):
            logger.debug(
                "conjugate_gradient: curvature %.3g <= 0 at iteration %d; stopping", pap, k
            )
            info = CGInfo(k, "curvature", pap)
            break
        step = rs / pap  # a_k = <r, r> / <p, A p>
        x = [xi + step * pi for xi, pi in zip(x, p, strict=True)]
        res = [ri - step * api for ri, api in zip(res, ap, strict=True)]
        rs_new = float(list_dot(res, res))
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(res, p, strict=True)]  # b_k = rs'/rs
        rs = rs_new
    else:
        if iterations > 0 and (rs <= stop or rs == 0.0):
            info = CGInfo(iterations, "tol")
    return (x, info) if return_info else x


def solve_neumann(matvec: Matvec, b: TensorList, terms: int, gamma: float) -> TensorList:
    """``A^-1 b ~ gamma * sum_{j<terms} (I - gamma A)^j b`` (``terms - 1`` products; converges
    when ``0 < gamma < 2 / lambda_max(A)`` and A is positive definite)."""
    p = [t.clone() for t in b]
    acc = [t.clone() for t in b]
    for _ in range(terms - 1):
        ap = matvec(p)
        p = [pi - gamma * api for pi, api in zip(p, ap, strict=True)]  # p <- (I - gamma A) p
        acc = [ai + pi for ai, pi in zip(acc, p, strict=True)]
    return [gamma * a for a in acc]
