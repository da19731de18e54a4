"""Collapse study (issue 17): many seeds per arm, ground-truth cell scores, pre-registered tests.

Built on bench/collapse.py (its search commands, resumable phases, signal handling). Per run:
``darts-amend search`` until the convergence rule has held for ``--stable`` epochs or the
alpha-step cap, with ``--diag_every`` (alpha-Hessian eigenvalue, cosine of amended's g2' with
implicit CG's g2); then, from the run's ``metrics.jsonl``, a trajectory with the live-path
metric (``darts_amend.diagnostics.live_paths``: parametric ops on live input-to-output paths,
disconnected / degenerate flags), parameter-free shares, kept-op weight minimum, validation
accuracy, eigenvalue and cosine; and (``nb201``) the final cell's k-fold CV accuracy under the
reference protocol and its percentile in the reference table (bench/cell_reference.py), also
every ``--score_every`` alpha steps along the run (distinct cells evaluated once, cached in
``--out/cv_cache.jsonl``; a cell in the reference table reuses its row).

The report (``--report``) gives per-arm tables (mean, sd, range), exact one-sided Mann-Whitney
p-values and effect sizes (Vargha-Delaney A, Hodges-Lehmann shift) against ``first_order`` and
``unrolled_fd``, the verdict of the criteria pre-registered in docs/benchmarks.md, and a plot of
live parametric ops and reference percentile against alpha steps.

    python bench/collapse_study.py --out /work/runs/study --nice 19 --resume   # setting W
    python bench/collapse_study.py --out /work/runs/study_s --subset 0.2 --arch_lr 3e-2 \\
        --nice 19 --resume                                                      # setting S
    python bench/collapse_study.py --out /work/runs/study --report     # report.md, figure there
    python bench/collapse_study.py --out /work/runs/study --archive bench/results/collapse_study
    python bench/collapse_study.py --heldout bench/results/collapse_study \\
        bench/results/collapse_study_s > bench/results/collapse_heldout.md   # E1, E2

A copy of an archive under ``--out`` continues the study with ``--resume`` (finished runs are
skipped; unfinished ones start over).
"""
from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cell_reference  # noqa: E402  (bench/ siblings)
import collapse  # noqa: E402

ARMS = ("first_order", "unrolled_exact", "unrolled_fd", "amended_0.1", "amended_1", "implicit_cg")
BASELINES = ("first_order", "unrolled_fd")
PRIMARY = "amended_0.1"
STUDY_KEYS = (*collapse.STUDY_KEYS, "diag_every")
TRAJ_FIELDS = ("alpha_steps", "pf_share", "pf_share_genotype", "kept_weight_min",
               "converged_epochs", "live_parametric", "disconnected", "degenerate", "valid_acc",
               "eig_alphas", "cos_g2", "percentile", "cv_acc", "genotype", "step_seconds",
               "epoch_seconds")


# --------------------------------------------------------------------------- statistics


def _midranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_greater(x: list[float], y: list[float]) -> dict[str, float]:
    """One-sided Mann-Whitney test of H1: x tends to be larger than y. ``U`` = number of pairs
    with x > y plus half the ties; ``p`` = P(U' >= U) over all C(n, n_x) re-labellings of the
    pooled mid-ranks (exact, ties included); a normal approximation (tie-corrected) above
    200,000 re-labellings. Also the effect sizes ``A`` = U / (n_x n_y) (Vargha-Delaney) and
    ``hl`` (Hodges-Lehmann: median of all pairwise differences x - y)."""
    if not x or not y:
        raise ValueError("mann_whitney_greater: both samples need values")
    nx, ny = len(x), len(y)
    ranks = _midranks(list(x) + list(y))
    # U_x = R_x - nx (nx + 1) / 2 with mid-ranks counts ties as 1/2
    u = sum(ranks[:nx]) - nx * (nx + 1) / 2
    n = nx + ny
    if math.comb(n, nx) <= 200_000:
        total = hits = 0
        for idx in itertools.combinations(range(n), nx):
            total += 1
            if sum(ranks[i] for i in idx) - nx * (nx + 1) / 2 >= u - 1e-9:
                hits += 1
        p = hits / total
    else:
        counts: dict[float, int] = {}
        for r in ranks:
            counts[r] = counts.get(r, 0) + 1
        tie = sum(t ** 3 - t for t in counts.values())
        var = nx * ny / 12 * ((n + 1) - tie / (n * (n - 1)))
        z = (u - nx * ny / 2 - 0.5) / math.sqrt(var) if var > 0 else 0.0
        p = 0.5 * math.erfc(z / math.sqrt(2))
    diffs = sorted(a - b for a in x for b in y)
    return {"U": u, "p": p, "A": u / (nx * ny), "hl": statistics.median(diffs)}


def fisher_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact test on the 2x2 table ``[[a, b], [c, d]]`` (rows: group 1, group
    2; columns: with the trait, without), H1: group 1 has the trait more often. ``p`` = P(X >= a)
    for X hypergeometric with the table's margins."""
    if min(a, b, c, d) < 0:
        raise ValueError("fisher_greater: counts must be >= 0")
    n1, n2, k = a + b, c + d, a + c
    total = math.comb(n1 + n2, k)
    hits = sum(math.comb(n1, i) * math.comb(n2, k - i) for i in range(a, min(n1, k) + 1))
    return hits / total


