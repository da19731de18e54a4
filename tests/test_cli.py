"""`darts-amend` in-process through main(argv): files written, exact resume, train, bad input.

Everything is tiny (C=4, 2-3 cells, 8x8 images, 2 steps per epoch, one thread); one search run
is shared by the tests that only read its folder.
"""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from darts_amend.cli import main
from darts_amend.cli import search as search_mod
from darts_amend.cli import train as train_mod

TINY = ["--dataset", "fake", "--fake_size", "16", "--image_size", "8", "--space", "s1",
        "--layers", "2", "--init_channels", "4", "--batch_size", "4", "--steps_per_epoch", "2",
        "--threads", "1", "--no-progress", "--no-plots", "-q"]
TIMING = {"epoch_seconds", "step_seconds", "diag/seconds"}


def _search(out, *extra: str) -> int:
    return main(["search", *TINY, "--epochs", "2", "--output", str(out), *extra])


def _ckpt(path):
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)


def _lines(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "search"
    assert _search(out) == 0
    return out


def test_search_writes_run_files(search_run):
    from darts_amend.supernet import Genotype, build_search_network

    names = {p.name for p in search_run.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "genotype.json",
            "summary.json"} <= names
    config = json.loads((search_run / "config.json").read_text())
    assert config["command"] == "search" and config["config"]["init_channels"] == 4
    assert config["config"]["arch_learning_rate"] == 3e-4  # the paper's default survived
    rows = _lines(search_run)
    assert [r["epoch"] for r in rows] == [1, 2]  # numbered as on the console: epoch 1/2, 2/2
    assert [r["alpha_steps"] for r in rows] == [2, 4]
    for key in ("train_loss", "valid_acc", "lr", "alphas", "genotype", "arch/g1_norm",
                "arch/g2_norm", "arch/cosine", "collapse/skip_share", "collapse/entropy_mean",
                "collapse/kept_weight_min", "epoch_seconds"):
        assert key in rows[-1], key
    assert rows[-1]["arch/g2_norm"] > 0  # amended: the second term is really there
    assert rows[0]["lr"] == pytest.approx(0.025) and rows[1]["lr"] < rows[0]["lr"]  # cosine
    # ground truth: the checkpoint's alphas give the genotype and softmax that were recorded
    ck = _ckpt(search_run)
    assert ck["epoch"] == 2 and ck["step"] == 0
    net = build_search_network("s1", C=4, num_classes=10, layers=2, in_channels=3)
    net.load_state_dict(ck["model"])
    genotype = Genotype.from_json((search_run / "genotype.json").read_text())
    assert genotype == net.genotype()
    assert rows[-1]["genotype"] == genotype.to_dict()
    for kind, w in net.edge_weights().items():
        assert torch.equal(torch.tensor(rows[-1]["alphas"][kind], dtype=w.dtype), w)
    assert rows[-1]["collapse/skip_share"] == pytest.approx(genotype.skip_share())
    summary = json.loads((search_run / "summary.json").read_text())
    assert summary["alpha_steps"] == 4 and summary["stop_reason"] == "epochs"


def test_resume_after_ctrl_c_equals_uninterrupted(search_run, tmp_path, monkeypatch, capsys,
                                                   caplog):
    import logging

    caplog.set_level(logging.INFO, logger="darts_amend.cli.search")
    out = tmp_path / "resumed"

    def ctrl_c(epoch, step):
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(search_mod, "_on_step", ctrl_c)
    assert _search(out) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "interrupted at epoch 1, step 1" in err  # numbered from 1
    mid = _ckpt(out)
    assert (mid["epoch"], mid["step"]) == (0, 1)
    assert not (out / "metrics.jsonl").exists()
    monkeypatch.setattr(search_mod, "_on_step", lambda e, s: None)
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress"]) == 0
    assert "resumed in epoch 1 at step 1" in caplog.text  # the epoch the interruption named
    full, resumed = _ckpt(search_run), _ckpt(out)
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(full["architect"]["alphas"], resumed["architect"]["alphas"],
                    strict=True):
        assert torch.equal(a, b)
    assert (out / "genotype.json").read_text() == (search_run / "genotype.json").read_text()
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _lines(search_run)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in _lines(out)]


