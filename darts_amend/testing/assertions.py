"""``assert_hypergradient_close``: run an estimator on a toy problem, compare with the exact answer.

An *estimator* is anything called like the library's estimators,
``f(model, train_batch, valid_batch, **options)``, returning a
:class:`~darts_amend.estimators.Hypergradient`, a sequence of tensors aligned with
``model.arch_parameters()``, or one tensor (one alpha tensor, or all entries flattened); or
the name of a library estimator (``"implicit_cg"``). The assertion fails with a report naming
the problem, the differing alpha entries (estimated, exact, absolute and relative error), the
cosine and norm ratio to the exact hypergradient, and which term (g1 or g2) is off.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from darts_amend.estimators import get_estimator
from darts_amend.tensorlist import bits_equal

from .problems import BilevelProblem, make_problem

__all__ = ["Estimator", "assert_hypergradient_close"]

#: A library estimator name or a callable with the estimator signature.
Estimator = str | Callable[..., Any]

_MAX_ROWS = 12


def _estimator_name(estimator: Estimator) -> str:
    if isinstance(estimator, str):
        return repr(estimator)
    if isinstance(estimator, functools.partial):
        return f"partial({_estimator_name(estimator.func)})"
    return getattr(estimator, "__qualname__", None) or type(estimator).__name__


def _entry(i: int, index: tuple[int, ...]) -> str:
    return f"alphas[{i}]" + (f"[{', '.join(map(str, index))}]" if index else "")


def _unravel(k: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(k % size)
        k //= size
    return tuple(reversed(idx))


def _as_grads(result: Any, alphas: Sequence[Tensor], where: str) -> tuple[Tensor, ...]:
    """The estimator's output as a tuple aligned with the alphas (AssertionError if it is not)."""
    shapes = [tuple(a.shape) for a in alphas]
    grads = getattr(result, "grads", result)
    if isinstance(grads, Tensor):
        if len(alphas) == 1 and grads.shape == alphas[0].shape:
            grads = (grads,)
        elif grads.numel() == sum(a.numel() for a in alphas):
            flat, out, k = grads.reshape(-1), [], 0
            for a in alphas:
                out.append(flat[k : k + a.numel()].view_as(a))
                k += a.numel()
            grads = tuple(out)
    if not isinstance(grads, (tuple, list)) or not all(isinstance(g, Tensor) for g in grads):
        raise TypeError(
            f"{where}: the estimator returned {type(result).__name__}; expected a Hypergradient, "
            f"a sequence of tensors aligned with arch_parameters() (shapes {shapes}) or a tensor"
        )
    got = [tuple(g.shape) for g in grads]
    if got != shapes:
        raise AssertionError(
            f"{where}: the estimator returned tensors of shapes {got}, but arch_parameters() "
            f"has shapes {shapes}"
        )
    return tuple(g.detach() for g in grads)


def _flat(ts: Sequence[Tensor], like: Tensor) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(like) for t in ts])


def _cos_ratio(a: Tensor, b: Tensor) -> str:
    na, nb = float(a.norm()), float(b.norm())
    if nb == 0.0:
        return f"the exact value is zero, ||estimated|| = {na:.3e}"
    cos = float(a @ b) / (na * nb) if na > 0 else math.nan
    return f"cos(estimated, exact) = {cos:+.6f}, ||estimated|| / ||exact|| = {na / nb:.6f}"


def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> Tensor:
    """Elementwise ``|a - b| <= atol + rtol |b|`` (False for nan / inf in ``a``)."""
    return ((a - b).abs() <= atol + rtol * b.abs()) & torch.isfinite(a)


def _snapshot(problem: BilevelProblem) -> dict[str, Tensor]:
    model = problem.model
    state = {f"weight {n!r}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer {n!r}": b.detach().clone() for n, b in model.named_buffers()})
    state.update({f"alphas[{i}]": a.detach().clone() for i, a in enumerate(problem.alphas)})
    return state


def _changed(before: dict[str, Tensor], problem: BilevelProblem) -> list[str]:
    after = _snapshot(problem)
    return [k for k in before if k not in after or not bits_equal(before[k], after[k])]


