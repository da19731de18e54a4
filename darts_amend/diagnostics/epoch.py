"""Per-epoch diagnostics for a search loop: one call, flat JSON-ready keys for metrics.jsonl."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from darts_amend._types import LossFn

from .alignment import DEFAULT_ESTIMATORS, alignment
from .collapse import (
    EarlyStopDecision,
    convergence_rule,
    edge_entropy,
    eigen_early_stop,
    kept_ops,
    kept_weights,
    skip_share,
)
from .spectral import dominant_eigenvalue

__all__ = ["collapse_signals", "epoch_diagnostics"]

logger = logging.getLogger(__name__)

_CURVATURE = ("alphas", "weights")


@torch.no_grad()
def collapse_signals(model: nn.Module, *, threshold: float = 0.5) -> dict[str, Any]:
    """Cheap collapse / convergence signals of a supernet's current alphas (no forward pass).

    Protocol (met by :class:`darts_amend.supernet.SearchNetwork`): ``model.edge_weights()``
    (cell kind -> softmax over ops, edges x ops) and ``model.op_names``; optionally
    ``model.kept_op_weights()`` (cell kind -> weights of the kept ops under the space's genotype
    rule) and ``model.genotype()``. Without ``kept_op_weights`` every edge keeps its argmax op
    (``none`` excluded), the fixed-edge rule. Keys:

    - ``collapse/skip_share``: fraction of kept ops that are ``skip_connect``;
    - ``collapse/entropy/<kind>`` and ``collapse/entropy_mean``: mean per-edge entropy,
      normalised by ``log(#ops)`` (1 = uniform, 0 = decided);
    - ``collapse/kept_weight_min`` / ``collapse/kept_weight_mean``: softmax weight of the kept ops;
    - ``collapse/kept_above``: every kept op has weight ``>= threshold`` (first half of the
      paper's convergence rule);
    - ``collapse/genotype``: the genotype as a JSON string (when the model has ``genotype()``).
    """
    inner = getattr(model, "module", model) if not hasattr(model, "edge_weights") else model
    if not hasattr(inner, "edge_weights") or not hasattr(inner, "op_names"):
        raise TypeError(f"{type(model).__name__} has no edge_weights() / op_names: collapse "
                        "signals need a darts_amend.supernet search network (or the same protocol)")
    if not 0 < threshold <= 1:
        raise ValueError(f"invalid threshold: {threshold}")
    op_names = list(inner.op_names)
    weights = {k: w.detach().to(torch.float64) for k, w in inner.edge_weights().items()}
    if not weights:
        raise ValueError("edge_weights() returned no cells")
    out: dict[str, Any] = {}
    entropies = []
    for kind, w in weights.items():
        h = edge_entropy(w)
        entropies.append(h)
        out[f"collapse/entropy/{kind}"] = float(h.mean())
    out["collapse/entropy_mean"] = float(torch.cat(entropies).mean())
    genotype = inner.genotype() if hasattr(inner, "genotype") else None
    kept = None
    if hasattr(inner, "kept_op_weights"):
        kept_w = torch.tensor([x for ws in inner.kept_op_weights().values() for x in ws],
                              dtype=torch.float64)
    else:
        kept = {kind: kept_ops(w, op_names) for kind, w in weights.items()}
        kept_w = torch.cat([kept_weights(weights[k], kept[k]) for k in weights])
    if genotype is not None:
        out["collapse/skip_share"] = float(genotype.skip_share())
    else:
        if kept is None:
            kept = {kind: kept_ops(w, op_names) for kind, w in weights.items()}
        names = [op_names[o] for ks in kept.values() for _, o in ks]
        out["collapse/skip_share"] = skip_share(names)
    if kept_w.numel() == 0:
        raise ValueError("the supernet keeps no operation")
    out["collapse/kept_weight_min"] = float(kept_w.min())
    out["collapse/kept_weight_mean"] = float(kept_w.mean())
    out["collapse/kept_above"] = bool((kept_w >= threshold).all())
    if genotype is not None:
        out["collapse/genotype"] = genotype.to_json()
    return out


def _eigen_history(history: Sequence[Mapping[str, Any]], epoch: int,
                   current: float | None) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for i, rec in enumerate(history):
        v = rec.get("eig/alphas")
        e = int(rec.get("epoch", i))
        # records of this epoch or later (a resumed run replaying its log) are not history
        if e < epoch and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and math.isfinite(v):
            epochs.append(e)
            values.append(float(v))
    if current is not None:
        epochs.append(epoch)
        values.append(current)
    return epochs, values


def epoch_diagnostics(
    model: nn.Module,
    train_batch: tuple[Tensor, Tensor],
    valid_batch: tuple[Tensor, Tensor],
    *,
    epoch: int,
    history: Sequence[Mapping[str, Any]] = (),
    every: int = 1,
    curvature: Sequence[str] = ("alphas",),
    eigen_iterations: int = 20,
    estimators: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None = DEFAULT_ESTIMATORS,
    reference: str = "implicit_cg",
    reference_options: Mapping[str, Any] | None = None,
    converge_threshold: float = 0.5,
    stable_for: int = 1,
    early_stop: Mapping[str, Any] | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """All diagnostics of one search epoch, as flat JSON-serialisable keys for metrics.jsonl.

    Call once at the end of each search epoch with one training and one validation batch and
    the records already written (``history``, oldest first; only their ``epoch``,
    ``eig/alphas`` and ``collapse/genotype`` keys are read, so resuming from metrics.jsonl
    reproduces every decision). Every epoch: :func:`collapse_signals` (when the model has
    ``edge_weights``) and ``collapse/converged`` -- the paper's rule: every kept op
    ``>= converge_threshold`` and the genotype unchanged for ``stable_for`` epochs. Every
    ``every`` epochs (``epoch % every == 0``): the dominant Hessian eigenvalue in each of
    ``curvature`` (``"alphas"``: validation loss, ``"weights"``: training loss; ``()`` for none)
    as ``eig/<name>`` (+ ``_residual``, ``_seconds``), and the alignment of ``estimators``
    (None for none) with ``reference`` as ``align/<estimator>/<field>``. With ``early_stop``
    (a dict of :func:`eigen_early_stop` options, ``{}`` for its defaults; needs ``"alphas"`` in
    ``curvature``): ``diag/early_stop`` (bool), ``diag/early_stop_ratio`` and
    ``diag/revert_epoch`` (whose ``collapse/genotype`` to keep). ``diag/seconds``: total time.
    """
    if every < 1:
        raise ValueError(f"invalid every: {every}")
    if isinstance(curvature, str):
        curvature = (curvature,)
    bad = [c for c in curvature if c not in _CURVATURE]
    if bad:
        raise ValueError(f"invalid curvature {bad}: expected a subset of {_CURVATURE}")
    if early_stop is not None and "alphas" not in curvature:
        raise ValueError("early_stop watches the alpha eigenvalue: add 'alphas' to curvature")
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if hasattr(model, "edge_weights") or hasattr(getattr(model, "module", None), "edge_weights"):
        out.update(collapse_signals(getattr(model, "module", model), threshold=converge_threshold))
        if "collapse/genotype" in out:
            genotypes = [rec.get("collapse/genotype") for rec in history]
            genotypes.append(out["collapse/genotype"])
            out["collapse/converged"] = convergence_rule(
                [out["collapse/kept_weight_min"]], genotypes, threshold=converge_threshold,
                stable_for=stable_for)
    measure = epoch % every == 0
    eig_alphas = None
    if measure:
        for wrt in curvature:
            batch = valid_batch if wrt == "alphas" else train_batch
            res = dominant_eigenvalue(model, batch, wrt=wrt, loss_fn=loss_fn,
                                      iterations=eigen_iterations)
            out[f"eig/{wrt}"] = res.value
            out[f"eig/{wrt}_residual"] = res.residual
            out[f"eig/{wrt}_seconds"] = res.seconds
            if wrt == "alphas":
                eig_alphas = res.value
        if estimators:
            report = alignment(model, train_batch, valid_batch, estimators=estimators,
                               reference=reference, reference_options=reference_options,
                               loss_fn=loss_fn)
            out.update(report.flat())
    if early_stop is not None:
        # decide only on a fresh measurement, so a stop is reported once, at the epoch it fires
        epochs, values = _eigen_history(history, epoch, eig_alphas)
        decision = (eigen_early_stop(epochs, values, **dict(early_stop)) if eig_alphas is not None
                    else EarlyStopDecision(False, math.nan, None))
        out["diag/early_stop"] = decision.stop
        out["diag/early_stop_ratio"] = decision.ratio if math.isfinite(decision.ratio) else None
        out["diag/revert_epoch"] = decision.revert_epoch
        if decision.stop:
            logger.warning("early stop at epoch %d: alpha-Hessian eigenvalue grew %.2fx; "
                           "keep the genotype of epoch %d", epoch, decision.ratio,
                           decision.revert_epoch)
    out["diag/seconds"] = time.perf_counter() - start
    json.dumps(out, allow_nan=False)  # contract: strictly JSON-serialisable
    return out
