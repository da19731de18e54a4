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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="search folders (implicit_cg)")
    p.add_argument("--csv", type=Path, default=None, metavar="DIR",
                   help="also write the per-epoch counts as DIR/<run>.csv")
    args = p.parse_args(argv)
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
