"""How often conjugate gradient met non-positive curvature in ``implicit_cg`` searches.

Reads the ``arch/cg_*`` metrics that ``darts-amend search --estimator implicit_cg`` writes per
epoch (``metrics.jsonl``) and prints, per run folder, one markdown row: alpha steps, steps where
CG stopped at a direction of non-positive curvature, steps where that happened before its
first update (so g2 = 0: a first-order step), and the mean number of CG updates per step, for
the whole run and for its first, middle and last third of epochs. ``--csv DIR`` also writes the
per-epoch counts (``<run>.csv``), small enough to commit.

    python bench/cg_stops.py /work/runs/cgcount/S-s3 /work/runs/cgcount/S-s1 \\
        --csv bench/results/cg_stops
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

FIELDS = ("epoch", "alpha_steps", "steps", "cg_iterations", "cg_curvature_stops",
          "cg_first_direction_stops", "kept_weight_min")


def epochs(folder: Path) -> list[dict[str, Any]]:
    """Per-epoch counts of one search folder (its epochs without ``arch/cg_*`` are refused)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"cg_stops.py: no metrics.jsonl in {folder}")
    rows, prev = [], 0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "arch/cg_iterations" not in r:
            raise SystemExit(f"cg_stops.py: {path} epoch {r.get('epoch')} has no arch/cg_* "
                             "metrics (not an implicit_cg search, or written before they existed)")
        steps = r["alpha_steps"] - prev
        prev = r["alpha_steps"]
        rows.append({"epoch": r["epoch"], "alpha_steps": r["alpha_steps"], "steps": steps,
                     "cg_iterations": r["arch/cg_iterations"],
                     "cg_curvature_stops": r["arch/cg_curvature_stops"],
                     "cg_first_direction_stops": r["arch/cg_first_direction_stops"],
                     "kept_weight_min": r.get("collapse/kept_weight_min")})
    return rows


def _cells(rows: list[dict[str, Any]]) -> str:
    steps = sum(r["steps"] for r in rows)
    if not steps:
        return "- | - | - | -"
    curv = sum(r["cg_curvature_stops"] for r in rows)
    first = sum(r["cg_first_direction_stops"] for r in rows)
    iters = sum(r["cg_iterations"] * r["steps"] for r in rows) / steps
    return (f"{steps:,} | {curv:,} ({100 * curv / steps:.0f}%) | "
            f"{first:,} ({100 * first / steps:.0f}%) | {iters:.2f}")


def table(folders: list[Path]) -> str:
    lines = ["| run | epochs | part | alpha steps | curvature stops | before the first update "
             "(g2 = 0) | mean CG updates |", "|---|---:|---|---:|---:|---:|---:|"]
    for folder in folders:
        rows = epochs(folder)
        n = len(rows)
        parts = [("all", rows), ("first third", rows[: n // 3]),
                 ("middle third", rows[n // 3: 2 * n // 3]), ("last third", rows[2 * n // 3:])]
        for name, part in parts:
            lines.append(f"| {folder.name} | {n} | {name} | {_cells(part)} |")
    return "\n".join(lines) + "\n"


def _op_pressure() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import op_pressure  # noqa: E402  (bench/ sibling: the search's own state and batches)

    return op_pressure


def spectrum(run: Path, pairs: int, iterations: int = 30, initial: bool = False,
             seed: int = 0) -> list[dict[str, Any]]:
    """Why CG stops: at a search's state (its ``checkpoint.pt``, or with ``initial`` the network
    the search starts from) and on its first ``pairs`` (train, val) batch pairs, the extreme
    eigenvalues of H (training loss in the weights; Lanczos, ``iterations`` products each) and
    the Rayleigh quotient ``v'Hv / v'v`` of v = grad_w L_val, CG's first direction."""
    import torch

    from darts_amend.diagnostics import lanczos
    from darts_amend.hvp import hessian_matvec
    from darts_amend.model import resolve_loss, split_parameters
    from darts_amend.tensorlist import flatten, unflatten

    op = _op_pressure()
    cfg = op.stored_config(run)
    net, train_set, split = op.build_state(cfg, None if initial else run / "checkpoint.pt")
    _, weights = split_parameters(net)
    loss = resolve_loss(None)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, (tb, vb) in enumerate(op.batch_pairs(cfg, train_set, split, pairs)):
        v = flatten(torch.autograd.grad(loss(net, *vb), weights))
        with hessian_matvec(net, tb, wrt="weights") as hvp:
            def mv(u: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
                return sign * flatten(hvp(unflatten(u, weights)))

            v0 = torch.randn(v.numel(), generator=gen, dtype=v.dtype)
            top = lanczos(mv, v0, iterations=iterations, which="largest")
            low = lanczos(lambda u: mv(u, -1.0), v0, iterations=iterations, which="largest")
            rq = float(v @ mv(v) / (v @ v))
        out.append({"pair": k, "lambda_max": top.value, "lambda_min": -low.value,
                    "rayleigh_v": rq, "converged": bool(top.converged and low.converged)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="search folders (implicit_cg)")
    p.add_argument("--csv", type=Path, default=None, metavar="DIR",
                   help="also write the per-epoch counts as DIR/<run>.csv")
    p.add_argument("--spectrum", type=int, default=0, metavar="K",
                   help="instead: extreme eigenvalues of H and v'Hv/v'v at each run's "
                        "checkpoint on its first K batch pairs")
    p.add_argument("--initial", action="store_true",
                   help="with --spectrum: at the network the search starts from")
    p.add_argument("--iterations", type=int, default=30, help="Lanczos products per extreme")
    args = p.parse_args(argv)
    if args.spectrum:
        print("| run | state | pair | lambda_min(H) | lambda_max(H) | v'Hv / v'v | converged |\n"
              "|---|---|---:|---:|---:|---:|---|")
        for folder in args.runs:
            for r in spectrum(folder, args.spectrum, args.iterations, args.initial):
                print(f"| {folder.name} | {'initial' if args.initial else 'checkpoint'} | "
                      f"{r['pair']} | {r['lambda_min']:.4g} | {r['lambda_max']:.4g} | "
                      f"{r['rayleigh_v']:.4g} | {r['converged']} |")
        return 0
    text = table(args.runs)
    if args.csv is not None:
        args.csv.mkdir(parents=True, exist_ok=True)
        for folder in args.runs:
            with open(args.csv / f"{folder.name}.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(epochs(folder))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
