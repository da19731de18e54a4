"""One figure of a run's health, drawn from its ``metrics.jsonl``.

Four panels against epochs: curvature (dominant eigenvalues), alignment of each estimator's
second term with the reference, skip-connect share (with the smallest kept-op weight) and
edge entropy. Keys that a run did not record leave their panel with a note instead of an
error, so the figure works for any run, with or without diagnostics.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["read_metrics", "plot_run", "FIGURE_NAME"]

logger = logging.getLogger(__name__)

FIGURE_NAME = "diagnostics.png"
_ALIGN = re.compile(r"^align/(?P<est>.+)/(?P<metric>cos_g2|cos_grad)$")
_ENTROPY = re.compile(r"^collapse/entropy/(?P<kind>.+)$")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (one JSON object per line).

    Blank lines are ignored; a line that is not a JSON object (e.g. the torn last line of a
    run killed mid-write) is skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file: {path}")
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                logger.warning("%s:%d is not a JSON object; skipped", path, lineno)
                continue
            records.append(rec)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: list[dict[str, Any]], xs: list[float], key: str) -> tuple[list, list]:
    pts = [(x, _number(r.get(key))) for x, r in zip(xs, records, strict=True)]
    pts = [(x, y) for x, y in pts if y is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not recorded", ha="center", va="center",
            transform=ax.transAxes, color="0.4")


def plot_run(run_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """Draw ``run_dir/metrics.jsonl`` into ``run_dir/diagnostics.png`` (or ``path``); return it.

    The x axis is the record's ``epoch`` (its line number when absent). Early-stop and
    convergence epochs, when recorded, are marked by vertical lines.
    """
    # Agg canvas directly: no pyplot, no global backend switch, safe in threads and servers.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder: {run_dir}")
    records = read_metrics(run_dir / "metrics.jsonl")
    out = Path(path) if path is not None else run_dir / FIGURE_NAME
    xs = [float(_number(r.get("epoch")) if _number(r.get("epoch")) is not None else i)
          for i, r in enumerate(records)]
    keys = sorted({k for r in records for k in r})

    fig = Figure(figsize=(11, 7.5), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    (ax_eig, ax_align), (ax_skip, ax_ent) = axes

    # curvature: alphas on the left axis, weights (usually far larger) on a twin axis
    ax_eig.set_title("dominant Hessian eigenvalue")
    drawn = False
    for key, label, color, ax in (("eig/alphas", "val loss in alphas", "C0", ax_eig),
                                  ("eig/weights", "train loss in weights (H)", "C1", None)):
        x, y = _series(records, xs, key)
        if not x:
            continue
        if ax is None:
            ax = ax_eig.twinx()
            ax.set_ylabel(label, color=color)
        else:
            ax.set_ylabel(label, color=color)
        ax.plot(x, y, "o-", color=color, ms=3, label=label)
        drawn = True
    if not drawn:
        _empty(ax_eig, "eigenvalues")

    ax_align.set_title("alignment with the reference hypergradient")
    drawn = False
    align_keys = [k for k in keys if _ALIGN.match(k)]
    estimators = sorted({_ALIGN.match(k)["est"] for k in align_keys})
    for key in align_keys:
        m = _ALIGN.match(key)
        x, y = _series(records, xs, key)
        if x:
            style = "o-" if m["metric"] == "cos_g2" else "s--"
            term = "2nd term" if m["metric"] == "cos_g2" else "full"
            ax_align.plot(x, y, style, ms=3, color=f"C{estimators.index(m['est']) % 10}",
                          label=f"{m['est']} ({term})")
            drawn = True
    if drawn:
        ax_align.axhline(0.0, color="0.6", lw=0.8)
        ax_align.set_ylim(-1.05, 1.05)
        ax_align.set_ylabel("cosine")
        ax_align.legend(fontsize=7)
    else:
        _empty(ax_align, "alignment")

    ax_skip.set_title("collapse: skip-connect share, smallest kept-op weight")
    drawn = False
    for key, label in (("collapse/skip_share", "skip-connect share"),
                       ("collapse/kept_weight_min", "min kept-op weight")):
        x, y = _series(records, xs, key)
        if x:
            ax_skip.plot(x, y, "o-", ms=3, label=label)
            drawn = True
    if drawn:
        ax_skip.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax_skip.set_ylim(-0.02, 1.02)
        ax_skip.legend(fontsize=7)
    else:
        _empty(ax_skip, "skip share")

    ax_ent.set_title("mean edge entropy (1 = uniform, 0 = decided)")
    drawn = False
    kinds = [k for k in keys if _ENTROPY.match(k)]
    many = len(kinds) > 4  # per-cell spaces (S2: 20 cells): thin grey lines, no legend entries
    for key in kinds + ["collapse/entropy_mean"]:
        x, y = _series(records, xs, key)
        if x:
            if key.endswith("entropy_mean"):
                ax_ent.plot(x, y, "o-", ms=3, color="k" if many else "C2", label="all cells")
            elif many:
                ax_ent.plot(x, y, "-", lw=0.6, color="0.7")
            else:
                ax_ent.plot(x, y, "-", label=_ENTROPY.match(key)["kind"])
            drawn = True
    if drawn:  # autoscaled: early in a search the entropy moves in the 4th decimal
        ax_ent.legend(fontsize=7, ncol=2)
    else:
        _empty(ax_ent, "entropy")

    marks = (("diag/early_stop", "early stop", "C3"), ("collapse/converged", "converged", "C2"))
    for key, label, color in marks:
        first = next((x for x, r in zip(xs, records, strict=True) if r.get(key) is True), None)
        if first is not None:
            for ax in axes.flat:
                ax.axvline(first, color=color, lw=1, ls="--")
            axes[0, 0].annotate(label, (first, 1.0), xycoords=("data", "axes fraction"),
                                color=color, fontsize=7, va="top", rotation=90)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"search diagnostics: {run_dir.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    # debug, not info: the CLI prints "plot: PATH" itself, and logs at INFO by default
    logger.debug("wrote %s", out)
    return out
