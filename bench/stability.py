"""Stability of the search against the amending coefficient eta, at CPU scale (a benchmark).

The paper's central claim (Sec. 4.1.1, Fig. 2): eta = 0 (first-order DARTS) drifts to
skip-connect cells, eta = 0.1 converges to a sensible cell, eta = 1 prefers pooling. This script
runs ``darts-amend search`` on the bundled digits with the real S1 (or darts) cell for each eta,
in parallel processes, until the paper's convergence rule holds for ``--stable`` epochs (every
kept op weighs >= 0.5 and the genotype is unchanged) or the time cap is reached; then re-trains
every final genotype with ``darts-amend train`` on digits and reports, per eta: alpha steps,
skip-connect share and smallest kept-op weight, whether alphas converged, the genotype's op
counts and the re-trained test accuracy. It writes one plot (skip share and smallest kept-op
weight against alpha steps) and prints a markdown table.

A DARTS CIFAR-10 search makes ~20k (50 epochs) to ~200k (500 epochs) alpha steps; a CPU run
makes a few hundred to a few thousand, so the alpha learning rate is raised (``--arch_lr``,
default 10x the paper's) and the conclusion is stated for the steps actually made.

    python bench/stability.py --minutes 45 --out runs/stability
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path


def _search_cmd(args: argparse.Namespace, eta: float, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "darts_amend.cli", "search", "--dataset", "digits",
           "--space", args.space, "--layers", str(args.layers),
           "--init_channels", str(args.channels), "--batch_size", str(args.batch_size),
           "--epochs", str(args.max_epochs), "--learning_rate", str(args.lr),
           "--learning_rate_min", str(args.lr),  # constant: the run length is not known
           "--arch_learning_rate", str(args.arch_lr), "--until-converged", str(args.stable),
           "--time_limit", str(args.minutes * 60), "--threads", "1", "--seed", str(args.seed),
           "--no-progress", "-q", "--output", str(out)]
    if eta == 0.0:  # eta = 0 is first-order DARTS; run it as such (the same gradient, cheaper)
        cmd += ["--estimator", "first_order"]
    else:
        cmd += ["--estimator", "amended", "--eta", str(eta)]
    return cmd


def _train_cmd(args: argparse.Namespace, search_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "darts_amend.cli", "train", "--genotype", str(search_dir),
            "--preset", "tiny", "--epochs", str(args.train_epochs), "--threads", "1",
            "--seed", str(args.seed), "--no-progress", "-q", "--output", str(out)]


def _run_all(cmds: list[list[str]], logs: list[Path]) -> list[int]:
    procs = []
    for cmd, log in zip(cmds, logs, strict=True):
        fh = open(log, "w")
        procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"}), fh))
    codes = []
    for p, fh in procs:
        codes.append(p.wait())
        fh.close()
    return codes


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _plot(results: dict[float, list[dict]], path: Path, threshold: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax_skip, ax_kept = fig.subplots(1, 2)
    for i, (eta, rows) in enumerate(sorted(results.items())):
        steps = [r["alpha_steps"] for r in rows]
        ax_skip.plot(steps, [r["collapse/skip_share"] for r in rows], "-", color=f"C{i}",
                     label=f"eta = {eta:g}")
        ax_kept.plot(steps, [r["collapse/kept_weight_min"] for r in rows], "-", color=f"C{i}",
                     label=f"eta = {eta:g} (min)")
        ax_kept.plot(steps, [r["collapse/kept_weight_mean"] for r in rows], ":", color=f"C{i}",
                     label=f"eta = {eta:g} (mean)")
    ax_kept.axhline(threshold, color="0.5", ls="--", lw=1, label="convergence threshold")
    ax_skip.set(title="skip-connect share of the genotype", xlabel="alpha steps", ylim=(-0.02, 1))
    ax_kept.set(title="softmax weight of the kept ops", xlabel="alpha steps", ylim=(0, 1))
    ax_skip.legend(fontsize=8)
    ax_kept.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    p.add_argument("--space", default="s1", choices=("s1", "darts"))
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.025, help="weight learning rate (constant)")
    p.add_argument("--arch_lr", type=float, default=3e-3, help="alpha learning rate (Adam)")
    p.add_argument("--stable", type=int, default=3, help="epochs the convergence rule must hold")
    p.add_argument("--max_epochs", type=int, default=10_000)
    p.add_argument("--minutes", type=float, default=45.0, help="time cap of each search")
    p.add_argument("--train_epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--out", default="runs/stability")
    p.add_argument("--plot", default="bench/stability.png")
    p.add_argument("--report_only", action="store_true",
                   help="only rebuild the table and plot from the run folders in --out")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    search_dirs = {eta: out / f"search-eta{eta:g}" for eta in args.etas}
    train_dirs = {eta: out / f"train-eta{eta:g}" for eta in args.etas}
    if not args.report_only:
        codes = _run_all([_search_cmd(args, eta, d) for eta, d in search_dirs.items()],
                         [out / f"search-eta{eta:g}.log" for eta in args.etas])
        if any(codes):
            print(f"search failed: exit codes {codes}; see {out}/*.log", file=sys.stderr)
            return 1
        codes = _run_all([_train_cmd(args, search_dirs[e], d) for e, d in train_dirs.items()],
                         [out / f"train-eta{eta:g}.log" for eta in args.etas])
        if any(codes):
            print(f"re-training failed: exit codes {codes}; see {out}/*.log", file=sys.stderr)
            return 1

    results = {eta: _rows(d / "metrics.jsonl") for eta, d in search_dirs.items()}
    threshold = 0.5
    _plot(results, Path(args.plot), threshold)
    minutes = {eta: sum(r["epoch_seconds"] for r in rows) / 60 for eta, rows in results.items()}
    common = min(rows[-1]["alpha_steps"] for rows in results.values())
    lines = [
        f"Command: `python bench/stability.py --minutes {args.minutes:g} --space {args.space} "
        f"--layers {args.layers} --channels {args.channels} --batch_size {args.batch_size} "
        f"--arch_lr {args.arch_lr:g}` (the searches run in parallel, 1 thread each; search "
        f"minutes per eta: " + ", ".join(f"{e:g}: {m:.0f}" for e, m in minutes.items()) + ").",
        "",
        f"At the same number of alpha steps ({common}, the fewest any run made):",
        "",
        "| eta | skip share | kept-op weight min / mean | mean edge entropy (1 = uniform) |",
        "|---|---|---|---|",
    ]
    for eta in args.etas:
        r = next(x for x in results[eta] if x["alpha_steps"] >= common)
        lines.append(f"| {eta:g} | {r['collapse/skip_share']:.2f} | "
                     f"{r['collapse/kept_weight_min']:.3f} / {r['collapse/kept_weight_mean']:.3f}"
                     f" | {r['collapse/entropy_mean']:.3f} |")
    lines += [
        "",
        "At the end of each run:",
        "",
        "| eta | epochs | alpha steps | skip share | kept-op weight min / mean | converged "
        "(>= 0.5, stable) | genotype ops | re-trained test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for eta in args.etas:
        rows = results[eta]
        last = rows[-1]
        summary = json.loads((search_dirs[eta] / "summary.json").read_text())
        genotype = json.loads((search_dirs[eta] / "genotype.json").read_text())
        ops = Counter(op for kind in ("normal", "reduce") for op, _ in genotype.get(kind, []))
        test = _rows(train_dirs[eta] / "metrics.jsonl")[-1]["test_acc"]
        lines.append(
            f"| {eta:g} | {len(rows)} | {last['alpha_steps']} | {last['collapse/skip_share']:.2f}"
            f" | {last['collapse/kept_weight_min']:.3f} / {last['collapse/kept_weight_mean']:.3f}"
            f" | {'yes' if summary['stop_reason'] == 'converged' else 'no'} | "
            + ", ".join(f"{op} x{n}" for op, n in ops.most_common()) + f" | {test:.4f} |")
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
