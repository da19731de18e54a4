"""bench/collapse_study.py: the exact Mann-Whitney test against scipy, the report and the
pre-registered verdict on a tiny fake archive, and a micro study that resumes from its archive."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from helpers import (
    load_bench,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread per test)
)


@pytest.fixture(scope="module")
def study():
    return load_bench("collapse_study")


def test_mann_whitney_matches_scipy(study) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [3.1, 4.2, 5.0, 6.3, 7.7, 8.1], [1.0, 2.5, 3.3, 4.0, 4.4, 9.9, 0.2]
    ours = study.mann_whitney_greater(x, y)
    ref = scipy_stats.mannwhitneyu(x, y, alternative="greater", method="exact")
    assert ours["U"] == ref.statistic and ours["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    # complete separation, 8 against 8: p = 1 / C(16, 8)
    top = study.mann_whitney_greater(list(range(10, 18)), list(range(8)))
    assert top["p"] == pytest.approx(1 / math.comb(16, 8)) and top["A"] == 1.0
    assert top["hl"] == 10.0
    # ties (integer counts): the exact permutation distribution of U
    a, b = [0, 1, 1, 2, 3, 3, 4, 4], [0, 0, 1, 1, 1, 2, 2, 3]

    def u_stat(p, q, axis=-1):
        import numpy as np

        p, q = np.asarray(p), np.asarray(q)
        return ((p[..., :, None] > q[..., None, :]).sum((-1, -2))
                + 0.5 * (p[..., :, None] == q[..., None, :]).sum((-1, -2)))

    perm = scipy_stats.permutation_test((a, b), u_stat, permutation_type="independent",
                                        alternative="greater", n_resamples=math.inf,
                                        vectorized=True)
    ours = study.mann_whitney_greater(a, b)
    assert ours["U"] == perm.statistic and ours["p"] == pytest.approx(perm.pvalue, rel=1e-9)
    assert ours["A"] == pytest.approx(perm.statistic / 64)
    # the normal approximation (large samples) is close to the exact value
    big_x, big_y = [i * 0.37 % 5 for i in range(14)], [i * 0.29 % 4 for i in range(13)]
    exact = scipy_stats.mannwhitneyu(big_x, big_y, alternative="greater", method="asymptotic")
    assert study.mann_whitney_greater(big_x, big_y)["p"] == pytest.approx(exact.pvalue, abs=1e-6)
    with pytest.raises(ValueError):
        study.mann_whitney_greater([], [1.0])


def _fake_run(root: Path, arm: str, seed: int, live: int, pct: float, study) -> dict:
    run = root / "nb201" / f"{arm}-s{seed}"
    run.mkdir(parents=True)
    g = {"format": "darts-amend-genotype/1", "nb201": "|skip_connect~0|+|none~0|none~1|+"
         "|none~0|none~1|skip_connect~2|" if live == 0 else
         "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|"}
    rows = []
    for k, steps in enumerate((100, 200, 300)):
        rows.append({"alpha_steps": steps, "pf_share": 0.5, "pf_share_genotype": 0.5,
                     "kept_weight_min": 0.3 + 0.1 * k, "converged_epochs": k,
                     "live_parametric": live, "disconnected": 0, "degenerate": int(live == 0),
                     "valid_acc": 0.9, "eig_alphas": 1.0 + k, "cos_g2": 0.5,
                     "percentile": pct if k != 1 else None, "cv_acc": 0.98 if k != 1 else None,
                     "genotype": json.dumps(g, separators=(",", ":")), "step_seconds": 0.1,
                     "epoch_seconds": 1.0})
    study.write_rows(rows, run / "trajectory.csv")
    back = study.read_rows(run / "trajectory.csv")
    assert back[1]["percentile"] is None and back[0]["live_parametric"] == live
    s = study.run_summary(back, stable=2)
    assert s["steps_to_rule"] == 300 and s["eig_max"] == 3.0 and s["percentile"] == pct
    return {"space": "nb201", "arm": arm, "seed": seed, "stop_reason": "epochs",
            "converged": False, **s}


def _fake_archive(root: Path, study, amended_live: list[int], amended_pct: list[float],
                  seeds: int = 8) -> None:
    root.mkdir()
    results = []
    for seed in range(seeds):
        results.append(_fake_run(root, "first_order", seed, 0, 10.0 + seed, study))
        results.append(_fake_run(root, "unrolled_fd", seed, 0 if seed else 1, 5.0 + seed, study))
        results.append(_fake_run(root, "amended_0.1", seed, amended_live[seed],
                                 amended_pct[seed], study))
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))


def test_report_and_verdict_on_a_fake_archive(study, tmp_path) -> None:
    root = tmp_path / "confirm"
    _fake_archive(root, study, [1] * 8, [60.0 + s for s in range(8)])
    plot = tmp_path / "p.png"
    text = study.report(study.build_parser().parse_args(["--out", str(root), "--report",
                                                         "--reference", "", "--plot", str(plot)]))
    assert plot.is_file() and (root / "report.md").read_text() == text
    assert "| first_order | 8 | 0 | 8 | 0 | 0.00 +- 0.00 [0.00, 0.00] (n=8) | 13.5 +-" in text
    assert "| amended_0.1 | 8 | 0 | 0 | 0 | 1.00 +- 0.00 [1.00, 1.00] (n=8) | 63.5 +-" in text
    p = 1 / math.comb(16, 8)
    assert f"| amended_0.1 | first_order | p = {p:.3g}, A = 1.00, HL = +50.00 |" in text
    assert "Degenerate runs: first_order 8/8, unrolled_fd 7/8, amended_0.1 0/8" in text
    assert "Verdict: CONFIRMED" in text
    # amended as degenerate as first order: refuted
    root2 = tmp_path / "refute"
    _fake_archive(root2, study, [0] * 8, [60.0 + s for s in range(8)])
    assert "Verdict: REFUTED" in "\n".join(study.verdict(_by_arm(root2, study)))
    # amended connected but not better ranked: p > 0.1 also refutes; in between: inconclusive
    root3 = tmp_path / "mixed"
    _fake_archive(root3, study, [1] * 8, [9.0 + 1.01 * s for s in range(8)])
    lines = study.verdict(_by_arm(root3, study))
    assert "Verdict: REFUTED" in lines[-1], lines
    root4 = tmp_path / "few"
    _fake_archive(root4, study, [1] * 3, [60.0] * 3, seeds=3)
    assert study.verdict(_by_arm(root4, study))[0].startswith("Verdict: not yet")
    # 3 connected first-order seeds of 8: C1 can no longer hold, with runs still missing
    few = _by_arm(root4, study)
    for r in few["first_order"]:
        r["degenerate"] = False
    (line,) = study.verdict(few)
    assert line.startswith("Verdict: C1 fails whatever the remaining runs give (first_order: "
                           "3 of 3 finished seeds not degenerate;"), line
    few["first_order"][0]["degenerate"] = True  # 2 connected: still open
    assert study.verdict(few)[0].startswith("Verdict: not yet")
    no_ref = _by_arm(root, study)
    for r in no_ref["first_order"]:
        r["percentile"] = None
    assert study.verdict(no_ref)[0].startswith("Verdict: none for this space")


def _by_arm(root: Path, study) -> dict:
    out: dict = {}
    for r in study._results(root):
        out.setdefault(r["arm"], []).append(r)
    return out


MICRO = ["--subset", "0.1", "--channels", "2", "--batch_size", "16", "--steps_per_epoch", "2",
         "--max_alpha_steps", "4", "--stable", "1", "--arch_lr", "0.03", "--diag_every", "1",
         "--score_every", "2", "--inprocess"]


@pytest.mark.filterwarnings("ignore:implicit_cg. <v, .H . damping I. v>:RuntimeWarning")
def test_micro_study_resumes_from_its_archive(study, tmp_path, capsys) -> None:
    ref = load_bench("cell_reference")
    table = tmp_path / "reference"
    assert ref.main(["--out", str(table), "--cells", "3", "--folds", "2", "--epochs", "1",
                     "--channels", "2", "--batch_size", "128"]) == 0
    out = tmp_path / "study"
    base = ["--out", str(out), "--reference", str(table), "--plot", str(tmp_path / "s.png"),
            *MICRO]
    assert study.main([*base, "--arms", "first_order", "--seeds", "0"]) == 0
    (r0,) = study._results(out)
    assert r0["arm"] == "first_order" and r0["alpha_steps"] == 4
    assert 0.0 <= r0["percentile"] <= 100.0 and 0.0 <= r0["cv_acc"] <= 1.0
    assert r0["eig_last"] is not None and r0["cos_g2_mean"] is not None
    rows = study.read_rows(out / "nb201" / "first_order-s0" / "trajectory.csv")
    assert [x["alpha_steps"] for x in rows] == [2, 4]
    assert all(x["percentile"] is not None for x in rows)  # scored at 2 and at the end
    # --inspect of one search folder reads its space from the CLI's config.json
    capsys.readouterr()
    assert study.main(["--inspect", str(out / "nb201" / "first_order-s0" / "search"),
                       "--reference", "", "--spaces", "s3r"]) == 0
    assert '"alpha_steps": 4' in capsys.readouterr().out
    # archive, continue from a copy of it with a second seed: seed 0 is not run again
    arch = tmp_path / "archive"
    assert study.main(["--out", str(out), "--archive", str(arch)]) == 0
    assert not list(arch.rglob("checkpoint.pt")) and not list(arch.rglob("metrics.jsonl"))
    again = tmp_path / "again"
    shutil.copytree(arch, again)
    capsys.readouterr()
    base[1] = str(again)
    assert study.main([*base, "--arms", "first_order", "--seeds", "0", "1", "--resume"]) == 0
    assert "1 runs to do, 1 finished" in capsys.readouterr().out
    res = {r["seed"]: r for r in study._results(again)}
    assert sorted(res) == [0, 1] and res[0] == r0
    with pytest.raises(SystemExit):  # other settings than the archived study
        study.main([*base, "--arms", "first_order", "--resume", "--max_alpha_steps", "8"])
    text = (again / "report.md").read_text()
    assert "| first_order | 2 |" in text and "Verdict: not yet" in text
    assert "Reference percentiles against" in text and "(3 cells)" in text
    # the report re-scores the runs' CV accuracies against the table as it is now
    with open(table / "cells.jsonl", "a") as fh:
        for k in range(5):
            fh.write(json.dumps({"genotype": ref.sample_cells(9, 0)[3 + k][0],
                                 "acc": 2.0, "nll": 0.0, "n": 1797}) + "\n")
    before = study._results(again)
    args = study.build_parser().parse_args([*base, "--report", "--plot", ""])
    text = study.report(args)
    assert "(8 cells)" in text and study._results(again) == before  # stored rows unchanged
    # every run's cell is now below the 5 added rows: percentile <= 3/8, as recomputed here
    pct = [float(x) for x in text.split("| first_order | 2 |")[1].split("|")[4].split()[:1]]
    assert "reference percentile" in text.split("| first_order | 2 |")[0].split("\n")[-3]
    accs = [t["acc"] for t in ref.load_table(table)]
    expected = statistics.fmean(ref.percentile(r["cv_acc"], accs) for r in before)
    assert pct and pct[0] == pytest.approx(expected, abs=0.051) and pct[0] <= 100 * 3 / 8
    with open(again / "nb201" / "first_order-s1" / "trajectory.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(study.TRAJ_FIELDS)
    # archiving merges: a folder with only seed 1 adds it to the archive that holds seed 0
    only1 = tmp_path / "only1"
    (only1 / "nb201").mkdir(parents=True)
    shutil.copy2(again / "study.json", only1 / "study.json")
    shutil.copytree(again / "nb201" / "first_order-s1", only1 / "nb201" / "first_order-s1")
    (only1 / "results.jsonl").write_text(json.dumps(res[1]) + "\n")
    assert study.main(["--out", str(only1), "--archive", str(arch)]) == 0
    merged = {r["seed"]: r for r in study._results(arch)}
    assert merged == res and (arch / "nb201" / "first_order-s1" / "trajectory.csv").is_file()
    cache = (arch / "cv_cache.jsonl").read_text().splitlines()
    assert len(cache) == len(set(cache))  # lines merged, none twice
    # another study's folder is refused, the archive unchanged
    other = tmp_path / "other"
    other.mkdir()
    st = json.loads((again / "study.json").read_text())
    (other / "study.json").write_text(json.dumps({**st, "arch_lr": 0.5}))
    before = (arch / "results.jsonl").read_text()
    with pytest.raises(SystemExit, match="different studies.*arch_lr"):
        study.main(["--out", str(other), "--archive", str(arch)])
    assert (arch / "results.jsonl").read_text() == before


def test_fisher_matches_scipy_and_input_edge_pattern(study) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for table in ([[12, 4], [1, 31]], [[0, 5], [3, 2]], [[3, 0], [0, 3]], [[2, 2], [2, 2]]):
        ref = scipy_stats.fisher_exact(table, alternative="greater").pvalue
        assert study.fisher_greater(*table[0], *table[1]) == pytest.approx(ref, rel=1e-12)
    # complete separation 3 against 3: 1 / C(6, 3)
    assert study.fisher_greater(3, 0, 0, 3) == pytest.approx(1 / 20)
    with pytest.raises(ValueError):
        study.fisher_greater(-1, 0, 0, 0)
    cut = {"nb201": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"}
    one = {"nb201": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|none~2|"}
    other = {"nb201": "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|none~2|"}
    assert study.input_edges_none(cut)
    assert not study.input_edges_none(one) and not study.input_edges_none(other)


def test_heldout_report_counts_only_unseen_runs(study, tmp_path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    pattern = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"
    plain = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|none~1|none~2|"
    results = []
    for seed in range(4):
        for arm, pct in (("first_order", 60.0), ("unrolled_fd", 70.0), ("amended_0.1", 10.0),
                         ("amended_1", 5.0), ("unrolled_exact", 50.0), ("implicit_cg", 40.0)):
            amended = arm.startswith("amended")
            # the seen seed 0 contradicts both hypotheses; it must not count
            if seed == 0:
                pct, amended = 100.0 - pct, not amended
            results.append({"space": "nb201", "arm": arm, "seed": seed, "cv_acc": None,
                            "percentile": pct + seed,
                            "genotype": {"nb201": pattern if amended else plain}})
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (root / "study.json").write_text(json.dumps({"subset": 1.0}))
    seen = [[a, 0] for a in ("first_order", "unrolled_fd", "amended_0.1", "amended_1",
                             "unrolled_exact", "implicit_cg")]
    (root / "heldout.json").write_text(json.dumps({"seen": seen}))
    text = study.heldout_report([str(root)], reference="", seeds=4)
    # held-out: amended_0.1 at 11, 12, 13 against 61-63 / 71-73: complete separation, 3 vs 3
    row = "| first_order | held-out | 11.0, 12.0, 13.0 | 61.0, 62.0, 63.0 | 0.05 | 0.00 | -50.0 |"
    assert row in text
    assert "E1: supported" not in text and "E1: undecided (0.05 <= p <= 0.2)." in text
    # E2: 6 of 6 amended against 0 of 12 others held out: p = 1 / C(18, 6)
    assert f"| held-out | 6 / 6 | 0 / 12 | {1 / math.comb(18, 6):.3g} |" in text
    assert "| all (not a test) | 6 / 8 | 4 / 16 | - |" in text
    assert "E2: supported (p < 0.01)." in text
    # a held-out run still missing: both pending
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results[:-1]))
    text = study.heldout_report([str(root)], reference="", seeds=4)
    assert "E2: pending" in text and "implicit_cg 2/3" in text
    (root / "heldout.json").unlink()
    with pytest.raises(SystemExit, match="no heldout.json"):
        study.heldout_report([str(root)], reference="", seeds=4)


def test_runs_table_rows(study, tmp_path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "study.json").write_text(json.dumps({"subset": 0.2}))
    base = {"space": "nb201", "converged": True, "stop_reason": "converged",
            "alpha_steps": 1234, "disconnected": False, "degenerate": False,
            "live_parametric": 2, "percentile": 40.0, "cv_acc": 0.98891}
    rows = [
        {**base, "arm": "amended_1", "seed": 1, "genotype": {"nb201": "|nor_conv_3x3~0|+|none~0|"
         "nor_conv_1x1~1|+|none~0|skip_connect~1|none~2|"}},
        {**base, "arm": "first_order", "seed": 0, "converged": False, "stop_reason": "epochs",
         "alpha_steps": 10005, "degenerate": True, "live_parametric": 0,
         "genotype": {"nb201": "|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
                      "|skip_connect~0|skip_connect~1|skip_connect~2|"}},
    ]
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # amended_1's trajectory: the input-edge pattern at steps 20 and 40 of 10, 20, 30, 40
    g_yes = json.dumps(rows[0]["genotype"], separators=(",", ":"))
    g_no = json.dumps(rows[1]["genotype"], separators=(",", ":"))
    traj = [{"alpha_steps": k, "genotype": g} for k, g in
            ((10, g_no), (20, g_yes), (30, g_no), (40, g_yes))]
    (root / "nb201" / "amended_1-s1").mkdir(parents=True)
    study.write_rows(traj, root / "nb201" / "amended_1-s1" / "trajectory.csv")
    text = study.runs_table([str(root)], reference="")
    body = text.splitlines()[2:]
    assert body == [  # arms in the study's order, then seeds; no heldout.json needed
        "| S | first_order | 0 | cap | 10,005 | 0 | yes (all-skip) | 40.0 | 0.9889 | 0 / 6 | - |",
        "| S | amended_1 | 1 | rule | 1,234 | 2 | no | 40.0 | 0.9889 | 3 / 1 | 20 / 0.50 |",
    ]


def test_summary_table_rows_and_verdicts(study, tmp_path) -> None:
    confirm = tmp_path / "w"
    _fake_archive(confirm, study, [1] * 8, [60.0 + s for s in range(8)])
    (confirm / "study.json").write_text(json.dumps({"subset": 1.0}))
    few = tmp_path / "s"
    _fake_archive(few, study, [1, 0, 1], [60.0, 0.2, 61.0], seeds=3)
    (few / "study.json").write_text(json.dumps({"subset": 0.2}))
    rows = [json.loads(x) for x in (few / "results.jsonl").read_text().splitlines()]
    assert (rows[5]["arm"], rows[5]["seed"]) == ("amended_0.1", 1)
    rows[5].update(disconnected=True, cv_acc=0.1013)  # a cut-off amended cell
    (few / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    text = study.summary_table([str(confirm), str(few)], reference="")
    lines = text.splitlines()
    # medians: first order percentiles 10..17 -> 13.5; fake runs have CV accuracy 0.98
    assert lines[2] == ("| W | first_order | 8 | 0 | 8 | 0 | 0 [0, 0] | 13.5 [10.0, 17.0] | "
                        "0.9800 [0.9800, 0.9800] |")
    assert lines[4] == ("| W | amended_0.1 | 8 | 0 | 0 | 0 | 1 [1, 1] | 63.5 [60.0, 67.0] | "
                        "0.9800 [0.9800, 0.9800] |")
    assert lines[7] == ("| S | amended_0.1 | 3 | 0 | 1 | 1 | 1 [0, 1] | 60.0 [0.2, 61.0] | "
                        "0.9800 [0.1013, 0.9800] |")
    assert lines[-2].startswith("W: Verdict: CONFIRMED")
    assert lines[-1].startswith("S: Verdict: not yet")
    with pytest.raises(SystemExit, match="holds no study"):
        study.summary_table([str(tmp_path / "nowhere")], reference="")


def test_median_course_holds_values_and_drops_finished_runs(study) -> None:
    # run a: logged at 0, 10, 20; run b at 0, 5 (then stopped); run c at 10, 30
    a = [(0, 1.0), (10, 3.0), (20, 5.0)]
    b = [(0, 2.0), (5, 0.0)]
    c = [(10, 6.0), (30, 4.0)]
    grid, med, count = study._median_course([a, b, c])
    assert grid == [0, 5, 10, 20, 30]
    assert count == [2, 2, 2, 2, 1]
    # step 0: a 1, b 2 -> 1.5; step 5: a 1 (held), b 0 -> 0.5; step 10: a 3, c 6 (b has
    # stopped) -> 4.5; step 20: a 5, c 6 -> 5.5; step 30: c 4 only (a stopped at 20)
    assert med == [1.5, 0.5, 4.5, 5.5, 4.0]
