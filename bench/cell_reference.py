"""Cell reference: ground-truth accuracy of random NB201 cells on the bundled digits.

A search's cell can only be called good or bad against what other cells achieve under the same
training. This script samples distinct random NAS-Bench-201 cells (uniform over the 5^6 op
assignments; isomorphic cells, by :func:`darts_amend.diagnostics.paths.nb201_canonical`, counted
once), and scores each by k-fold cross-validation over all 1,797 digits with one fixed, small
re-training protocol: every image is a test image exactly once, so 1% is ~18 images (the old
re-training on the 359-image test split had 3.6). Per cell it records the mean accuracy and NLL
over the folds (and per fold), its live-path summary and its cost.

Resumable and append-only: one JSON line per finished cell in ``--out/cells.jsonl``; the sample
order is fixed by ``--sample_seed``, so ``--resume`` skips cells already in the file and carries
on with the next ones (``--resume`` also accepts a copy of the committed table as ``--out``). The
protocol is stored in ``protocol.json`` and must match on resume.

    nohup nice -n 19 env OMP_NUM_THREADS=1 python bench/cell_reference.py \\
        --out /work/runs/cell_reference --cells 600 --epochs 12 --resume &
    python bench/cell_reference.py --out /work/runs/cell_reference --report   # summary
    python bench/cell_reference.py --time_one                                  # cost of one cell

Scoring a cell against the table: :func:`percentile` (mid-rank percentile of a value among the
reference values) and :func:`score_cell` (the cell's percentile of its CV accuracy, or of a
looked-up reference row when the cell is in the table).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# settings that define what a table measures (protocol.json, checked on --resume)
PROTOCOL_KEYS = ("folds", "fold_seed", "channels", "layers", "epochs", "batch_size", "lr",
                 "momentum", "weight_decay", "init_seed", "sample_seed")


# --------------------------------------------------------------------------- sampling


def sample_cells(n: int, seed: int) -> list[tuple[str, str]]:
    """The first ``n`` distinct cells (by canonical form) of a fixed uniform random stream of
    NB201 genotypes: ``[(genotype string, canonical form), ...]``. The same ``seed`` gives the
    same list, and a longer list starts with the shorter one (so a table can grow)."""
    from darts_amend.diagnostics.paths import nb201_canonical
    from darts_amend.supernet import NB201Genotype

    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ValueError(f"cannot find {n} distinct NB201 cells (found {len(out)})")
        g = NB201Genotype(tuple(tuple((rng.choice(NB201_OPS), j) for j in range(i + 1))
                                for i in range(3)))
        key = nb201_canonical(g)
        if key not in seen:
            seen.add(key)
            out.append((g.to_string(), key))
    return out


# --------------------------------------------------------------------------- evaluation


def digits_tensors() -> tuple[Any, Any]:
    """All 1,797 digits as (N, 1, 8, 8) float32 normalised like darts_amend.data, and labels."""
    import torch
    from sklearn.datasets import load_digits

    from darts_amend.data import DIGITS_MEAN, DIGITS_STD

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - DIGITS_MEAN[0]) / DIGITS_STD[0], torch.tensor(bunch.target, dtype=torch.long)


def stratified_folds(labels: list[int], k: int, seed: int) -> list[list[int]]:
    """``k`` disjoint folds covering every index once, each class spread evenly."""
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    offset = 0
    for c in sorted(by_class):
        idx = by_class[c]
        rng.shuffle(idx)
        for r, i in enumerate(idx):
            folds[(r + offset) % k].append(i)
        offset += len(idx)
    return [sorted(f) for f in folds]


def evaluate_cell(genotype: str, p: dict[str, Any], x: Any = None, y: Any = None,
                  folds: list[list[int]] | None = None) -> dict[str, Any]:
    """k-fold CV of one NB201 cell under protocol ``p``: train ``NB201Network`` (C =
    ``channels``, ``layers`` cells per stage) on k-1 folds with SGD (momentum, weight decay,
    cosine lr to 0, ``epochs`` epochs, fixed init seed), test on the held-out fold.
    Returns accuracy / NLL over all images and per fold."""
    import torch
    import torch.nn.functional as F

    from darts_amend.supernet import NB201Genotype, NB201Network

    if x is None or y is None:
        x, y = digits_tensors()
    if folds is None:
        folds = stratified_folds(y.tolist(), p["folds"], p["fold_seed"])
    g = NB201Genotype.from_string(genotype)
    t0, c0 = time.perf_counter(), time.process_time()
    correct, nll, per_fold = 0, 0.0, []
    for f, test_idx in enumerate(folds):
        train_idx = torch.tensor([i for k, fo in enumerate(folds) if k != f for i in fo])
        test_idx_t = torch.tensor(test_idx)
        torch.manual_seed(p["init_seed"] + f)
        net = NB201Network(p["channels"], 10, p["layers"], g, in_channels=1)
        opt = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=p["momentum"],
                              weight_decay=p["weight_decay"], nesterov=True)
        steps = p["epochs"] * math.ceil(len(train_idx) / p["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(p["init_seed"] + 1000 + f)
        net.train()
        for _ in range(p["epochs"]):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for b in range(0, len(order), p["batch_size"]):
                idx = order[b:b + p["batch_size"]]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            logits = net(x[test_idx_t])
            fold_nll = F.cross_entropy(logits, y[test_idx_t], reduction="sum").item()
            fold_correct = int((logits.argmax(1) == y[test_idx_t]).sum())
        correct += fold_correct
        nll += fold_nll
        per_fold.append({"n": len(test_idx), "acc": fold_correct / len(test_idx),
                         "nll": fold_nll / len(test_idx)})
    n = sum(len(fo) for fo in folds)
    return {"acc": correct / n, "nll": nll / n, "correct": correct, "n": n, "folds": per_fold,
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2)}  # wall time varies with load


# --------------------------------------------------------------------------- scoring


def percentile(value: float, reference: list[float]) -> float:
    """Mid-rank percentile (0..100) of ``value`` among ``reference``: the share of reference
    values below it plus half the share equal to it. 50 = the median cell."""
    if not reference:
        raise ValueError("percentile: empty reference")
    below = sum(r < value for r in reference)
    equal = sum(r == value for r in reference)
    return 100.0 * (below + 0.5 * equal) / len(reference)


def load_table(folder: str | Path) -> list[dict[str, Any]]:
    """The reference rows of ``folder/cells.jsonl`` (a run folder or the committed copy), one
    per cell: a cell written twice (two processes on one folder) counts once, a torn last
    line (a process killed mid-write) is skipped. (Rows before 2026-12-03 22:40 were written
    with a coarser canonical form that did not tell a shared op from two ops of one kind; the
    form is recomputed here, so their ``index`` may differ from the current sample order.)"""
    path = Path(folder) / "cells.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no reference table at {path}")
    from darts_amend.diagnostics.paths import nb201_canonical
    from darts_amend.supernet import NB201Genotype

    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        # the canonical form is recomputed: rows written by an older form still match
        r["canonical"] = nb201_canonical(NB201Genotype.from_string(r["genotype"]))
        rows.setdefault(r["canonical"], r)
    return list(rows.values())


def score_cell(genotype: str, table: list[dict[str, Any]],
               acc: float | None = None) -> dict[str, Any]:
    """Score an NB201 cell against a reference table: its percentile by CV accuracy. ``acc``
    is the cell's own CV accuracy (same protocol); without it the cell must be in the table
    (matched by canonical form, so an isomorphic cell counts)."""
    from darts_amend.diagnostics.paths import nb201_canonical
    from darts_amend.supernet import NB201Genotype

    key = nb201_canonical(NB201Genotype.from_string(genotype))
    row = next((r for r in table if r["canonical"] == key), None)
    if acc is None:
        if row is None:
            raise ValueError(f"cell {genotype} is not in the reference table; pass its accuracy")
        acc = row["acc"]
    return {"canonical": key, "acc": acc, "in_table": row is not None,
            "percentile": percentile(acc, [r["acc"] for r in table])}


# --------------------------------------------------------------------------- driver


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in PROTOCOL_KEYS}


def _check_protocol(out: Path, p: dict[str, Any], resume: bool) -> None:
    stored = out / "protocol.json"
    if stored.is_file():
        if not resume:
            raise SystemExit(f"cell_reference.py: {out} holds a table; pass --resume")
        old = json.loads(stored.read_text())
        diff = {k: (old.get(k), p[k]) for k in PROTOCOL_KEYS if old.get(k) != p[k]}
        if diff:
            raise SystemExit(f"cell_reference.py: --resume with another protocol: {diff}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(p, indent=2) + "\n")


def summary(rows: list[dict[str, Any]]) -> str:
    """A markdown summary of a table: accuracy quantiles, degenerate cells, cost."""
    if not rows:
        return "no cells yet\n"
    accs = sorted(r["acc"] for r in rows)
    q = statistics.quantiles(accs, n=20, method="inclusive") if len(accs) > 1 else accs * 19

    def by(flag: str) -> str:
        sel = [r["acc"] for r in rows if r["paths"][flag]]
        return f"{len(sel)} ({statistics.fmean(sel):.4f} mean acc)" if sel else "0"

    conn = [r["acc"] for r in rows if not r["paths"]["degenerate"]]
    lines = [f"cells: {len(rows)}; accuracy (k-fold CV over {rows[0]['n']} digits): "
             f"min {accs[0]:.4f}, 5% {q[0]:.4f}, 25% {q[4]:.4f}, median {q[9]:.4f}, "
             f"75% {q[14]:.4f}, 95% {q[18]:.4f}, max {accs[-1]:.4f}",
             f"disconnected: {by('disconnected')}; degenerate (no live parametric op): "
             f"{by('degenerate')}; with a live parametric op: {len(conn)}"
             + (f" (median {statistics.median(conn):.4f})" if conn else ""),
             f"NLL: median {statistics.median(r['nll'] for r in rows):.4f}; wall seconds per "
             f"cell: mean {statistics.fmean(r['seconds'] for r in rows):.1f}, total "
             f"{sum(r['seconds'] for r in rows) / 3600:.2f} h"]
    cpu = [r["cpu_seconds"] for r in rows if "cpu_seconds" in r]
    if cpu:
        lines[-1] += (f"; CPU seconds per cell (one thread): mean {statistics.fmean(cpu):.1f}, "
                      f"range {min(cpu):.1f}-{max(cpu):.1f} ({len(cpu)} cells timed)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from darts_amend.diagnostics.paths import live_paths
    from darts_amend.supernet import NB201Genotype

    torch.set_num_threads(1)
    if args.nice:
        os.nice(args.nice)
    out = Path(args.out)
    p = protocol(args)
    _check_protocol(out, p, args.resume)
    table = out / "cells.jsonl"
    done = {r["canonical"] for r in load_table(out)} if table.is_file() else set()
    if table.is_file() and not table.read_bytes().endswith(b"\n") and table.stat().st_size:
        with open(table, "a") as fh:  # a torn last line stays alone on its line
            fh.write("\n")
    cells = sample_cells(args.cells, args.sample_seed)
    todo = [(i, g, key) for i, (g, key) in enumerate(cells) if key not in done]
    print(f"cell_reference.py: {len(todo)} of {len(cells)} cells to do in {out}", flush=True)
    x, y = digits_tensors()
    folds = stratified_folds(y.tolist(), p["folds"], p["fold_seed"])
    for i, g, key in todo:
        r = evaluate_cell(g, p, x, y, folds)
        row = {"index": i, "genotype": g, "canonical": key,
               "paths": live_paths(NB201Genotype.from_string(g)).to_dict(), **r}
        with open(out / "cells.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"cell_reference.py: [{i + 1}/{len(cells)}] {g}: acc {r['acc']:.4f} "
              f"nll {r['nll']:.4f} ({r['seconds']:.0f} s)", flush=True)
    text = summary(load_table(out))
    (out / "summary.md").write_text(text)
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cell_reference")
    p.add_argument("--cells", type=int, default=600, help="distinct cells in the table")
    p.add_argument("--resume", action="store_true", help="continue the table in --out")
    p.add_argument("--report", action="store_true", help="print the summary of --out")
    p.add_argument("--time_one", action="store_true",
                   help="time the evaluation of one cell (conv-heavy) and exit")
    p.add_argument("--nice", type=int, default=0, help="lower this process's priority by N")
    g = p.add_argument_group("protocol (stored in protocol.json)")
    g.add_argument("--folds", type=int, default=5)
    g.add_argument("--fold_seed", type=int, default=0)
    g.add_argument("--channels", type=int, default=8)
    g.add_argument("--layers", type=int, default=1, help="cells per stage")
    g.add_argument("--epochs", type=int, default=12)
    g.add_argument("--batch_size", type=int, default=64)
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--init_seed", type=int, default=0)
    g.add_argument("--sample_seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cells < 1 or args.folds < 2 or args.epochs < 1:
        raise SystemExit("cell_reference.py: --cells >= 1, --folds >= 2, --epochs >= 1")
    if args.report:
        print(summary(load_table(args.out)), end="")
        return 0
    if args.time_one:
        import torch

        torch.set_num_threads(1)
        g = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|" \
            "nor_conv_3x3~2|"
        r = evaluate_cell(g, protocol(args))
        print(f"{g}: acc {r['acc']:.4f} nll {r['nll']:.4f}, {r['seconds']:.1f} s "
              f"({args.folds} folds x {args.epochs} epochs)")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
