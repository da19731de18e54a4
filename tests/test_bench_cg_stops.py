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


@pytest.mark.filterwarnings("ignore:implicit_cg. <v, .H . damping I. v>:RuntimeWarning")
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


@pytest.mark.filterwarnings("ignore:implicit_cg. <v, .H . damping I. v>:RuntimeWarning")
def test_spectrum_wraps_the_weight_hessian(tmp_path, monkeypatch) -> None:
    """--spectrum on a real tiny search, with H replaced by a known diagonal operator: the
    extremes and v'Hv / v'v it reports are that operator's (the flat <-> per-weight plumbing
    and the sign trick for lambda_min), v being the search's own validation gradient."""
    import contextlib

    import torch

    import darts_amend.hvp as hvp_mod
    from darts_amend.model import resolve_loss, split_parameters
    from darts_amend.tensorlist import flatten

    cg = load_bench("cg_stops")
    run = tmp_path / "run"
    assert main(["search", *TINY, "--epochs", "1", "--estimator", "implicit_cg",
                 "--cg_iterations", "2", "--output", str(run)]) == 0
    diag: dict = {}

    @contextlib.contextmanager
    def fake(net, batch, *, wrt="weights", loss_fn=None):
        _, weights = split_parameters(net)
        n = sum(w.numel() for w in weights)
        d = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
        d[0], d[-1] = -3.0, 5.0  # well separated extremes: Lanczos finds them in a few steps
        diag["d"] = d.to(weights[0].dtype)

        def hvp(u):
            flat = flatten(u) * diag["d"]
            out, i = [], 0
            for w in weights:
                out.append(flat[i:i + w.numel()].view_as(w))
                i += w.numel()
            return out

        yield hvp

    monkeypatch.setattr(hvp_mod, "hessian_matvec", fake)
    (row,) = cg.spectrum(run, pairs=1, iterations=40)
    assert row["lambda_max"] == pytest.approx(5.0, abs=1e-4)
    assert row["lambda_min"] == pytest.approx(-3.0, abs=1e-4) and row["converged"]
    op = cg._op_pressure()
    cfg = op.stored_config(run)
    net, train_set, split = op.build_state(cfg, run / "checkpoint.pt")
    ((tb, vb),) = op.batch_pairs(cfg, train_set, split, 1)
    v = flatten(torch.autograd.grad(resolve_loss(None)(net, *vb), split_parameters(net)[1]))
    expect = float((v * diag["d"] * v).sum() / (v @ v))
    assert row["rayleigh_v"] == pytest.approx(expect, rel=1e-5)
