"""bench/cg_stops.py: its counts are the sums of the per-step solver reports of a real
implicit_cg search (replayed step by step), and it refuses a search without them."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import (
    load_bench,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread per test)
)

from darts_amend import AmendedArchitect
from darts_amend.cli import main

TINY = ["--dataset", "fake", "--fake_size", "16", "--image_size", "8", "--space", "s1",
        "--layers", "2", "--init_channels", "4", "--batch_size", "4", "--threads", "1",
        "--no-progress", "--no-plots", "-q", "--epochs", "3"]


def test_counts_match_the_steps_solver_reports(tmp_path, monkeypatch, capsys) -> None:
    cg = load_bench("cg_stops")
    seen = []
    orig = AmendedArchitect.step

    def step(self, *a, **k):
        info = orig(self, *a, **k)
        seen.append(info.solver)
        return info

    monkeypatch.setattr(AmendedArchitect, "step", step)
    run = tmp_path / "run"
    assert main(["search", *TINY, "--estimator", "implicit_cg", "--cg_iterations", "3",
                 "--output", str(run)]) == 0
    monkeypatch.undo()
    assert seen and all(s["cg_stop"] in ("tol", "iterations", "curvature") for s in seen)
    curv = sum(s["cg_stop"] == "curvature" for s in seen)
    first = sum(s["cg_stop"] == "curvature" and s["cg_iterations"] == 0 for s in seen)
    iters = sum(s["cg_iterations"] for s in seen) / len(seen)
    rows = cg.epochs(run)
    assert sum(r["steps"] for r in rows) == len(seen)
    assert sum(r["cg_curvature_stops"] for r in rows) == curv
    assert sum(r["cg_first_direction_stops"] for r in rows) == first
    capsys.readouterr()
    assert cg.main([str(run), "--csv", str(tmp_path / "csv")]) == 0
    out = capsys.readouterr().out
    pct = f"{100 * curv / len(seen):.0f}%"
    assert f"| run | 3 | all | {len(seen):,} | {curv:,} ({pct}) |" in out
    assert f"| {iters:.2f} |" in out.splitlines()[2]
    back = list(csv.DictReader(open(tmp_path / "csv" / "run.csv")))
    assert [int(r["alpha_steps"]) for r in back] == [r["alpha_steps"] for r in rows]
    # a search of another estimator has no arch/cg_* metrics: refused by name
    other = tmp_path / "fo"
    assert main(["search", *TINY, "--epochs", "1", "--output", str(other)]) == 0
    with pytest.raises(SystemExit, match="no arch/cg_"):
        cg.epochs(other)
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        cg.epochs(tmp_path / "missing")
    assert json.loads((run / "summary.json").read_text())["alpha_steps"] == len(seen)
