"""PNG plots of a run folder: cells, alpha trajectories + skip share, diagnostics, curves."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["write_plots", "plot_alphas", "plot_curves"]

logger = logging.getLogger(__name__)

_MAX_KINDS = 4  # S2 has 20 cell kinds: show the first two and the last two


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _read(run_dir: Path) -> list[dict[str, Any]]:
    from darts_amend.diagnostics import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def plot_alphas(run_dir: Path, path: Path | None = None) -> Path:
    """``alphas.png``: per cell kind, each op's softmax weight averaged over the edges, against
    epochs; last panel: skip-connect share of the genotype and the smallest kept-op weight."""
    records = [r for r in _read(run_dir) if "alphas" in r]
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl has no alpha records")
    kinds = list(records[0]["alphas"])
    if len(kinds) > _MAX_KINDS:
        kinds = kinds[:2] + kinds[-2:]
    import json

    config = {}
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        config = json.loads(cfg_path.read_text()).get("config", {})
    op_names = _op_names(config.get("space"), len(records[0]["alphas"][kinds[0]][0]))
    epochs = [r["epoch"] for r in records]  # numbered from 1, as on the console
    fig, axes = _figure(1, len(kinds) + 1, (4.2 * (len(kinds) + 1), 3.8))
    for ax, kind in zip(axes[0], kinds, strict=False):
        for o, name in enumerate(op_names):
            ys = [sum(edge[o] for edge in r["alphas"][kind]) / len(r["alphas"][kind])
                  for r in records]
            ax.plot(epochs, ys, label=name, lw=2 if name == "skip_connect" else 1.2,
                    color=f"C{o % 10}")
        ax.axhline(1 / len(op_names), color="0.7", ls=":", lw=1)
        ax.set_title(f"{kind}: mean softmax weight per op")
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7, loc="best")
    ax = axes[0][-1]
    share = [r.get("collapse/skip_share") for r in records]
    kept = [r.get("collapse/kept_weight_min") for r in records]
    ax.plot(epochs, share, "o-", ms=3, label="skip-connect share of genotype", color="C3")
    if all(k is not None for k in kept):
        ax.plot(epochs, kept, "s-", ms=3, label="smallest kept-op weight", color="C0")
        ax.axhline(config.get("converge_threshold", 0.5), color="C0", ls=":", lw=1,
                   label="convergence threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_title("skip share and convergence")
    ax.legend(fontsize=7, loc="best")
    out = path or run_dir / "alphas.png"
    fig.savefig(out, dpi=110)
    return out


def _op_names(space: str | None, n_ops: int) -> list[str]:
    try:
        from darts_amend.supernet import get_space

        names = list(get_space(space or "darts").ops)
        if len(names) == n_ops:
            return names
    except Exception:  # an unknown / custom space: fall back to indices
        pass
    return [f"op{i}" for i in range(n_ops)]


def plot_curves(run_dir: Path, path: Path | None = None) -> Path:
    """``curves.png`` of a train run: losses and accuracies against epochs."""
    records = _read(run_dir)
    epochs = [r["epoch"] for r in records]
    fig, axes = _figure(1, 2, (9, 3.6))
    for key, style in (("train_loss", "-"), ("test_loss", "--")):
        axes[0][0].plot(epochs, [r.get(key, math.nan) for r in records], style, label=key)
    for key, style in (("train_acc", "-"), ("test_acc", "--"), ("test_acc_top5", ":")):
        axes[0][1].plot(epochs, [r.get(key, math.nan) for r in records], style, label=key)
    for ax, title in zip(axes[0], ("loss", "accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    out = path or run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    return out


def write_plots(run_dir: str | Path, genotype: Any, command: str) -> list[Path]:
    """All plots of a run; returns the files written. A plot that cannot be drawn is logged."""
    run_dir = Path(run_dir)
    out: list[Path] = []
    jobs: list[tuple[str, Any]] = []
    if command == "search":
        from darts_amend.diagnostics import plot_run

        jobs += [("alpha trajectories", lambda: [plot_alphas(run_dir)]),
                 ("diagnostics", lambda: [plot_run(run_dir)])]
    else:
        jobs.append(("training curves", lambda: [plot_curves(run_dir)]))
    if genotype is not None:
        def cells() -> list[Path]:
            from darts_amend.supernet import plot_genotype

            return [Path(p) for p in plot_genotype(genotype, run_dir / "genotype")
                    if str(p).endswith(".png")]
        jobs.append(("cell diagrams", cells))
    for what, job in jobs:
        try:
            out.extend(job())
        except Exception as err:  # a plot must never lose a finished run
            logger.warning("could not draw the %s: %s", what, err)
    return out
