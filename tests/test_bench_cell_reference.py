"""bench/cell_reference.py: sampling of distinct cells, folds, percentile scoring on a tiny table,
and an append-only table that resumes (also from a copy of the committed table)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

_PATH = Path(__file__).resolve().parents[1] / "bench" / "cell_reference.py"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("bench_cell_reference", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_percentile_on_a_tiny_table(ref) -> None:
    table = [0.90, 0.95, 0.95, 0.97, 0.99]
    assert ref.percentile(0.80, table) == 0.0
    assert ref.percentile(1.00, table) == 100.0
    assert ref.percentile(0.95, table) == pytest.approx(100 * (1 + 0.5 * 2) / 5)  # mid-rank: 40
    assert ref.percentile(0.96, table) == pytest.approx(60.0)
    assert ref.percentile(0.97, table) == pytest.approx(70.0)
    with pytest.raises(ValueError):
        ref.percentile(0.5, [])


def test_score_cell_matches_isomorphic_rows(ref) -> None:
    from darts_amend.diagnostics.paths import nb201_canonical
    from darts_amend.supernet import NB201Genotype

    cells = ["|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|skip_connect~2|",
             "|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|",
             "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]
    table = [{"canonical": nb201_canonical(NB201Genotype.from_string(g)), "acc": a}
             for g, a in zip(cells, [0.99, 0.95, 0.10], strict=True)]
    # nodes 1 and 2 swapped: the same cell, found in the table
    swapped = "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|"
    s = ref.score_cell(swapped, table)
    assert s["in_table"] and s["acc"] == 0.99 and s["percentile"] == pytest.approx(100 * 2.5 / 3)
    assert ref.score_cell(swapped, table, acc=0.5)["percentile"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        ref.score_cell("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|", table)


def test_sample_cells_distinct_and_prefix_stable(ref) -> None:
    a = ref.sample_cells(40, seed=3)
    b = ref.sample_cells(60, seed=3)
    assert b[:40] == a and len({k for _, k in b}) == 60
    assert ref.sample_cells(40, seed=4) != a


def test_stratified_folds_cover_each_index_once(ref) -> None:
    labels = [i % 10 for i in range(1797)]
    folds = ref.stratified_folds(labels, 5, seed=0)
    flat = sorted(i for f in folds for i in f)
    assert flat == list(range(1797))
    assert {len(f) for f in folds} <= {359, 360}
    for f in folds:  # every class in every fold, within one image of even
        counts = [sum(labels[i] == c for i in f) for c in range(10)]
        assert max(counts) - min(counts) <= 1


TINY = ["--folds", "2", "--epochs", "1", "--channels", "2", "--batch_size", "128"]


def test_table_appends_and_resumes(ref, tmp_path, capsys) -> None:
    out = tmp_path / "ref"
    assert ref.main(["--out", str(out), "--cells", "2", *TINY]) == 0
    rows = ref.load_table(out)
    assert [r["index"] for r in rows] == [0, 1]
    r = rows[0]
    assert r["n"] == 1797 and len(r["folds"]) == 2 and 0.0 <= r["acc"] <= 1.0 and r["nll"] > 0
    assert r["correct"] == sum(round(f["acc"] * f["n"]) for f in r["folds"])
    assert set(r["paths"]) >= {"live_parametric", "disconnected", "degenerate"}
    with pytest.raises(SystemExit):  # a table is there: --resume needed
        ref.main(["--out", str(out), "--cells", "3", *TINY])
    with pytest.raises(SystemExit):  # another protocol
        ref.main(["--out", str(out), "--cells", "3", "--resume", *TINY[:-2], "--batch_size", "64"])
    # resume from a copy (as from the committed table): only the third cell is evaluated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "cells.jsonl", "a") as fh:
        fh.write('{"index": 9, "genotype": "torn')  # a line cut by a kill mid-write
    capsys.readouterr()
    assert ref.main(["--out", str(copy), "--cells", "3", "--resume", *TINY]) == 0
    assert "1 of 3 cells to do" in capsys.readouterr().out
    rows3 = ref.load_table(copy)
    assert [x["index"] for x in rows3] == [0, 1, 2] and rows3[:2] == rows
    # same protocol, same cell: the evaluation is deterministic (fixed seeds, one thread)
    again = ref.evaluate_cell(r["genotype"], json.loads((out / "protocol.json").read_text()))
    assert again["correct"] == r["correct"] and again["nll"] == pytest.approx(r["nll"], rel=1e-6)
    assert "cells: 3" in (copy / "summary.md").read_text()