def assert_hypergradient_close(
    estimator: Estimator,
    problem: BilevelProblem | str,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    options: Mapping[str, Any] | None = None,
    check_state: bool = True,
) -> tuple[Tensor, ...]:
    """Run ``estimator`` on ``problem`` and check it against the exact hypergradient.

    ``problem``: a :class:`BilevelProblem` or a name from :data:`PROBLEMS` (built fresh).
    Entry-wise test ``|estimated - exact| <= atol + rtol * |exact|``, in the problem's dtype
    (float64 by default: an exact estimator agrees to ~1e-12). ``options`` are passed to the
    estimator as keywords (``loss_fn`` too when the problem has one). With ``check_state`` the
    weights, alphas and buffers must be bit-exactly as before the call (the estimator
    contract); ``.grad`` is not checked. Returns the estimated gradients (a tuple aligned with
    the alphas); raises AssertionError with a report otherwise.
    """
    prob = make_problem(problem) if isinstance(problem, str) else problem
    if not isinstance(prob, BilevelProblem):
        raise TypeError(f"problem must be a BilevelProblem or a name, got {type(prob).__name__}")
    call = get_estimator(estimator) if isinstance(estimator, str) else estimator
    if not callable(call):
        raise TypeError(f"estimator must be a name or a callable, got {type(estimator).__name__}")
    name = _estimator_name(estimator)
    where = f"estimator {name} on problem {prob.name!r}"
    kwargs = dict(options or {})
    if prob.loss_fn is not None:
        kwargs.setdefault("loss_fn", prob.loss_fn)
    before = _snapshot(prob) if check_state else {}
    result = call(prob.model, prob.train_batch, prob.valid_batch, **kwargs)
    alphas = prob.alphas
    grads = _as_grads(result, alphas, where)
    like = prob.exact.grads[0]
    est, exact = _flat(grads, like), _flat(prob.exact.grads, like)
    ok = _close(est, exact, rtol, atol)
    changed = _changed(before, prob) if check_state else []
    if bool(ok.all()) and not changed:
        return grads
    lines = [f"{where} ({prob.description})"]
    if not bool(ok.all()):
        lines += _mismatch_report(est, exact, ok, alphas, rtol, atol)
        lines += _terms_report(result, prob, rtol, atol, like)
    if changed:
        lines.append(
            "the estimator did not leave the model as it found it; changed: " + ", ".join(changed)
            + " (estimators must restore weights, alphas and buffers, also on error)"
        )
    raise AssertionError("\n".join(lines))


def _mismatch_report(
    est: Tensor, exact: Tensor, ok: Tensor, alphas: Sequence[Tensor], rtol: float, atol: float
) -> list[str]:
    bad = [int(j) for j in torch.nonzero(~ok).reshape(-1)]
    owner = [(i, k) for i, a in enumerate(alphas) for k in range(a.numel())]
    err = (est - exact).abs()
    lines = [
        f"{len(bad)} of {exact.numel()} hypergradient entries differ from the exact "
        f"g = g1 - B H^-1 v (rtol={rtol:g}, atol={atol:g}):",
        f"  {'entry':<16}{'estimated':>18}{'exact':>18}{'abs error':>12}{'rel error':>12}",
    ]
    for j in bad[:_MAX_ROWS]:
        ref = float(exact[j].abs())
        rel = float(err[j]) / ref if ref > 0 else math.inf
        i, k = owner[j]
        lines.append(
            f"  {_entry(i, _unravel(k, alphas[i].shape)):<16}"
            f"{float(est[j]):>+18.10e}{float(exact[j]):>+18.10e}"
            f"{float(err[j]):>12.3e}{rel:>12.3e}"
        )
    if len(bad) > _MAX_ROWS:
        lines.append(f"  ... and {len(bad) - _MAX_ROWS} more")
    lines.append(f"  {_cos_ratio(est, exact)}; max abs error {float(err.max()):.3e}")
    return lines


def _terms_report(
    result: Any, prob: BilevelProblem, rtol: float, atol: float, like: Tensor
) -> list[str]:
    """Which term is off, when the estimator returned its terms ``g1`` / ``g2``."""
    terms = getattr(result, "terms", None)
    if not isinstance(terms, Mapping) or "g1" not in terms:
        return []
    try:
        g1 = _flat(terms["g1"], like)
    except (TypeError, RuntimeError):
        return []
    exact_g1, exact_g2 = _flat(prob.exact.terms["g1"], like), _flat(prob.exact.terms["g2"], like)
    if g1.shape != exact_g1.shape:
        return []
    if not bool(_close(g1, exact_g1, rtol, atol).all()):
        return [f"  the first term g1 = grad_alpha L_val differs too: max abs error "
                f"{float((g1 - exact_g1).abs().max()):.3e} (validation loss or batch handling?)"]
    if "g2" not in terms:
        return ["  g1 matches; the estimator has no second term (first-order)"]
    g2 = _flat(terms["g2"], like)
    return [f"  g1 matches; the error is in the second term g2: {_cos_ratio(g2, exact_g2)}"]
