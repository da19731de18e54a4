"""How well each hypergradient estimator agrees with a reference, and what it costs.

For one model and one pair of batches, every requested estimator is run once and compared
with a reference hypergradient -- by default ``implicit_cg`` with many iterations, or, for toy
models, the dense implicit-function-theorem value ``g = g1 - B H^-1 v`` (``reference="dense"``).
Both the second term alone (``g2``: the amending / second-order / implicit term) and the full
gradient are compared, by cosine and by relative error.

Keep in mind (docs/math.md): the amended term ``g2' = -eta B H v`` is *not* guaranteed to make
a non-negative angle with the exact ``g2 = -B H^-1 v``; a negative ``cos_g2`` is a real
measurement, not a bug.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from darts_amend._types import LossFn
from darts_amend.tensorlist import flatten, list_cosine

from ._random import fixed_randomness

__all__ = ["EstimatorAlignment", "AlignmentReport", "alignment", "dense_hypergradient"]

DEFAULT_ESTIMATORS = ("first_order", "amended")
DEFAULT_REFERENCE_OPTIONS: dict[str, dict[str, Any]] = {
    "implicit_cg": {"iterations": 50},
    "implicit_neumann": {"terms": 50},
}


@dataclass(frozen=True)
class EstimatorAlignment:
    """One estimator against the reference (all floats; nan where undefined).

    ``cos_g2`` / ``rel_err_g2``: cosine and ``||g2 - g2_ref|| / ||g2_ref||`` of the second term
    (an estimator without one, e.g. first-order, counts as ``g2 = 0``: cosine nan, error 1);
    ``g2_norm_ratio``: ``||g2|| / ||g2_ref||``; ``cos_grad`` / ``rel_err_grad``: the same for
    the full gradient; ``seconds``: wall-clock time of the estimator call.
    """

    cos_g2: float
    rel_err_g2: float
    g2_norm_ratio: float
    cos_grad: float
    rel_err_grad: float
    seconds: float


@dataclass(frozen=True)
class AlignmentReport:
    """Alignment of several estimators with one reference on one pair of batches."""

    reference: str
    reference_seconds: float
    estimators: dict[str, EstimatorAlignment]
    #: the reference's ``Hypergradient.info`` (``implicit_cg``: ``cg_iterations``, ``cg_stop``)
    reference_info: dict[str, Any] = field(default_factory=dict)

    def flat(self, prefix: str = "align") -> dict[str, Any]:
        """Flat JSON-ready keys ``{prefix}/{estimator}/{field}`` (nan / inf become None) and
        ``{prefix}/reference/{key}`` for the reference's solver report."""
        out: dict[str, Any] = {f"{prefix}/reference_seconds": self.reference_seconds}
        for key, value in self.reference_info.items():
            out[f"{prefix}/reference/{key}"] = value
        for name, res in self.estimators.items():
            for what, value in vars(res).items():
                out[f"{prefix}/{name}/{what}"] = value if math.isfinite(value) else None
        return out


def _rel_err(a: Tensor, ref: Tensor) -> float:
    nref = float(ref.norm())
    diff = float((a - ref).norm())
    if nref == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / nref


def _ratio(a: Tensor, ref: Tensor) -> float:
    nref = float(ref.norm())
    return float(a.norm()) / nref if nref > 0 else (0.0 if float(a.norm()) == 0 else math.inf)


