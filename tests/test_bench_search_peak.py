"""bench/search_peak.py (the search part of bench/device_check.sh) runs the CLI on CPU too."""
from __future__ import annotations

import tempfile

from helpers import load_bench


def test_search_peak_reports_a_row_per_estimator_and_leaves_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its run folders go here
    module = load_bench("search_peak")
    assert module.main(["--device", "cpu", "--layers", "2", "--init_channels", "2",
                        "--batch_size", "4", "--fake_size", "16", "--epochs", "1",
                        "--threads", "1", "--estimators", "first_order"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| first_order |")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0  # s / epoch, wall s
    assert int(cells[3]) == 2  # 8 alpha images / batch 4
    assert float(cells[4]) > 0  # peak MiB
    assert "search finished" not in out  # the CLI's own report is kept out of the table
    assert not list(tmp_path.glob("search_peak-*"))  # the run folder was removed


def test_search_peak_profile_writes_the_operator_table(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = load_bench("search_peak")
    from darts_amend.cli import search as cli_search

    hook = cli_search._on_step
    out = tmp_path / "profile.txt"
    # 2 epochs of 2 steps: one skipped, one warm-up, 2 profiled
    assert module.main(["--device", "cpu", "--layers", "2", "--init_channels", "2",
                        "--batch_size", "4", "--fake_size", "16", "--epochs", "2",
                        "--threads", "1", "--estimators", "first_order",
                        "--profile", str(out), "--profile_steps", "2"]) == 0
    text = out.read_text()
    assert text.startswith("2 search steps profiled (cpu)")
    assert "Self CPU" in text and "aten::" in text and "nothing recorded" not in text
    assert cli_search._on_step is hook  # the loop's hook is put back
    assert "| first_order (profiled) |" in capsys.readouterr().out
    # too few steps for the schedule: the file says so instead of an empty table
    assert module.main(["--device", "cpu", "--layers", "2", "--init_channels", "2",
                        "--batch_size", "4", "--fake_size", "16", "--epochs", "1",
                        "--threads", "1", "--estimators", "first_order",
                        "--profile", str(out), "--profile_steps", "2"]) == 0
    assert "nothing recorded" in out.read_text()