def test_search_digits_prints_genotype_and_plots(tmp_path, capsys):
    out = tmp_path / "digits"
    rc = main(["search", "--dataset", "digits", "--subset", "0.05", "--space", "s1", "--layers",
               "2", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "2",
               "--epochs", "1", "--threads", "1", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Genotype (shared normal / reduction cells)" in printed
    for name in ("alphas.png", "diagnostics.png", "genotype_normal.png", "genotype_reduce.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"plot: {out / name}" in printed
    assert json.loads((out / "config.json").read_text())["config"]["dataset"] == "digits"
    # `darts-amend plot` redraws from the folder alone
    (out / "alphas.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "alphas.png").is_file()


def test_until_converged_stops_when_rule_holds(tmp_path):
    out = tmp_path / "conv"
    # threshold below uniform (1/7) and a negligible alpha lr: the rule holds from epoch 2 on
    rc = main(["search", *TINY, "--epochs", "5", "--output", str(out), "--until-converged", "1",
               "--converge_threshold", "0.1", "--arch_learning_rate", "1e-12",
               "--steps_per_epoch", "1"])
    assert rc == 0
    rows = _lines(out)
    assert [r["converged_epochs"] for r in rows] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "converged" and summary["epochs_run"] == 2


# seed 7 measures alpha-Hessian eigenvalues ~0.21 then ~0.73 at epochs 0 and 1: with one-measurement
# windows a factor of 1.05 fires deterministically at epoch 1 and reverts to epoch 0
EARLY = [*TINY, "--steps_per_epoch", "1", "--seed", "7", "--epochs", "4", "--diag_every", "1",
         "--early_stop", "--early_stop_window", "1", "--early_stop_lag", "1",
         "--early_stop_factor", "1.05", "--early_stop_start", "0"]


def test_early_stop_reverts_to_recorded_genotype_and_resumes(tmp_path, monkeypatch, capsys):
    from darts_amend.diagnostics import eigen_early_stop
    from darts_amend.supernet import Genotype

    out = tmp_path / "es"
    assert main(["search", *EARLY, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _lines(out)
    assert [r["epoch"] for r in rows] == [1, 2]  # 4 epochs asked, 2 ran
    assert [r["diag/early_stop"] for r in rows] == [False, True]
    assert rows[1]["diag/revert_epoch"] == 1
    # ground truth: the rule itself on the recorded eigenvalues
    ev = [r["eig/alphas"] for r in rows]
    decision = eigen_early_stop([1, 2], ev, window=1, lag=1, factor=1.05, start_epoch=0)
    assert decision.stop and decision.ratio == pytest.approx(ev[1] / ev[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stop" and summary["epochs_run"] == 2
    assert summary["revert_epoch"] == 1 and summary["early_stop_epoch"] == 2
    kept = Genotype.from_json((out / "genotype.json").read_text())
    assert kept.to_dict() == rows[0]["genotype"] == summary["genotype"]
    assert "genotype reverted to the one recorded at epoch 1" in printed
    # --resume of the finished run re-reads metrics.jsonl and stops again, adding nothing
    files = _snapshot(out)
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress"]) == 0
    assert _snapshot(out)["metrics.jsonl"] == files["metrics.jsonl"]
    assert _snapshot(out)["genotype.json"] == files["genotype.json"]
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_early_stop_after_ctrl_c_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["search", *EARLY, "--output", str(full)]) == 0

    def ctrl_c(epoch, step):  # interrupted before epoch 1's diagnostics: history from the file
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(search_mod, "_on_step", ctrl_c)
    assert main(["search", *EARLY, "--output", str(cut)]) == 130
    monkeypatch.setattr(search_mod, "_on_step", lambda e, s: None)
    assert main(["search", "--output", str(cut), "--resume", "-q", "--no-progress"]) == 0
    strip = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in _lines(full)]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("seconds")}
                     for r in _lines(cut)]
    assert (cut / "genotype.json").read_text() == (full / "genotype.json").read_text()
    assert json.loads((cut / "summary.json").read_text())["stop_reason"] == "early_stop"


def test_until_converged_on_s2_warns_once(tmp_path, caplog):
    argv = [*TINY, "--space", "s2", "--epochs", "1", "--steps_per_epoch", "1",
            "--until-converged", "1", "--output", str(tmp_path / "s2")]
    with caplog.at_level("WARNING", logger="darts_amend.cli.search"):
        assert main(["search", *argv]) == 0
    hits = [r for r in caplog.records if "reduces to genotype stability" in r.getMessage()]
    assert len(hits) == 1


def test_config_precedence_preset_yaml_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("init_channels: 4\nlayers: 2\neta: 0.3\nspace: s2\n")
    out = tmp_path / "prec"
    # preset tiny (digits, s1, ...) < YAML (s2, eta 0.3) < flags (--amend_eta 0.2, fake data)
    rc = main(["search", "--preset", "tiny", "--config", str(cfg), "--amend_eta", "0.2",
               *TINY[:8], "--batch_size", "4", "--steps_per_epoch", "1", "--epochs", "1",
               "--threads", "1", "--no-progress", "--no-plots", "-q", "--diag_every", "1",
               "--output", str(out)])
    assert rc == 0
    row = _lines(out)[0]  # --diag_every: curvature and alignment from darts_amend.diagnostics
    assert np.isfinite(row["eig/alphas"]) and -1 <= row["align/amended/cos_g2"] <= 1
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["eta"] == 0.2 and stored["layers"] == 2
    assert stored["space"] == "s1"  # the flag in TINY beats YAML's s2
    assert stored["learning_rate"] == 0.05  # from the preset
    assert stored["dataset"] == "fake"


def _write_jpegs(root, split, per_class):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                root / split / c / f"{i}.jpg")


def test_train_on_fake_cifar_with_aux_cutout_droppath(tmp_path, capsys):
    from darts_amend.supernet import DARTS_V2, NetworkCIFAR

    out = tmp_path / "train"
    rc = main(["train", "--genotype", "DARTS_V2", "--dataset", "fake", "--fake_size", "8",
               "--image_size", "32", "--layers", "3", "--init_channels", "4", "--epochs", "2",
               "--batch_size", "4", "--steps_per_epoch", "1", "--label_smooth", "0.1",
               "--threads", "1", "--no-progress", "--output", str(out)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    # the CIFAR recipe filled in what was not given
    assert (cfg["auxiliary"], cfg["cutout"], cfg["drop_path_prob"], cfg["lr_schedule"],
            cfg["weight_decay"]) == (True, True, 0.2, "cosine", 3e-4)
    rows = _lines(out)
    assert [r["drop_path_prob"] for r in rows] == [0.0, 0.1]
    assert 0.0 <= rows[-1]["test_acc"] <= rows[-1]["test_acc_top5"] <= 1.0
    printed = capsys.readouterr().out
    assert f"test accuracy {rows[-1]['test_acc']:.4f}" in printed
    assert (out / "curves.png").is_file()
    net = NetworkCIFAR(4, 10, 3, True, DARTS_V2)
    net.load_state_dict(_ckpt(out)["model"])  # the checkpoint is the DARTS_V2 network


def test_train_image_folder_from_search_folder_with_amp(search_run, tmp_path):
    data = tmp_path / "jpegs"
    _write_jpegs(data, "train", 4)
    _write_jpegs(data, "val", 2)
    out = tmp_path / "train-folder"
    rc = main(["train", "--genotype", str(search_run), "--dataset", "folder", "--data",
               str(data), "--image_size", "8", "--layers", "2", "--init_channels", "4",
               "--epochs", "1", "--batch_size", "4", "--no-auxiliary", "--amp", "--workers", "0",
               "--threads", "1", "--no-progress", "--no-plots", "-q", "--output", str(out)])
    assert rc == 0
    row = _lines(out)[0]
    assert row["test_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 test images
    assert np.isfinite(row["train_loss"])
    assert json.loads((out / "genotype.json").read_text()) == json.loads(
        (search_run / "genotype.json").read_text())


def test_train_resume_after_ctrl_c_equals_uninterrupted(tmp_path, monkeypatch):
    args = ["train", "--genotype", "DARTS_V1", "--dataset", "fake", "--fake_size", "12",
            "--image_size", "8", "--layers", "2", "--init_channels", "4", "--epochs", "2",
            "--batch_size", "4", "--no-auxiliary", "--threads", "1", "--no-progress",
            "--no-plots", "-q"]
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    monkeypatch.setattr(train_mod, "_on_step", lambda e, s: (e, s) == (1, 1) and os.kill(
        os.getpid(), signal.SIGINT))
    assert main([*args, "--output", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(train_mod, "_on_step", lambda e, s: None)
    assert main(["train", "--output", str(tmp_path / "cut"), "--resume", "-q"]) == 0
    a, b = _ckpt(tmp_path / "full"), _ckpt(tmp_path / "cut")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert [r["test_acc"] for r in _lines(tmp_path / "full")] == [
        r["test_acc"] for r in _lines(tmp_path / "cut")]


# --------------------------------------------------------------------------- bad input


def _bad(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err, err
    return err


# the table of bad input is tests/test_errors.py (and docs/errors.md); these are the cases
# that need more than one flag or file
@pytest.mark.parametrize("argv, match", [
    (["search", "--early_stop", "--diag_every", "1", "--early_stop_factor", "0.9"],
     "invalid --early_stop_factor 0.9"),
])
def test_bad_input_exit_2_and_nothing_written(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    _bad(capsys, [*argv, "--output", str(out)], match)
    assert not out.exists()


def test_per_cell_genotype_fixes_the_depth(capsys, tmp_path):
    s2 = tmp_path / "s2.json"  # a per-cell genotype fixes the depth of the network
    s2.write_text(json.dumps({"cells": [{"edges": [["skip_connect", 0], ["sep_conv_3x3", 1]],
                                         "concat": [2]}] * 3}))
    _bad(capsys, ["train", "--genotype", str(s2), "--layers", "5", "--output",
                  str(tmp_path / "o")], "fixes 3 cells")
    assert not (tmp_path / "o").exists()


def test_existing_run_is_refused_and_untouched(capsys, search_run):
    before = _snapshot(search_run)
    _bad(capsys, ["search", *TINY, "--output", str(search_run)], "--resume")
    _bad(capsys, ["search", "--output", str(search_run), "--resume", "--init_channels", "8"],
         "different configuration (init_channels: 4 -> 8)")
    _bad(capsys, ["train", "--output", str(search_run), "--resume"], "not a train run")
    _bad(capsys, ["search", "--output", str(search_run), "--resume", "--force"], "exclude")
    assert _snapshot(search_run) == before


def test_force_overwrites_and_resume_needs_a_run(capsys, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _bad(capsys, ["search", *TINY, "--output", str(out)], "not empty")
    _bad(capsys, ["search", "--output", str(out), "--resume"], "nothing to resume")
    assert main(["search", *TINY, "--epochs", "1", "--steps_per_epoch", "1", "--output",
                 str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces run files only
    assert len(_lines(out)) == 1


def test_help_and_patch_repo_are_wired(capsys):
    assert main(["--help"]) == 0
    assert main(["search", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--arch_learning_rate" in text and "--until-converged" in text
    assert main(["patch-repo", "--help"]) == 0
    assert main([]) == 2


def test_imagenet_recipe_search_and_train_on_jpegs(tmp_path):
    data = tmp_path / "inet"
    _write_jpegs(data, "train", 4)
    _write_jpegs(data, "val", 1)
    common = ["--dataset", "imagenet", "--data", str(data), "--image_size", "32",
              "--init_channels", "4", "--batch_size", "2", "--epochs", "1", "--threads", "1",
              "--no-progress", "--no-plots", "-q"]
    assert main(["search", *common, "--space", "s1", "--layers", "2", "--steps_per_epoch",
                 "1", "--output", str(tmp_path / "s")]) == 0
    assert main(["train", "--genotype", str(tmp_path / "s"), *common, "--layers", "3",
                 "--no-auxiliary", "--output", str(tmp_path / "t")]) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())["config"]
    assert (cfg["learning_rate"], cfg["lr_schedule"], cfg["label_smooth"], cfg["weight_decay"],
            cfg["cutout"]) == (0.5, "linear", 0.1, 3e-5, False)
    from darts_amend.supernet import Genotype, NetworkImageNet

    genotype = Genotype.from_json((tmp_path / "s" / "genotype.json").read_text())
    net = NetworkImageNet(4, 2, 3, False, genotype)
    net.load_state_dict(_ckpt(tmp_path / "t")["model"])



def test_closed_stdout_ends_quietly(search_run, monkeypatch, capsys):
    """`darts-amend ... | head`: a write after the reader is gone -> exit 141, no traceback."""
    import sys

    from darts_amend.cli import plots as plots_mod

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(plots_mod, "write_plots", lambda *a, **k: [search_run / "a.png"])
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["plot", str(search_run)]) == 141
    monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err


def test_paper_size_search_on_cpu_warns_and_estimates_epoch_time(tmp_path, capsys,
                                                                   monkeypatch):
    import darts_amend.cli as cli
    from darts_amend.cli import run as run_mod

    parser = cli.build_parser()

    def warn(argv, device):
        return run_mod.warn_unsized(run_mod.RunRequest.from_args(parser.parse_args(argv)), cfg,
                                    device)

    cfg = search_mod.SearchConfig()
    cpu = torch.device("cpu")
    assert warn(["search"], cpu)
    err = capsys.readouterr().err
    assert "paper-size search (100 epochs, 8 cells, C=16, batch 96)" in err
    assert max(len(ln) for ln in err.splitlines()) <= 200, err
    assert "--preset tiny" in err
    for sized in (["--preset", "tiny"], ["--epochs", "3"], ["--init_channels", "8"]):
        assert not warn(["search", *sized], cpu)
    assert not warn(["search"], torch.device("meta"))
    assert capsys.readouterr().err == ""
    # the estimate after the first step (forced on for a tiny run)
    monkeypatch.setattr(run_mod, "warn_unsized", lambda *a: True)
    assert main(["search", *TINY, "--epochs", "2", "--output", str(tmp_path / "o")]) == 0
    line = [ln for ln in capsys.readouterr().err.splitlines() if "first step" in ln]
    assert len(line) == 1 and "per epoch (2 steps)" in line[0] and "for 2 epochs" in line[0]


@pytest.mark.filterwarnings("ignore:implicit_cg. <v, .H . damping I. v>:RuntimeWarning")
def test_search_records_how_implicit_cg_ended(tmp_path, capsys):
    out = tmp_path / "cg"
    quiet = [a for a in TINY if a != "-q"]
    assert main(["search", *quiet, "--epochs", "1", "--estimator", "implicit_cg",
                 "--cg_iterations", "3", "--output", str(out)]) == 0
    (row,) = _lines(out)
    # the epoch line says it too
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert (f"CG {row['arch/cg_iterations']:.1f} updates/step, non-positive curvature in "
            f"{row['arch/cg_curvature_stops']} of {row['alpha_steps']} steps (g2 = 0 in "
            f"{row['arch/cg_first_direction_stops']})") in line
    assert 0.0 <= row["arch/cg_iterations"] <= 3.0
    steps = row["alpha_steps"]
    assert 0 <= row["arch/cg_first_direction_stops"] <= row["arch/cg_curvature_stops"] <= steps
    fo = tmp_path / "fo"
    assert main(["search", *TINY, "--epochs", "1", "--output", str(fo)]) == 0
    assert not any(k.startswith("arch/cg_") for k in _lines(fo)[0])  # implicit_cg only
    # a checkpoint written before these sums existed still resumes
    old = {k: 0.0 for k in ("val_loss", "g1_norm", "g2_norm", "grad_norm", "cosine",
                            "cosine_n", "nonfinite")}
    acc = search_mod._Accum(arch=old)
    assert acc.arch["cg_steps"] == 0.0 and acc.arch["cg_first_direction_stops"] == 0.0


def test_unrolled_search_passes_the_weight_optimizers_lr_and_momentum_buffers(tmp_path,
                                                                              monkeypatch):
    """Second-order DARTS in the driver: each architect step gets xi = the weight optimizer's
    current (scheduled) learning rate, its momentum and weight decay, and its own momentum
    buffers (none before the first weight step)."""
    from darts_amend import AmendedArchitect

    optimizers, seen = [], []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            optimizers.append(self)

    real_step = AmendedArchitect.step

    def step(self, train_batch, valid_batch, **per_step):
        (opt,) = optimizers
        params = opt.param_groups[0]["params"]
        buffers = per_step["momentum_buffers"]
        seen.append((per_step["xi"], opt.param_groups[0]["lr"], per_step["momentum"],
                     per_step["weight_decay"], None if buffers is None else all(
                         b is opt.state[p]["momentum_buffer"]
                         for b, p in zip(buffers, params, strict=True))))
        return real_step(self, train_batch, valid_batch, **per_step)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    monkeypatch.setattr(AmendedArchitect, "step", step)
    assert _search(tmp_path / "u", "--estimator", "unrolled", "--momentum", "0.8",
                   "--weight_decay", "1e-3") == 0
    assert len(seen) == 4  # 2 epochs x 2 steps
    assert all(xi == lr and m == 0.8 and wd == 1e-3 for xi, lr, m, wd, _ in seen)
    assert seen[0][0] == 0.025 and seen[2][0] < seen[0][0]  # the cosine schedule moved on
    assert [s[4] for s in seen] == [None, True, True, True]