def dense_hypergradient(
    model: nn.Module,
    train_batch: tuple[Tensor, Tensor],
    valid_batch: tuple[Tensor, Tensor],
    *,
    loss_fn: LossFn | None = None,
    max_weights: int = 4096,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The exact implicit hypergradient, ``(g1, g2)`` with ``g2 = -B H^-1 v``, for toy models.

    The terms of :func:`darts_amend.testing.exact_hypergradient` (one implementation): H is
    built densely, one double backward per weight, so this refuses models with more than
    ``max_weights`` weights; it must be non-singular. Both results are tuples aligned with
    ``model.arch_parameters()``.
    """
    from darts_amend.testing.dense import exact_hypergradient

    exact = exact_hypergradient(
        model, train_batch, valid_batch, loss_fn=loss_fn, max_weights=max_weights
    )
    return exact.terms["g1"], exact.terms["g2"]


def _normalise_estimators(
    estimators: Sequence[str] | Mapping[str, Mapping[str, Any] | None],
) -> dict[str, dict[str, Any]]:
    if isinstance(estimators, str):
        raise TypeError("estimators must be a sequence of names or a mapping name -> options, "
                        f"not the string {estimators!r}")
    if isinstance(estimators, Mapping):
        pairs = {name: dict(opts or {}) for name, opts in estimators.items()}
    else:
        pairs = {name: {} for name in estimators}
    if not pairs:
        raise ValueError("estimators is empty")
    return pairs


def alignment(
    model: nn.Module,
    train_batch: tuple[Tensor, Tensor],
    valid_batch: tuple[Tensor, Tensor],
    *,
    estimators: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = DEFAULT_ESTIMATORS,
    reference: str = "implicit_cg",
    reference_options: Mapping[str, Any] | None = None,
    loss_fn: LossFn | None = None,
) -> AlignmentReport:
    """Compare estimators with a reference hypergradient on one pair of batches.

    ``estimators``: names (``("first_order", "amended")``) or a mapping from name to options,
    e.g. ``{"amended": {"eta": 0.1}, "unrolled": {"xi": 0.025}}`` (``unrolled`` needs ``xi``).
    ``reference``: any estimator name (default ``"implicit_cg"`` with 50 CG iterations) or
    ``"dense"`` (exact, toy models only: see :func:`dense_hypergradient`, whose
    ``max_weights`` can be passed in ``reference_options``). The model's weights, BatchNorm
    statistics and the global RNG are left as found; every call sees the same dropout masks.
    """
    from darts_amend.estimators import get_estimator
    from darts_amend.model import preserve_state, split_parameters

    plan = _normalise_estimators(estimators)
    calls = {name: get_estimator(name) for name in plan}  # ValueError naming the valid names
    ref_opts = dict(DEFAULT_REFERENCE_OPTIONS.get(reference, {}))
    ref_opts.update(reference_options or {})
    ref_call = None if reference == "dense" else get_estimator(reference)
    alphas, _ = split_parameters(model)
    like = alphas[0].detach()
    with preserve_state(model), fixed_randomness(like.device) as reset:
        reset()
        start = time.perf_counter()
        ref_info: dict[str, Any] = {}
        if ref_call is None:
            g1, g2 = dense_hypergradient(model, train_batch, valid_batch, loss_fn=loss_fn,
                                         **ref_opts)
            ref_g2, ref_grad = flatten(g2), flatten(g1) + flatten(g2)
        else:
            ref = ref_call(model, train_batch, valid_batch, loss_fn=loss_fn, **ref_opts)
            ref_g2 = flatten(ref.terms.get("g2", tuple(torch.zeros_like(a) for a in alphas)))
            ref_grad = flatten(ref.grads)
            ref_info = dict(ref.info)
        ref_seconds = time.perf_counter() - start
        results = {}
        for name, opts in plan.items():
            reset()
            start = time.perf_counter()
            hg = calls[name](model, train_batch, valid_batch, loss_fn=loss_fn, **opts)
            seconds = time.perf_counter() - start
            g2 = hg.terms.get("g2")
            g2 = flatten(g2).detach() if g2 is not None else torch.zeros_like(ref_g2)
            grad = flatten(hg.grads).detach()
            results[name] = EstimatorAlignment(
                cos_g2=list_cosine([g2], [ref_g2]), rel_err_g2=_rel_err(g2, ref_g2),
                g2_norm_ratio=_ratio(g2, ref_g2), cos_grad=list_cosine([grad], [ref_grad]),
                rel_err_grad=_rel_err(grad, ref_grad), seconds=seconds)
    return AlignmentReport(reference, ref_seconds, results, ref_info)