# --------------------------------------------------------------------------- per-run metrics


def _genotype_obj(g: dict[str, Any]) -> Any:
    from darts_amend.supernet import Genotype

    return Genotype.from_dict(g)


class CellScorer:
    """CV accuracy and reference percentile of NB201 cells: the reference row when the cell is
    in the table, else one evaluation under the reference protocol, cached in ``cache``."""

    def __init__(self, reference: str | Path | None, cache: Path) -> None:
        self.table = cell_reference.load_table(reference) if reference else []
        self.protocol = (json.loads((Path(reference) / "protocol.json").read_text())
                         if reference else None)
        self.cache_path = cache
        self.cache: dict[str, dict[str, Any]] = {}
        if cache.is_file():
            for line in cache.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.cache.setdefault(r["canonical"], r)
        self.by_key = {r["canonical"]: r for r in self.table}

    def score(self, genotype: str) -> dict[str, Any] | None:
        if not self.table:
            return None
        from darts_amend.diagnostics.paths import nb201_canonical
        from darts_amend.supernet import NB201Genotype

        key = nb201_canonical(NB201Genotype.from_string(genotype))
        row = self.by_key.get(key) or self.cache.get(key)
        if row is None:
            r = cell_reference.evaluate_cell(genotype, self.protocol)
            row = {"canonical": key, "genotype": genotype, "acc": r["acc"], "nll": r["nll"],
                   "seconds": r["seconds"]}
            self.cache[key] = row
            with open(self.cache_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return {"cv_acc": row["acc"], "cv_nll": row["nll"], "in_reference": key in self.by_key,
                "percentile": cell_reference.percentile(row["acc"],
                                                        [t["acc"] for t in self.table])}


def run_trajectory(search_dir: Path, space: str, scorer: CellScorer | None,
                   score_every: int) -> list[dict[str, Any]]:
    """Per epoch of a search: the fields of :data:`TRAJ_FIELDS` (percentile / cv_acc on the
    first epoch past every ``score_every`` alpha steps and on the last epoch, nb201 only)."""
    from darts_amend.diagnostics import read_metrics
    from darts_amend.diagnostics.paths import genotype_paths
    from darts_amend.supernet import get_space, parameter_free_share

    spec = get_space(space)
    records = read_metrics(search_dir / "metrics.jsonl")
    rows, next_score = [], score_every
    for k, r in enumerate(records):
        g = _genotype_obj(r["genotype"])
        paths = genotype_paths(g)
        pf = parameter_free_share(spec, r["alphas"])
        row = {"alpha_steps": r["alpha_steps"], **pf,
               "kept_weight_min": r.get("collapse/kept_weight_min"),
               "converged_epochs": r.get("converged_epochs"),
               "live_parametric": paths.live_parametric, "disconnected": int(paths.disconnected),
               "degenerate": int(paths.degenerate), "valid_acc": r.get("valid_acc"),
               "eig_alphas": r.get("eig/alphas"), "cos_g2": r.get("align/amended/cos_g2"),
               "percentile": None, "cv_acc": None,
               "genotype": json.dumps(r["genotype"], separators=(",", ":")),
               "step_seconds": r.get("step_seconds"), "epoch_seconds": r.get("epoch_seconds")}
        last = k == len(records) - 1
        if scorer is not None and space == "nb201" and (last or (
                score_every and r["alpha_steps"] >= next_score)):
            s = scorer.score(r["genotype"]["nb201"])
            if s is not None:
                row["percentile"], row["cv_acc"] = s["percentile"], s["cv_acc"]
            while score_every and next_score <= r["alpha_steps"]:
                next_score += score_every
        rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(TRAJ_FIELDS))
        w.writeheader()
        w.writerows(rows)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    ints = ("alpha_steps", "converged_epochs", "live_parametric", "disconnected", "degenerate")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (None if v == "" else v if k == "genotype" else int(v) if k in ints
                 else float(v)) for k, v in r.items()} for r in rows]


def run_summary(rows: list[dict[str, Any]], stable: int, window: int = 1000) -> dict[str, Any]:
    """The per-run numbers of the study from its trajectory."""
    last = rows[-1]
    steps_to_rule = next((r["alpha_steps"] for r in rows
                          if (r["converged_epochs"] or 0) >= stable), None)
    recent = [r for r in rows if r["alpha_steps"] > last["alpha_steps"] - window]
    first = rows.index(recent[0])
    changes = sum(rows[i]["genotype"] != rows[i - 1]["genotype"]
                  for i in range(max(first, 1), len(rows)))
    eig = [r["eig_alphas"] for r in rows if r["eig_alphas"] is not None]
    cos = [r["cos_g2"] for r in rows if r["cos_g2"] is not None]
    return {"alpha_steps": last["alpha_steps"], "steps_to_rule": steps_to_rule,
            "genotype_changes_last_1000": changes, "live_parametric": last["live_parametric"],
            "disconnected": bool(last["disconnected"]), "degenerate": bool(last["degenerate"]),
            "pf_share": last["pf_share"], "pf_share_genotype": last["pf_share_genotype"],
            "kept_weight_min": last["kept_weight_min"], "valid_acc": last["valid_acc"],
            "eig_last": eig[-1] if eig else None, "eig_max": max(eig) if eig else None,
            "cos_g2_mean": statistics.fmean(cos) if cos else None,
            "percentile": last["percentile"], "cv_acc": last["cv_acc"],
            "genotype": json.loads(last["genotype"])}


