"""Diagnostics that show whether a search is healthy: alignment, curvature, collapse, convergence.

For the search command (what to call, once per search epoch)::

    from darts_amend.diagnostics import epoch_diagnostics, plot_run

    history: list[dict] = []            # the metrics.jsonl records so far (re-read on resume)
    for epoch in range(epochs):
        ...                              # train weights and alphas for one epoch
        record = {"epoch": epoch, ...}   # the loop's own metrics
        record.update(epoch_diagnostics(
            model, train_batch, valid_batch, epoch=epoch, history=history,
            every=5,                          # eigenvalues + alignment every 5 epochs
            curvature=("alphas",),            # add "weights" for the top eigenvalue of H
            estimators={"first_order": {}, "amended": {"eta": eta}},  # None: no alignment
            reference="implicit_cg", reference_options={"iterations": 50},
            early_stop={} if args.early_stop else None,   # RobustDARTS-style rule
        ))
        history.append(record); write_jsonl(record)
        if record.get("diag/early_stop"):     # keep the genotype of record["diag/revert_epoch"]
            break
        if args.stop_when_converged and record.get("collapse/converged"):
            break
    plot_run(run_dir)                    # run_dir/diagnostics.png; also `darts-amend plot RUN_DIR`

``epoch_diagnostics`` returns flat, strictly JSON-serialisable keys (None for undefined values):
``collapse/skip_share``, ``collapse/entropy/<kind>``, ``collapse/entropy_mean``,
``collapse/kept_weight_min``, ``collapse/kept_weight_mean``, ``collapse/kept_above``,
``collapse/genotype`` (JSON string), ``collapse/converged``; on measured epochs ``eig/alphas``,
``eig/weights`` (+ ``_residual``, ``_seconds``), ``align/<estimator>/{cos_g2, rel_err_g2,
g2_norm_ratio, cos_grad, rel_err_grad, seconds}``, ``align/reference_seconds`` (and
``align/reference/{cg_stop, cg_iterations}`` with the ``implicit_cg`` reference); with early stop
``diag/early_stop``, ``diag/early_stop_ratio``, ``diag/revert_epoch``; always ``diag/seconds``.
``collapse_signals(model)`` alone gives the cheap ``collapse/*`` keys (no forward pass).
Batches are ``(inputs, targets)``; the model's weights, BatchNorm statistics and the global RNG
are left exactly as found, so turning diagnostics on does not change the search trajectory.

Building blocks: :func:`alignment`, :func:`dense_hypergradient`, :func:`dominant_eigenvalue`,
:func:`lanczos` / :func:`power_iteration` (any symmetric ``matvec`` closure),
:func:`edge_entropy`, :func:`skip_share`, :func:`kept_ops`, :func:`kept_weights`,
:func:`convergence_rule`, :func:`eigen_early_stop`, :func:`read_metrics`, :func:`plot_run`;
:func:`live_paths` / :func:`genotype_paths` (parametric ops on live input-to-output paths, a
disconnected flag) and :func:`nb201_canonical` (NB201 cells up to isomorphism).
See docs/diagnostics.md for what each signal means and what it costs.
"""
from __future__ import annotations

from .alignment import AlignmentReport, EstimatorAlignment, alignment, dense_hypergradient
from .collapse import (
                       EarlyStopDecision,
                       convergence_rule,
                       edge_entropy,
                       eigen_early_stop,
                       kept_ops,
                       kept_weights,
                       skip_share,
)
from .epoch import collapse_signals, epoch_diagnostics
from .paths import CellPaths, genotype_paths, live_paths, nb201_canonical
from .plots import FIGURE_NAME, plot_run, read_metrics
from .spectral import EigenResult, dominant_eigenvalue, lanczos, power_iteration

__all__ = [
    "AlignmentReport",
    "CellPaths",
    "EarlyStopDecision",
    "EigenResult",
    "EstimatorAlignment",
    "FIGURE_NAME",
    "alignment",
    "collapse_signals",
    "convergence_rule",
    "dense_hypergradient",
    "dominant_eigenvalue",
    "edge_entropy",
    "eigen_early_stop",
    "epoch_diagnostics",
    "genotype_paths",
    "kept_ops",
    "kept_weights",
    "lanczos",
    "live_paths",
    "nb201_canonical",
    "plot_run",
    "power_iteration",
    "read_metrics",
    "skip_share",
]
