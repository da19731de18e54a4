"""bench/collapse.py end to end on a micro study (in-process): runs, trajectories, results,
report, and --resume (finished runs skipped, a time-limited run continued from its checkpoint)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

_PATH = Path(__file__).resolve().parents[1] / "bench" / "collapse.py"


@pytest.fixture(scope="module")
def collapse():
    spec = importlib.util.spec_from_file_location("bench_collapse", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MICRO = ["--subset", "0.1", "--layers", "3", "--nb201_layers", "1", "--channels", "2",
         "--batch_size", "16", "--steps_per_epoch", "2", "--max_alpha_steps", "4",
         "--stable", "1", "--train_epochs", "1", "--train_channels", "2", "--train_layers", "1",
         "--inprocess"]


def _results(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_estimator_labels(collapse) -> None:
    assert collapse.estimator_flags("amended_0.1") == [
        "--estimator", "amended", "--eta", "0.1", "--hvp_mode", "exact"]
    assert collapse.estimator_flags("unrolled")[-1] == "finite_difference"
    with pytest.raises(ValueError):
        collapse.estimator_flags("amended_x")
    assert collapse.estimator_flags("implicit_cg_d1") == [
        "--estimator", "implicit_cg", "--hvp_mode", "exact", "--cg_iterations", "10",
        "--cg_damping", "1"]
    for bad in ("implicit_cg_d0", "implicit_cg_dx", "implicit_cg_d-1"):
        with pytest.raises(ValueError, match="implicit_cg_d<damping > 0>"):
            collapse.estimator_flags(bad)
    assert collapse.threshold_for("s2r", None) == 0.8
    assert collapse.threshold_for("nb201", None) == 0.5


def test_micro_study_runs_resumes_and_reports(collapse, tmp_path, capsys) -> None:
    out = tmp_path / "study"
    plot = tmp_path / "collapse.png"
    base = ["--out", str(out), "--plot", str(plot), *MICRO]
    # nb201, first order: finishes; s2r amended: stops after its first epoch (time limit)
    assert collapse.main([*base, "--spaces", "nb201", "--estimators", "first_order",
                          "--seeds", "0"]) == 0
    rows = _results(out)
    assert len(rows) == 1 and rows[0]["alpha_steps"] == 4 and rows[0]["stop_reason"] == "epochs"
    assert 0.0 <= rows[0]["pf_share"] <= 1.0 and 0.0 <= rows[0]["test_acc"] <= 1.0
    traj = (out / "nb201" / "first_order-s0" / "trajectory.csv").read_text().splitlines()
    assert traj[0].startswith("alpha_steps,pf_share") and [r.split(",")[0] for r in traj[1:]] == [
        "2", "4"]
    # a second study in the same folder needs --resume
    with pytest.raises(SystemExit):
        collapse.main([*base, "--spaces", "nb201"])
    assert collapse.main([*base, "--resume", "--spaces", "s2r", "--estimators", "amended_1",
                          "--seeds", "1", "--run_time_limit", "1e-6"]) == 0
    assert len(_results(out)) == 1  # time-limited: not finished
    search = out / "s2r" / "amended_1-s1" / "search"
    assert json.loads((search / "summary.json").read_text())["stop_reason"] == "time_limit"
    capsys.readouterr()
    # resume: the time-limited run continues from its checkpoint to the cap ...
    assert collapse.main([*base, "--resume", "--spaces", "s2r", "--estimators", "amended_1",
                          "--seeds", "1"]) == 0
    rows = {(r["space"], r["estimator"], r["seed"]): r for r in _results(out)}
    assert len(rows) == 2 and rows[("s2r", "amended_1", 1)]["alpha_steps"] == 4
    # ... and a finished run is skipped
    capsys.readouterr()
    assert collapse.main([*base, "--resume", "--spaces", "nb201", "--estimators", "first_order",
                          "--seeds", "0"]) == 0
    assert "0 runs to do, 2 finished" in capsys.readouterr().out
    assert len(_results(out)) == 2
    metrics = (search / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["alpha_steps"] for x in metrics] == [2, 4]
    # different settings on --resume are refused
    with pytest.raises(SystemExit):
        collapse.main([*base[:-1], "--arch_lr", "0.5", "--resume", "--inprocess"])
    assert collapse.main(["--out", str(out), "--plot", str(plot), "--report"]) == 0
    report = (out / "report.md").read_text()
    assert "### nb201" in report and "### s2r" in report and plot.stat().st_size > 0
    assert "| first_order | 0 | 4 | cap |" in report and "| amended_1 | 1 | 4 | cap |" in report
    assert "+-" in report
    assert "\\|" in report  # NB201 strings escaped inside table cells
    # --archive keeps what the report needs, no checkpoints or metrics; the report reads it back
    # with the same tables, and a copy of it under a new --out resumes with nothing to redo
    archived = tmp_path / "archive"
    assert collapse.main(["--out", str(out), "--archive", str(archived)]) == 0
    files = [p.name for p in archived.rglob("*") if p.is_file()]
    assert "results.jsonl" in files and "trajectory.csv" in files
    assert not [f for f in files if f.endswith(".pt") or f == "metrics.jsonl"]
    plot2 = tmp_path / "archived.png"
    assert collapse.main(["--out", str(archived), "--plot", str(plot2), "--report"]) == 0
    tables = [ln for ln in report.splitlines() if ln.startswith("|")]
    assert tables and tables == [
        ln for ln in (archived / "report.md").read_text().splitlines() if ln.startswith("|")]
    assert plot2.stat().st_size > 0
    for space, run in (("nb201", "first_order-s0"), ("s2r", "amended_1-s1")):
        # the archived trajectory.csv gives back what metrics.jsonl gave, value for value
        assert collapse.trajectory(archived / space / run / "search", space) == \
            collapse.trajectory(out / space / run / "search", space)
    moved = tmp_path / "continued"
    shutil.copytree(archived, moved)
    capsys.readouterr()
    assert collapse.main(["--out", str(moved), "--plot", str(plot2), *MICRO, "--resume",
                          "--spaces", "nb201", "--estimators", "first_order", "--seeds", "0"]) == 0
    assert "0 runs to do, 2 finished" in capsys.readouterr().out