# --------------------------------------------------------------------------- driver


def _scorer(args: argparse.Namespace) -> CellScorer:
    return CellScorer(args.reference, Path(args.out) / "cv_cache.jsonl")


def run_one(study: dict[str, Any], space: str, arm: str, seed: int, args: argparse.Namespace,
            scorer: CellScorer) -> dict[str, Any] | None:
    base = Path(args.out) / space / f"{arm}-s{seed}"
    base.mkdir(parents=True, exist_ok=True)
    s = collapse._phase("search", collapse.search_argv(study, space, arm, seed, base / "search",
                                                       args.run_time_limit),
                        base / "search", base / "search.log", args)
    if s is None or collapse._stop.is_set():
        return None
    rows = run_trajectory(base / "search", space, scorer, args.score_every)
    write_rows(rows, base / "trajectory.csv")
    return {"space": space, "arm": arm, "seed": seed, "stop_reason": s["stop_reason"],
            "converged": s["stop_reason"] == "converged", **run_summary(rows, study["stable"])}


def _results(out: Path) -> list[dict[str, Any]]:
    p = out / "results.jsonl"
    rows = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["space"], r["arm"], r["seed"])] = r
    return list(rows.values())


def _study(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    study = {k: getattr(args, k) for k in STUDY_KEYS}
    stored = out / "study.json"
    if stored.is_file():
        if not args.resume:
            raise SystemExit(f"collapse_study.py: {out} holds a study; pass --resume")
        old = json.loads(stored.read_text())
        diff = {k: (old.get(k), study[k]) for k in STUDY_KEYS if old.get(k) != study[k]}
        if diff:
            raise SystemExit(f"collapse_study.py: --resume with other settings: {diff}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(study, indent=2) + "\n")
    return study


def run_study(args: argparse.Namespace) -> int:
    for arm in args.arms:
        collapse.estimator_flags(arm)  # unknown labels fail before anything runs
    study = _study(args)
    out = Path(args.out)
    scorer = _scorer(args)
    done = {(r["space"], r["arm"], r["seed"]) for r in _results(out)}
    # seed-major order: every arm gets seed k before any arm gets seed k + 1
    todo = [(sp, arm, seed) for sp in args.spaces for seed in args.seeds for arm in args.arms
            if (sp, arm, seed) not in done]
    print(f"collapse_study.py: {len(todo)} runs to do, {len(done)} finished in {out}", flush=True)
    if not args.inprocess:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, collapse._forward_signal)
    failures = 0
    for item in todo:
        if collapse._stop.is_set():
            break
        try:
            r = run_one(study, *item, args, scorer)
        except RuntimeError as err:
            failures += 1
            print(f"collapse_study.py: FAILED {item}: {err}", flush=True)
            continue
        if r is None:
            continue
        with open(out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"collapse_study.py: {r['space']} {r['arm']} seed {r['seed']}: {r['stop_reason']} "
              f"after {r['alpha_steps']} alpha steps; live parametric ops {r['live_parametric']}"
              f"{' (disconnected)' if r['disconnected'] else ''}; percentile {r['percentile']}",
              flush=True)
    report(args)
    return 1 if failures else (130 if collapse._stop.is_set() else 0)


def archive(args: argparse.Namespace) -> int:
    """Copy results, study settings, the CV cache and per-run trajectories / summaries / logs
    (no checkpoints, no metrics.jsonl) to ``--archive DIR``.

    Merges into an existing archive: its runs stay (a run finished in ``--out`` replaces its
    own entry), and CV-cache lines are added, so several ``--out`` folders of one study (e.g.
    disjoint ``--seeds`` on two cores) can be archived into one place. Refused when the two
    folders hold different study settings."""
    out, dest = Path(args.out), Path(args.archive)
    finished = _results(out)
    if (dest / "study.json").is_file() and (out / "study.json").is_file():
        a, b = (json.loads((d / "study.json").read_text()) for d in (dest, out))
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise SystemExit(f"collapse_study.py: {out} and {dest} are different studies "
                             f"(settings differ: {', '.join(diff)}); nothing archived")
    dest.mkdir(parents=True, exist_ok=True)
    if (out / "study.json").is_file():
        shutil.copy2(out / "study.json", dest / "study.json")
    if (out / "cv_cache.jsonl").is_file():
        have = (dest / "cv_cache.jsonl").read_text().splitlines() \
            if (dest / "cv_cache.jsonl").is_file() else []
        known = set(have)
        new = [line for line in (out / "cv_cache.jsonl").read_text().splitlines()
               if line.strip() and line not in known]
        (dest / "cv_cache.jsonl").write_text("".join(x + "\n" for x in have + new))
    for r in finished:
        run = Path(r["space"]) / f"{r['arm']}-s{r['seed']}"
        (dest / run / "search").mkdir(parents=True, exist_ok=True)
        for name in ("trajectory.csv", "search.log"):
            if (out / run / name).is_file():
                shutil.copy2(out / run / name, dest / run / name)
        for name in ("summary.json", "genotype.json", "config.json"):
            if (out / run / "search" / name).is_file():
                shutil.copy2(out / run / "search" / name, dest / run / "search" / name)
    merged = {(r["space"], r["arm"], r["seed"]): r for r in _results(dest)}
    merged.update({(r["space"], r["arm"], r["seed"]): r for r in finished})
    with open(dest / "results.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in merged.values())
    print(f"collapse_study.py: {len(finished)} finished runs of {out} archived in {dest} "
          f"({len(merged)} there now)")
    return 0


# --------------------------------------------------------------------------- report

METRICS = (("live_parametric", "live parametric ops", ".2f"),
           ("percentile", "reference percentile", ".1f"),
           ("cv_acc", "CV accuracy", ".4f"),
           ("pf_share", "pf share (top op)", ".2f"),
           ("pf_share_genotype", "pf share (genotype)", ".2f"),
           ("kept_weight_min", "kept-op weight min", ".3f"),
           ("alpha_steps", "alpha steps", ".0f"),
           ("steps_to_rule", "steps to rule", ".0f"),
           ("genotype_changes_last_1000", "genotype changes (last 1,000 steps)", ".1f"),
           ("valid_acc", "search valid acc", ".4f"),
           ("eig_last", "alpha-Hessian eigenvalue (last)", ".3g"),
           ("cos_g2_mean", "cos(g2', CG g2), mean", ".3f"))


def _stats(xs: list[Any], fmt: str) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return (f"{format(statistics.fmean(xs), fmt)} +- {format(sd, fmt)} "
            f"[{format(min(xs), fmt)}, {format(max(xs), fmt)}] (n={len(xs)})")


def verdict(by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The pre-registered criteria (docs/benchmarks.md) applied to one setting's finished runs."""
    need = (*BASELINES, PRIMARY)
    if any(len(by_arm.get(a, [])) < 8 for a in need):
        have = ", ".join(f"{a} {len(by_arm.get(a, []))}" for a in need)
        # C1 needs >= 6 of 8 degenerate per baseline: 3 connected seeds already decide it
        kept = {b: sum(not r["degenerate"] for r in by_arm.get(b, [])) for b in BASELINES}
        decided = [b for b, k in kept.items() if k > 8 - 6]
        if decided:
            return ["Verdict: C1 fails whatever the remaining runs give ("
                    + ", ".join(f"{b}: {kept[b]} of {len(by_arm[b])} finished seeds not "
                                f"degenerate" for b in decided)
                    + "; C1 needs >= 6 of 8 degenerate): this setting cannot test the claim. "
                    f"The runs continue to 8 seeds (finished: {have})."]
        return [f"Verdict: not yet (the criteria need 8 finished seeds of {', '.join(need)}; "
                f"finished: {have})."]
    if any(r["percentile"] is None for a in need for r in by_arm[a]):
        return ["Verdict: none for this space (the criteria use the reference percentile, which "
                "exists for nb201 only)."]
    deg = {a: sum(r["degenerate"] for r in by_arm[a]) for a in by_arm}
    c1 = all(deg[a] >= 6 for a in BASELINES)
    tests = {b: mann_whitney_greater([r["percentile"] for r in by_arm[PRIMARY]],
                                     [r["percentile"] for r in by_arm[b]]) for b in BASELINES}
    med = statistics.median(r["percentile"] for r in by_arm[PRIMARY])
    lines = ["Degenerate runs: " + ", ".join(f"{a} {deg[a]}/{len(by_arm[a])}" for a in by_arm),
             f"Primary tests ({PRIMARY} percentile > baseline): " + "; ".join(
                 f"vs {b}: p = {t['p']:.4g}, A = {t['A']:.2f}, HL = {t['hl']:+.1f}"
                 for b, t in tests.items()) + f"; {PRIMARY} median percentile {med:.1f}."]
    if not c1:
        lines.append("Verdict: C1 fails (the DARTS baselines do not end degenerate in >= 6 of 8 "
                     "seeds each): this setting cannot test the claim.")
        return lines
    confirm = (deg[PRIMARY] <= 2 and med >= 50
               and all(t["p"] < 0.01 and t["A"] >= 0.85 for t in tests.values()))
    refute = deg[PRIMARY] >= deg["first_order"] or any(t["p"] > 0.1 for t in tests.values())
    if confirm:
        cg = deg.get("implicit_cg")
        mech = ("" if cg is None else " Mechanism: implicit_cg degenerate in "
                f"{cg}/{len(by_arm['implicit_cg'])}: " + (
                    "consistent with gradient accuracy." if cg <= 2 else
                    "amended works as a regulariser, not by gradient accuracy." if cg >= 6 else
                    "undecided."))
        lines.append("Verdict: CONFIRMED by the pre-registered criteria." + mech)
    elif refute:
        lines.append("Verdict: REFUTED by the pre-registered criteria.")
    else:
        lines.append("Verdict: inconclusive (neither the confirm nor the refute criteria hold).")
    return lines


def _by_arm(rows: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Runs grouped by arm (each arm's runs by seed) and the arms in the study's order."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        by_arm.setdefault(r["arm"], []).append(r)
    return by_arm, [a for a in ARMS if a in by_arm] + sorted(a for a in by_arm if a not in ARMS)


def report(args: argparse.Namespace) -> str:
    out = Path(args.out)
    results = _results(out)
    lines = []
    if (out / "study.json").is_file():  # which setting these runs are (W, S, ...)
        st = json.loads((out / "study.json").read_text())
        lines += [f"Setting: {st.get('dataset')} subset {st.get('subset')} "
                  f"({'W, the whole split' if st.get('subset') == 1.0 else 'a subset'}), "
                  f"alpha lr {st.get('arch_lr')}, cap {st.get('max_alpha_steps')} alpha steps, "
                  f"rule held for {st.get('stable')} epochs.", ""]
    if args.reference and (Path(args.reference) / "cells.jsonl").is_file():
        # percentiles against the table as it is now (it may have grown since a run was scored)
        table = [t["acc"] for t in cell_reference.load_table(args.reference)]
        for r in results:
            if r.get("cv_acc") is not None:
                r["percentile"] = cell_reference.percentile(r["cv_acc"], table)
        lines += [f"Reference percentiles against {args.reference} ({len(table)} cells).", ""]
    for space in sorted({r["space"] for r in results}):
        by_arm, arms = _by_arm([r for r in results if r["space"] == space])
        lines += [f"### {space}", "", "| arm | runs | converged | degenerate | disconnected | "
                  + " | ".join(m[1] for m in METRICS) + " |",
                  "|---|---:|---:|---:|---:|" + "---|" * len(METRICS)]
        for a in arms:
            rs = by_arm[a]
            lines.append(f"| {a} | {len(rs)} | {sum(r['converged'] for r in rs)} | "
                         f"{sum(r['degenerate'] for r in rs)} | "
                         f"{sum(r['disconnected'] for r in rs)} | "
                         + " | ".join(_stats([r[k] for r in rs], f) for k, _, f in METRICS)
                         + " |")
        lines += ["", "One-sided exact Mann-Whitney, H1: arm > baseline (p, Vargha-Delaney A, "
                  "Hodges-Lehmann shift):", "",
                  "| arm | baseline | percentile | live parametric ops |", "|---|---|---|---|"]
        for a in arms:
            for b in BASELINES:
                if a == b or b not in by_arm:
                    continue
                cells = []
                for k in ("percentile", "live_parametric"):
                    x = [r[k] for r in by_arm[a] if r[k] is not None]
                    y = [r[k] for r in by_arm[b] if r[k] is not None]
                    if x and y:
                        t = mann_whitney_greater(x, y)
                        cells.append(f"p = {t['p']:.3g}, A = {t['A']:.2f}, HL = {t['hl']:+.2f}")
                    else:
                        cells.append("-")
                lines.append(f"| {a} | {b} | {cells[0]} | {cells[1]} |")
        lines += ["", *verdict(by_arm), ""]
    # default: beside the report in --out (setting W and setting S each keep their own figure)
    figure = out / "collapse_study.png" if args.plot is None else args.plot
    if results and figure:
        plot(out, results, Path(figure))
        lines.append(f"![live parametric ops and reference percentile against alpha steps]"
                     f"({os.path.relpath(figure, out)})")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def _edges(genotype: dict[str, Any]) -> dict[tuple[int, int], str]:
    """``{(from, to): op}`` of an nb201 genotype (``darts_amend``'s own parser)."""
    from darts_amend.supernet import NB201Genotype

    return {(j, i): op for i, j, op in NB201Genotype.from_dict(genotype).edges}


def _pattern_course(folder: Path, r: dict[str, Any]) -> str:
    """When a run's genotype first had ``none`` on both input edges 0->2 and 0->3
    (:func:`input_edges_none`), and in what share of its epochs; from its trajectory."""
    path = folder / r["space"] / f"{r['arm']}-s{r['seed']}" / "trajectory.csv"
    if not path.is_file():
        return "-"
    rows = read_rows(path)
    flags = [input_edges_none(json.loads(x["genotype"])) for x in rows]
    first = next((x["alpha_steps"] for x, f in zip(rows, flags, strict=True) if f), None)
    share = sum(flags) / max(len(flags), 1)
    return f"{'never' if first is None else f'{first:,}'} / {share:.2f}"


def runs_table(folders: list[str], reference: str | None) -> str:
    """One markdown row per finished run of these archives (the per-run table of the docs):
    setting, arm, seed, how it stopped, alpha steps, live parametric ops, degenerate (and why),
    reference percentile, CV accuracy, ``none`` / skip edges of the 6, and the course of the
    input-edge pattern (``none`` on 0->2 and 0->3) along the run."""
    lines = ["| setting | arm | seed | stop | alpha steps | live | degenerate | pct | CV acc | "
             "`none` / skip edges | input pattern: first step / share of epochs |",
             "|---|---|---:|---|---:|---:|---|---:|---:|---|---|"]
    for folder in folders:
        label, _, rows, _ = _held_out(Path(folder), reference, need_list=False)
        label = label.split(" ")[0]
        rows.sort(key=lambda r: (ARMS.index(r["arm"]) if r["arm"] in ARMS else len(ARMS),
                                 r["arm"], r["seed"]))
        for r in rows:
            e = _edges(r["genotype"])
            n_none = sum(op == "none" for op in e.values())
            n_skip = sum(op == "skip_connect" for op in e.values())
            deg = ("yes (disconnected)" if r["disconnected"] else
                   ("yes (all-skip)" if n_skip == 6 else "yes") if r["degenerate"] else "no")
            stop = "rule" if r["converged"] else (
                "cap" if r["stop_reason"] == "epochs" else r["stop_reason"])
            pct = "-" if r.get("percentile") is None else f"{r['percentile']:.1f}"
            acc = "-" if r.get("cv_acc") is None else f"{r['cv_acc']:.4f}"
            lines.append(f"| {label} | {r['arm']} | {r['seed']} | {stop} | "
                         f"{r['alpha_steps']:,} | {r['live_parametric']} | {deg} | {pct} | "
                         f"{acc} | {n_none} / {n_skip} | {_pattern_course(Path(folder), r)} |")
    return "\n".join(lines) + "\n"


def _median_range(xs: list[Any], fmt: str) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return (f"{format(statistics.median(xs), fmt)} "
            f"[{format(min(xs), fmt)}, {format(max(xs), fmt)}]")


def summary_table(folders: list[str], reference: str | None) -> str:
    """The headline table of the study: one row per setting and arm (seeds finished, runs that
    met the convergence rule, degenerate runs and how many of them are disconnected,
    then median [range] of live parametric ops, reference percentile and CV accuracy), and
    under it each setting's line of the pre-registered verdict (:func:`verdict`)."""
    lines = ["| setting | arm | seeds | rule met | degenerate | of them cut off | "
             "live parametric ops | reference percentile | CV accuracy |",
             "|---|---|---:|---:|---:|---:|---|---|---|"]
    verdicts = []
    for folder in folders:
        label, _, rows, _ = _held_out(Path(folder), reference, need_list=False)
        label = label.split(" ")[0]
        by_arm, arms = _by_arm(rows)
        for a in arms:
            rs = by_arm[a]
            lines.append(
                f"| {label} | {a} | {len(rs)} | {sum(r['converged'] for r in rs)} | "
                f"{sum(r['degenerate'] for r in rs)} | {sum(r['disconnected'] for r in rs)} | "
                f"{_median_range([r['live_parametric'] for r in rs], 'g')} | "
                f"{_median_range([r.get('percentile') for r in rs], '.1f')} | "
                f"{_median_range([r.get('cv_acc') for r in rs], '.4f')} |")
        verdicts.append(f"{label}: {verdict(by_arm)[-1]}")
    return "\n".join(lines + ["", *verdicts]) + "\n"


AMENDED_ARMS = ("amended_0.1", "amended_1")
OTHER_ARMS = ("first_order", "unrolled_exact", "unrolled_fd", "implicit_cg")


def input_edges_none(genotype: dict[str, Any]) -> bool:
    """True when an nb201 cell has ``none`` on both edges from its input to nodes 2 and 3
    (``0->2`` and ``0->3``): every path leaves the input through the edge to node 1."""
    e = _edges(genotype)
    return e[(0, 2)] == "none" and e[(0, 3)] == "none"


def _held_out(folder: Path, reference: str | None, need_list: bool = True
              ) -> tuple[str, list[dict], list[dict], dict]:
    """(setting label, held-out runs, all runs, seen counts per arm) of one archive."""
    if not ((folder / "results.jsonl").is_file() or (folder / "study.json").is_file()):
        raise SystemExit(f"collapse_study.py: {folder} holds no study (neither results.jsonl "
                         "nor study.json)")
    rows = _results(folder)
    if reference and (Path(reference) / "cells.jsonl").is_file():
        table = [t["acc"] for t in cell_reference.load_table(reference)]
        for r in rows:
            if r.get("cv_acc") is not None:
                r["percentile"] = cell_reference.percentile(r["cv_acc"], table)
    meta = folder / "heldout.json"
    if not need_list and not meta.is_file():
        meta = None
    elif not meta.is_file():
        raise SystemExit(f"collapse_study.py: no heldout.json in {folder} (the list of runs "
                         "seen when the held-out hypotheses were written)")
    seen = set() if meta is None else {(a, int(s)) for a, s in
                                       json.loads(meta.read_text())["seen"]}
    st = json.loads((folder / "study.json").read_text()) if (folder / "study.json").is_file() \
        else {}
    label = "W" if st.get("subset", 1.0) == 1.0 else f"S (subset {st.get('subset')})"
    counts: dict[str, int] = {}
    for a, _ in seen:
        counts[a] = counts.get(a, 0) + 1
    return label, [r for r in rows if (r["arm"], r["seed"]) not in seen], rows, counts


def heldout_report(folders: list[str], reference: str | None, seeds: int = 8) -> str:
    """The exploratory hypotheses E1 and E2 of the pre-registration addendum
    (docs/benchmarks.md), tested on the runs not seen when they were written."""
    lines = ["## Held-out exploratory tests (pre-registration addendum of 2026-12-04)", "",
             "Only runs absent from each archive's `heldout.json` count; neither test changes "
             "the pre-registered verdict.", ""]
    pooled: dict[str, list[int]] = {"held": [0, 0, 0, 0], "all": [0, 0, 0, 0]}
    complete = True
    for folder in folders:
        label, held, rows, seen = _held_out(Path(folder), reference)
        want = {a: seeds - seen.get(a, 0) for a in (*AMENDED_ARMS, *OTHER_ARMS)}
        have = {a: sum(r["arm"] == a for r in held) for a in want}
        complete &= all(have[a] >= want[a] for a in want)
        lines.append(f"Setting {label} ({folder}): {len(held)} held-out runs finished "
                     f"(" + ", ".join(f"{a} {have[a]}/{want[a]}" for a in want) + ").")
        for key, runs in (("held", held), ("all", rows)):
            for r in runs:
                if r["arm"] in AMENDED_ARMS + OTHER_ARMS:
                    i = 0 if r["arm"] in AMENDED_ARMS else 2
                    pooled[key][i + (0 if input_edges_none(r["genotype"]) else 1)] += 1
        if label != "W":
            continue
        lines += ["", f"E1 (setting {label}): `{PRIMARY}` reference percentile lower than each "
                  "baseline's (one-sided exact Mann-Whitney; A = P(amended > baseline), HL = "
                  "median amended - baseline).", "",
                  "| baseline | runs | amended_0.1 percentiles | baseline percentiles | p | A "
                  "| HL |",
                  "|---|---|---|---|---:|---:|---:|"]
        ps = []
        for key, runs in (("held-out", held), ("all (not a test)", rows)):
            x = sorted(r["percentile"] for r in runs if r["arm"] == PRIMARY)
            for b in BASELINES:
                y = sorted(r["percentile"] for r in runs if r["arm"] == b)
                if not x or not y:
                    lines.append(f"| {b} | {key} | - | - | - | - | - |")
                    continue
                t = mann_whitney_greater(y, x)  # H1: baseline > amended
                if key == "held-out":
                    ps.append(t["p"])
                lines.append(f"| {b} | {key} | {', '.join(f'{v:.1f}' for v in x)} | "
                             f"{', '.join(f'{v:.1f}' for v in y)} | {t['p']:.3g} | "
                             f"{1 - t['A']:.2f} | {-t['hl']:+.1f} |")
        full = all(have[a] >= want[a] for a in (PRIMARY, *BASELINES))
        if len(ps) < 2 or not full:
            state = "pending (held-out runs still missing)"
        elif all(p < 0.05 for p in ps):
            state = "supported (both p < 0.05; one held-out replication, not a confirmed effect)"
        elif any(p > 0.2 for p in ps):
            state = "not supported (a p > 0.2)"
        else:
            state = "undecided (0.05 <= p <= 0.2)"
        lines += ["", f"E1: {state}.", ""]
    a, b, c, d = pooled["held"]
    p = fisher_greater(a, b, c, d) if a + b and c + d else math.nan
    aa, ab, ac, ad = pooled["all"]
    lines += ["", "E2 (settings pooled): `none` on both input edges 0->2 and 0->3, amended "
              "(eta 0.1 and 1) against the other four arms (one-sided Fisher exact).", "",
              "| runs | amended: with / of | others: with / of | p |", "|---|---|---|---:|",
              f"| held-out | {a} / {a + b} | {c} / {c + d} | {p:.3g} |",
              f"| all (not a test) | {aa} / {aa + ab} | {ac} / {ac + ad} | - |", ""]
    if not complete or math.isnan(p):
        state = "pending (held-out runs still missing)"
    elif p < 0.01:
        state = "supported (p < 0.01)"
    elif p > 0.1:
        state = "not supported (p > 0.1)"
    else:
        state = "undecided (0.01 <= p <= 0.1)"
    lines.append(f"E2: {state}.")
    return "\n".join(lines) + "\n"


def _median_course(series: list[list[tuple[int, float]]]
                   ) -> tuple[list[int], list[float], list[int]]:
    """Median over the runs still going at each logged alpha step, and how many those are (a
    run's value holds until its next logged point; a run that stopped early drops out after its
    last point)."""
    grid = sorted({step for pts in series for step, _ in pts})
    keys = [[step for step, _ in pts] for pts in series]
    med, count = [], []
    for g in grid:
        vals = [pts[bisect.bisect_right(k, g) - 1][1]
                for pts, k in zip(series, keys, strict=True) if k[0] <= g <= k[-1]]
        med.append(statistics.median(vals))
        count.append(len(vals))
    return grid, med, count


def plot(out: Path, results: list[dict[str, Any]], path: Path) -> None:
    """Per space two rows (live parametric ops, reference percentile), a column per arm:
    every seed as a thin line and, while at least half of them are still running, their median
    as a thick one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spaces = sorted({r["space"] for r in results})
    arms = _by_arm(results)[1]
    fig = Figure(figsize=(2.4 * len(arms) + 0.6, 4.4 * len(spaces)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * len(spaces), len(arms), squeeze=False, sharex=True)
    rows_of = (("live_parametric", "live parametric ops", (-0.3, 6.3)),
               ("percentile", "reference percentile", (-2, 102)))
    for si, space in enumerate(spaces):
        for col, arm in enumerate(arms):
            runs = [read_rows(out / space / f"{arm}-s{r['seed']}" / "trajectory.csv")
                    for r in results if r["space"] == space and r["arm"] == arm]
            runs = [x for x in runs if x]
            for ri, (key, label, ylim) in enumerate(rows_of):
                ax = axes[2 * si + ri][col]
                series = []
                for rows in runs:
                    pts = [(x["alpha_steps"], x[key]) for x in rows if x.get(key) is not None]
                    if pts:
                        series.append(pts)
                        ax.plot(*zip(*pts, strict=True), lw=0.6, alpha=0.35, color=f"C{col}",
                                drawstyle="steps-post")
                if series:
                    grid, med, count = _median_course(series)
                    med = [m if 2 * n >= len(series) else math.nan
                           for m, n in zip(med, count, strict=True)]
                    ax.plot(grid, med, lw=2.0, color=f"C{col}", drawstyle="steps-post")
                ax.set(ylim=ylim)
                ax.grid(alpha=0.3)
                if ri == 0:
                    ax.set_title(f"{space}: {arm} ({len(runs)} seeds)", fontsize=9)
                if col == 0:
                    ax.set_ylabel(label)
                if 2 * si + ri == 2 * len(spaces) - 1:
                    ax.set_xlabel("alpha steps")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = collapse.build_parser()
    p.description = __doc__.splitlines()[0]
    p.set_defaults(out="runs/collapse_study", spaces=["nb201"], estimators=None, subset=1.0,
                   arch_lr=1e-2, max_alpha_steps=10000, seeds=list(range(8)),
                   plot=None)
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--reference", default="bench/results/cell_reference",
                   help="cell reference table (bench/cell_reference.py) for the percentiles; "
                        "'' for none")
    p.add_argument("--score_every", type=int, default=1000,
                   help="score the cell (CV accuracy, percentile) every N alpha steps (0: only "
                        "the final cell)")
    p.add_argument("--inspect", default=None, metavar="SEARCH_DIR",
                   help="print the per-run metrics of one search folder (writes its "
                        "trajectory.csv and cv_cache.jsonl there) and exit")
    p.add_argument("--diag_every", type=int, default=10,
                   help="epochs between alpha-Hessian eigenvalue / alignment measurements")
    p.add_argument("--table", nargs="+", default=None, metavar="ARCHIVE",
                   help="print one markdown row per finished run of these archives and exit")
    p.add_argument("--summary", nargs="+", default=None, metavar="ARCHIVE",
                   help="print the headline table (per setting and arm: degenerate runs, "
                        "median [range] of live parametric ops, percentile, CV accuracy) and "
                        "each setting's verdict line, and exit")
    p.add_argument("--heldout", nargs="+", default=None, metavar="ARCHIVE",
                   help="print the held-out exploratory tests (E1, E2 of the pre-registration "
                        "addendum) over these archives, each with its heldout.json, and exit")
    return p


def inspect(args: argparse.Namespace) -> int:
    """Per-run metrics of one search folder (a pilot run, or a study run in progress): its
    trajectory every ``--score_every`` alpha steps and its summary."""
    folder = Path(args.inspect)
    if not (folder / "metrics.jsonl").is_file():
        raise SystemExit(f"collapse_study.py: no metrics.jsonl in {folder}")
    config = json.loads((folder / "config.json").read_text())
    config = config.get("config", config)  # the CLI nests the resolved settings
    space = config.get("space", args.spaces[0])
    stable = config.get("until_converged") or 10
    scorer = CellScorer(args.reference, folder / "cv_cache.jsonl") if args.reference else None
    rows = run_trajectory(folder, space, scorer, args.score_every)
    write_rows(rows, folder / "trajectory.csv")
    print("| alpha steps | live parametric ops | disconnected | pf share (top / genotype) | "
          "kept-op weight min | valid acc | eig (alphas) | cos(g2', CG g2) | percentile | "
          "genotype |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---|")

    def fmt(v: float | None, f: str) -> str:
        return "-" if v is None else format(v, f)

    for r in rows:
        if r["percentile"] is None and r is not rows[-1]:
            continue
        g = json.loads(r["genotype"])
        print(f"| {r['alpha_steps']} | {r['live_parametric']} | {bool(r['disconnected'])} | "
              f"{r['pf_share']:.2f} / {r['pf_share_genotype']:.2f} | "
              f"{fmt(r['kept_weight_min'], '.3f')} | {fmt(r['valid_acc'], '.3f')} | "
              f"{fmt(r['eig_alphas'], '.3g')} | {fmt(r['cos_g2'], '.2f')} | "
              f"{fmt(r['percentile'], '.1f')} | `{g.get('nb201', '')}` |")
    print(json.dumps(run_summary(rows, stable)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.estimators:
        raise SystemExit("collapse_study.py: use --arms")
    if args.inspect:
        return inspect(args)
    if args.table:
        print(runs_table(args.table, args.reference), end="")
        return 0
    if args.summary:
        print(summary_table(args.summary, args.reference), end="")
        return 0
    if args.heldout:
        print(heldout_report(args.heldout, args.reference, len(args.seeds)), end="")
        return 0
    if args.report:
        print(report(args))
        return 0
    if args.archive:
        return archive(args)
    return run_study(args)


if __name__ == "__main__":
    sys.exit(main())
