"""Cost of each search diagnostic relative to one amended architect step.

Builds a small reference supernet (darts_amend.supernet, ``darts`` space by default), times
``AmendedArchitect(estimator="amended").step`` (exact products), then each diagnostic of
darts_amend.diagnostics on the same batches, and prints a markdown table: median seconds and
the ratio to one architect step.

    python bench/diagnostics_cost.py               # darts space, C=8, 5 cells, 16x16, batch 16
    python bench/diagnostics_cost.py --space s1 --C 16 --batch 32 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from darts_amend import AmendedArchitect
from darts_amend.diagnostics import (
    alignment,
    collapse_signals,
    dominant_eigenvalue,
    epoch_diagnostics,
    plot_run,
)
from darts_amend.supernet import build_search_network


def _median_time(fn, reps: int, warmup: int = 1) -> tuple[tuple[float, float], object]:
    """(median wall seconds, median process-CPU seconds), last result."""
    out, wall, cpu = None, [], []
    for i in range(warmup + reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return (statistics.median(wall), statistics.median(cpu)), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="darts")
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--eigen-iterations", type=int, default=20)
    p.add_argument("--cg-iterations", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = build_search_network(args.space, C=args.C, num_classes=10, layers=args.layers).train()
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(args.batch, 3, args.size, args.size, generator=gen),
                torch.randint(0, 10, (args.batch,), generator=gen))

    train, valid = batch(), batch()
    architect = AmendedArchitect(net, estimator="amended", eta=0.1)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def step() -> None:
        architect.step(train, valid)

    t_step, _ = _median_time(step, args.reps)
    net.load_state_dict(state)  # the diagnostics below see the starting point
    it = args.eigen_iterations
    rows = [("amended architect step (exact)", t_step, "")]
    t, _ = _median_time(lambda: collapse_signals(net), args.reps)
    rows.append(("collapse_signals (entropy, skip share, kept weights, genotype)", t, ""))
    for wrt, b in (("alphas", valid), ("weights", train)):
        t, res = _median_time(
            lambda b=b, wrt=wrt: dominant_eigenvalue(net, b, wrt=wrt, iterations=it), args.reps)
        rows.append((f"dominant_eigenvalue(wrt={wrt!r}, <= {it} Lanczos steps)", t,
                     f"{res.iterations} products, lambda = {res.value:.4g}"))
    ref = {"iterations": args.cg_iterations}
    t, rep = _median_time(lambda: alignment(net, train, valid, reference_options=ref,
                                            estimators=("first_order", "amended")), args.reps)
    am = rep.estimators["amended"]
    rows.append((f"alignment(first_order, amended vs implicit_cg {args.cg_iterations} it.)", t,
                 f"cos_g2 = {am.cos_g2:.3f}; reference {rep.reference_seconds:.2f} s wall, "
                 f"amended {am.seconds:.2f} s"))
    t, _ = _median_time(lambda: epoch_diagnostics(
        net, train, valid, epoch=0, eigen_iterations=it, reference_options=ref), args.reps)
    rows.append(("epoch_diagnostics (all of the above but eig(weights), defaults)", t, ""))
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "metrics.jsonl", "w") as fh:
            for e in range(100):
                fh.write(json.dumps({"epoch": e, "eig/alphas": 0.1 + e / 100,
                                     "align/amended/cos_g2": 0.1, "collapse/skip_share": e / 100,
                                     "collapse/entropy_mean": 1 - e / 200}) + "\n")
        t, _ = _median_time(lambda: plot_run(tmp), args.reps)
    rows.append(("plot_run (100 epochs)", t, ""))

    n_w = sum(p.numel() for p in net.weight_parameters())
    n_a = sum(p.numel() for p in net.arch_parameters())
    print(f"space {args.space}, C={args.C}, {args.layers} cells, {args.size}x{args.size}, "
          f"batch {args.batch}, {n_w} weights, {n_a} alphas; torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}; "
          f"median of {args.reps}")
    print()
    print("| diagnostic | wall s | CPU s | x amended step (wall / CPU) | notes |")
    print("|---|---:|---:|---:|---|")
    for name, (wall, cpu), note in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / t_step[0]:.2f} / "
              f"{cpu / t_step[1]:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
