"""Bad input, one row each: the command line (flags, YAML files, genotype files, data folders)
and the library API (batches of the wrong kind). Every CLI row must end with one line on stderr,
``darts-amend: error: ...``, exit code 2 and nothing written; every API row with the exception
and message in the table. docs/errors.md lists the same rows: a test keeps the two in step.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from darts_amend import AmendedArchitect
from darts_amend.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _files(tmp: Path) -> dict[str, str]:
    """Bad files the rows refer to as {name}."""
    (tmp / "empty_folder" / "train").mkdir(parents=True)
    files = {
        "unknown_key.yaml": "init_chanels: 8\n",
        "wrong_type.yaml": "layers: many\n",
        "list.yaml": "- 1\n- 2\n",
        "broken.yaml": "a: [1,\n",
        "nan.yaml": "eta: .nan\n",
        "bad_op.json": '{"normal": [["warp_drive", 0], ["skip_connect", 1]], "normal_concat": '
                       '[2], "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]], '
                       '"reduce_concat": [2]}',
        "missing_key.json": '{"normal": [["skip_connect", 0]]}',
        "range.yaml": "momentum: 1.5\n",
        "bad_json.json": "{bad json",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    folders = {"empty_folder": str(tmp / "empty_folder"), "one_class": _image_folder(tmp, ("a",)),
               "corrupt_image": _image_folder(tmp, ("a", "b"), corrupt="b/3.png")}
    return {n.split(".")[0]: str(tmp / n) for n in files} | folders


def _image_folder(tmp: Path, classes: tuple[str, ...], corrupt: str | None = None) -> str:
    """An ImageFolder tree of 8x8 PNGs (6 per class and split); ``corrupt``: a train file whose
    bytes are not an image."""
    from PIL import Image

    root = tmp / ("corrupt_image" if corrupt else "one_class")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                pixels = torch.randint(0, 256, (8, 8, 3), generator=gen, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / c / f"{i}.png")
    if corrupt:
        (root / "train" / corrupt).write_bytes(b"not an image")
    return str(root)


# (command line with {file} placeholders, what stderr must contain)
CLI_ROWS = [
    ("search --dataset mnist", "argument --dataset: invalid choice: 'mnist'"),
    ("search --space s9", "argument --space: invalid choice: 's9'"),
    ("search --estimator second_order", "invalid choice: 'second_order'"),
    ("search --batch_size abc", "invalid int value: 'abc'"),
    ("search --unknown_flag", "unrecognized arguments: --unknown_flag"),
    ("search --preset huge", "unknown preset 'huge'; choose one of paper-s1"),
    ("search --preset tiny --eta nan", "--eta must be a finite number, got nan"),
    ("search --preset tiny --learning_rate inf", "--learning_rate must be a finite number"),
    ("search --preset tiny --eta -1", "invalid --eta -1.0 (must be >= 0)"),
    ("search --estimator first_order --eta 0.5", "--eta applies to --estimator amended only"),
    ("search --hvp_mode finite_difference --fd_r 0", "invalid --fd_r 0.0"),
    ("search --estimator implicit_cg --cg_iterations 0",
     "invalid --cg_iterations 0 (must be >= 1)"),
    ("search --batch_size 0", "invalid --batch_size 0 (must be >= 1)"),
    ("search --train_portion 1.5", "invalid --train_portion 1.5 (must be in (0, 1))"),
    ("search --partial_channels 3", "--partial_channels 3 must divide --init_channels 16"),
    ("search --early_stop", "only measured with --diag_every"),
    ("search --threads 0", "invalid --threads 0"),
    ("search --preset tiny --dist_timeout 0", "invalid --dist_timeout 0.0 (must be > 0 seconds)"),
    ("search --resume --force", "--resume and --force exclude each other"),
    ("search --resume", "nothing to resume in"),
    ("search --config {unknown_key}", "unknown setting 'init_chanels'"),
    ("search --config {wrong_type}", "layers must be int, got 'many'"),
    ("search --config {list}", "must hold a mapping of settings, got list"),
    ("search --config {broken}", "is not valid YAML"),
    ("search --config {nan}", "eta must be a finite number, got nan"),
    ("search --config NOWHERE.yaml", "config file not found: NOWHERE.yaml"),
    ("train --genotype NOT_A_GENOTYPE", "neither a file"),
    ("train --genotype {bad_op}", "unknown operation 'warp_drive'"),
    ("train --genotype {missing_key}", "missing keys ['reduce']"),
    # one declared range per numeric setting, from flags, YAML or a stored config
    ("search --momentum -1", "invalid --momentum -1.0 (must be in [0, 1))"),
    ("search --seed -1", "invalid --seed -1 (must be in [0, 4294967295])"),
    ("search --converge_threshold 1.5", "invalid --converge_threshold 1.5 (must be in (0, 1])"),
    ("train --label_smooth 1", "invalid --label_smooth 1.0 (must be in [0, 1))"),
    ("search --config {range}", "range.yaml: invalid momentum 1.5 (must be in [0, 1))"),
    # relations between settings
    ("search --learning_rate 0.01 --learning_rate_min 0.05",
     "--learning_rate_min 0.05 is above --learning_rate 0.01: the cosine schedule would raise"),
    ("train --lr_schedule linear --learning_rate_min 0.01",
     "--learning_rate_min applies to --lr_schedule cosine only"),
    ("search --cg_iterations 5",
     "--cg_iterations applies to --estimator implicit_cg only (got --estimator amended)"),
    ("search --estimator first_order --hvp_mode finite_difference",
     "--hvp_mode applies to the estimators with Hessian products"),
    ("search --estimator first_order --no-fast_depthwise",
     "--fast_depthwise applies to the estimators with Hessian products only"),
    ("search --fd_r 0.1",
     "--fd_r applies to --hvp_mode finite_difference or forward_difference only (got --hvp_mode "
     "exact)"),
    ("search --early_stop_window 3", "--early_stop_window applies to --early_stop only"),
    ("search --cutout_length 8", "--cutout_length applies to --cutout only (got no --cutout)"),
    ("search --image_size 16",
     "--image_size applies to --dataset imagenet, folder or fake only (got --dataset digits)"),
    ("search --amend_second_order_batch 200",
     "--amend_second_order_batch 200 is larger than the per-process batch 96"),
    ("search --batch_size 8 --amend_chunks 9",
     "--amend_chunks 9 is more than the 8 samples the Hessian products use"),
    # degenerate or broken data, found before the search (or at its first step)
    ("search --dataset folder --data {one_class}", "the folder data has 1 class"),
    ("search --dataset folder --data {corrupt_image} --image_size 8 --batch_size 4 --workers 1 "
     "--no-progress --threads 1",
     "/b/3.png: not an image file PIL can decode; remove or replace the file"),
    # out of memory building the network: the sizes to reduce, and nothing left on disk
    ("search --preset tiny --init_channels 1000000",
     "(--batch_size 64, --init_channels 1000000, --layers 3, image size 8): reduce --batch_size, "
     "--init_channels or --layers"),
    ("train --genotype {bad_json}", "bad_json.json: invalid JSON"),
    ("search --dataset cifar10 --data NOWHERE", "pass --download"),
    ("search --dataset folder --data {empty_folder}", "no class folders in"),
    ("train --dataset imagenet --data NOWHERE", "image-net.org"),
    ("plot NOWHERE", "NOWHERE is not a run folder (no metrics.jsonl)"),
    ("patch-repo NOWHERE", "patch-repo needs --flavor (or --undo)"),
]
if not torch.cuda.is_available():
    CLI_ROWS.append(("search --device cuda", "device 'cuda' requested but CUDA is not available"))


@pytest.mark.parametrize("command, expected", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, command,
                                                       expected):
    monkeypatch.chdir(tmp_path)
    argv = command.format(**_files(tmp_path)).split()
    out = tmp_path / "out"
    if argv[0] in ("search", "train"):
        argv += ["--output", str(out)]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("darts-amend: error: "), err
    assert expected in lines[0], err
    # one terminal line (the temporary folder's path counted as <dir>)
    assert len(lines[0].replace(str(tmp_path), "<dir>")) <= 200, lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_debug_shows_the_traceback(tmp_path):
    from darts_amend.cli.config import CLIError

    with pytest.raises(CLIError, match="finite number"):
        main(["search", "--preset", "tiny", "--eta", "nan", "--debug", "--output",
              str(tmp_path / "o")])


# --------------------------------------------------------------------------- library API


def _net():
    from darts_amend.supernet import build_search_network

    torch.manual_seed(0)
    return build_search_network("s1", C=4, num_classes=10, layers=2, in_channels=3)


def _batch(n=4, dtype=torch.float32, device="cpu", m=None):
    return (torch.randn(n, 3, 8, 8, dtype=dtype, device=device),
            torch.randint(0, 10, (n if m is None else m,), device=device))


API_ROWS = [
    ("step(train_batch=a tensor)", lambda a: a.step(torch.zeros(4), _batch()), TypeError,
     "train_batch must be an (inputs, targets) pair, got Tensor"),
    ("step(train_batch=a 3-tuple)", lambda a: a.step((1, 2, 3), _batch()), TypeError,
     "train_batch must be an (inputs, targets) pair, got tuple of length 3"),
    ("step(valid_batch on another device)", lambda a: a.step(_batch(), _batch(device="meta")),
     ValueError, "valid_batch inputs are on meta but the model's arch_parameters() are on cpu"),
    ("step(float64 inputs, float32 model)", lambda a: a.step(_batch(dtype=torch.float64),
                                                             _batch()),
     ValueError, "train_batch inputs are torch.float64 but the model's parameters are "
                 "torch.float32"),
    ("step(4 inputs, 3 targets)", lambda a: a.step(_batch(), _batch(m=3)), ValueError,
     "valid_batch has 4 inputs but 3 targets"),
    ("step(an empty batch)", lambda a: a.step(_batch(n=0), _batch()), ValueError,
     "train_batch is empty (0 samples)"),
    ("AmendedArchitect(estimator='nope')", lambda a: AmendedArchitect(a.model, estimator="nope"),
     ValueError, "unknown estimator 'nope'; valid names: first_order"),
    ("AmendedArchitect(eta=-1.0)", lambda a: AmendedArchitect(a.model, eta=-1.0), ValueError,
     "invalid eta: -1.0 (must be a finite number >= 0.0)"),
    ("AmendedArchitect(lr=nan)", lambda a: AmendedArchitect(a.model, lr=float("nan")),
     ValueError, "invalid lr: nan"),
    ("AmendedArchitect(eta=torch.tensor([0.1, 0.2]))",
     lambda a: AmendedArchitect(a.model, eta=torch.tensor([0.1, 0.2])), ValueError,
     "invalid eta: tensor([0.1000, 0.2000]) (must be a finite number >= 0.0)"),
    ("step(uint8 image inputs)",
     lambda a: a.step((torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
                       torch.randint(0, 10, (4,))), _batch()), ValueError,
     "train_batch inputs are torch.uint8 (raw image bytes?) but the model's parameters are "
     "torch.float32; convert them first, e.g. inputs.to(torch.float32) / 255"),
]


@pytest.mark.parametrize("label, call, exc, expected", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_bad_input_names_the_problem_and_changes_nothing(label, call, exc, expected):
    architect = AmendedArchitect(_net(), estimator="first_order")
    alphas = [a.detach().clone() for a in architect.alphas]
    with pytest.raises(exc) as info:
        call(architect)
    assert expected in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(alphas, architect.alphas, strict=True))


# upstream adapters: Architect(model, args) checks the args it reads, with the same ranges
ADAPTER_ROWS = [
    ("darts Architect(model, args with arch_learning_rate=-1.0)", {"arch_learning_rate": -1.0},
     "invalid args.arch_learning_rate: -1.0 (must be a finite number > 0.0)"),
    ("darts Architect(model, args with amend_eta=-0.1)", {"amend_eta": -0.1},
     "invalid amend_eta: -0.1 (must be a finite number >= 0.0)"),
    ("darts Architect(model, args with amend_chunks=0)", {"amend_chunks": 0},
     "invalid amend_chunks: 0"),
]


@pytest.mark.parametrize("label, fields, expected", ADAPTER_ROWS, ids=[r[0] for r in ADAPTER_ROWS])
def test_adapter_args_are_checked(label, fields, expected):
    from types import SimpleNamespace

    from darts_amend.adapters.darts import Architect

    args = SimpleNamespace(**{"momentum": 0.9, "weight_decay": 3e-4, "arch_learning_rate": 3e-4,
                              "arch_weight_decay": 1e-3, **fields})
    with pytest.raises(ValueError) as info:
        Architect(_net(), args)
    assert expected in str(info.value)


def test_adapter_accepts_eta_as_a_0d_tensor():
    from types import SimpleNamespace

    from darts_amend.adapters.darts import Architect

    args = SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                           arch_weight_decay=1e-3, amend_eta=torch.tensor(0.5))
    assert Architect(_net(), args).amend_eta == 0.5


def test_docs_list_every_row():
    """docs/errors.md shows each row's input and message (the table is >= 20 rows)."""
    text = DOCS.read_text()
    rows = [(c, m) for c, m in CLI_ROWS] + [(label, m) for label, _, _, m in API_ROWS] + \
        [(label, m) for label, _, m in ADAPTER_ROWS]
    assert len(rows) >= 20
    flat = re.sub(r"\s+", " ", text.replace("`", "").replace("\\|", "|"))
    missing = [r for r in rows if r[0] not in flat or r[1] not in flat]
    assert not missing, missing


# --------------------------------------------------------------------------- run folders

TINY = ["--dataset", "fake", "--fake_size", "16", "--image_size", "8", "--space", "s1",
        "--layers", "2", "--init_channels", "4", "--batch_size", "4", "--steps_per_epoch", "1",
        "--epochs", "1", "--threads", "1", "--no-progress", "--no-plots", "-q"]


def test_a_failed_start_leaves_nothing_and_the_corrected_command_just_works(tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    # refused late (out of memory building the network): no folder, not even runs/
    assert main(["search", *TINY, "--init_channels", "1000000", "--output", str(out)]) == 2
    assert "out of memory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # a run killed before its first step left only config.json: a fresh run takes the folder,
    # --resume says what is missing
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"command": "search", "config": {}}')
    assert main(["search", *TINY, "--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint.pt" in err and "start it again without --resume" in err
    assert main(["search", *TINY, "--output", str(out)]) == 0
    assert (out / "checkpoint.pt").is_file()


def test_resume_refuses_an_edited_config_json_in_one_short_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", *TINY, "--epochs", "2", "--time_limit", "1e-9",
                 "--output", str(out)]) == 0  # stops after epoch 1 of 2
    cfg = json.loads((out / "config.json").read_text())
    for key, value in (("init_channels", 8), ("layers", 3), ("seed", 5), ("momentum", 0.5),
                       ("space", "s2")):
        cfg["config"][key] = value
    (out / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["search", "--output", str(out), "--resume", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err.replace(str(out), "<dir>")) <= 200, err
    assert "config.json does not match checkpoint.pt " \
           "(init_channels: 4 -> 8; layers: 2 -> 3; momentum: 0.9 -> 0.5; and 2 more)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_empty_output_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", *TINY, "--output", ""]) == 2
    assert "--output is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_long_internal_failures_are_cut_to_one_line(monkeypatch, capsys, tmp_path):
    from darts_amend.cli import search as search_mod

    def boom(cfg, ctx):
        raise RuntimeError("x" * 100_000 + "\nsecond line")

    monkeypatch.setattr(search_mod, "run_search", boom)
    assert main(["search", *TINY, "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err.strip()) <= 200 and "report it" in err
    assert not (tmp_path / "o").exists()  # it never took a step


def test_eta_as_a_0d_tensor_is_the_same_as_the_float():
    net = _net()
    batch = _batch()
    a = AmendedArchitect(net, eta=torch.tensor(0.25, dtype=torch.float64))
    assert a.eta == 0.25 and isinstance(a.eta, float)
    from darts_amend import amended

    got = amended(net, batch, batch, eta=torch.tensor(0.25, dtype=torch.float64)).grads
    want = amended(net, batch, batch, eta=0.25).grads
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_docs_list_every_declared_range():
    """docs/errors.md's range table is the field metadata of cli/settings.py, row for row."""
    import dataclasses

    from darts_amend.cli.settings import SearchConfig, TrainConfig, ValidRange

    flat = re.sub(r"\s+", " ", DOCS.read_text())
    declared = {}
    for cls in (SearchConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("valid") is not None:
                declared[f.name] = f.metadata["valid"]
    assert len(declared) >= 40
    documented = dict(re.findall(r"\| `--(\w+)` \| `([\[(][^`]+[\])])` \|", flat))
    assert set(documented) == set(declared)
    assert all(ValidRange.parse(documented[k]) == v for k, v in declared.items())


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_force_run_failing_before_its_first_step_leaves_the_old_run_byte_identical(
        tmp_path, capsys, monkeypatch):
    from darts_amend.cli import search as search_mod

    out = tmp_path / "run"
    assert main(["search", *TINY, "--output", str(out)]) == 0
    (out / "alphas.png").write_bytes(b"old plot")
    (out / "plots").mkdir()
    (out / "plots" / "x.png").write_bytes(b"old sub-plot")
    (out / "notes.txt").write_text("the user's own file")
    before = _tree(out)
    assert {"config.json", "checkpoint.pt", "genotype.json", "summary.json"} <= set(before)
    # out of memory building the network, after the folder was set up
    assert main(["search", *TINY, "--init_channels", "1000000", "--force",
                 "--output", str(out)]) == 2
    assert "out of memory" in capsys.readouterr().err
    assert _tree(out) == before and not (out / ".replaced-run").exists()
    real = search_mod.run_search

    def fail(exc):
        def run(cfg, ctx):
            # the new run has set up the folder: its config.json, the old files aside
            assert (out / ".replaced-run" / "checkpoint.pt").is_file()
            assert not (out / "checkpoint.pt").exists()
            raise exc
        return run

    # Ctrl-C before the first step
    monkeypatch.setattr(search_mod, "run_search", fail(KeyboardInterrupt()))
    assert main(["search", *TINY, "--seed", "3", "--force", "--output", str(out)]) == 130
    assert "interrupted before the first step" in capsys.readouterr().err
    assert _tree(out) == before
    # an internal failure before the first step
    monkeypatch.setattr(search_mod, "run_search", fail(RuntimeError("boom")))
    assert main(["search", *TINY, "--seed", "3", "--force", "--output", str(out)]) == 1
    assert _tree(out) == before
    # the run that takes a step replaces the old files; other files stay
    monkeypatch.setattr(search_mod, "run_search", real)
    assert main(["search", *TINY, "--seed", "3", "--force", "--output", str(out)]) == 0
    after = _tree(out)
    assert not (out / ".replaced-run").exists() and "alphas.png" not in after
    assert after["notes.txt"] == before["notes.txt"]
    assert json.loads(after["config.json"])["config"]["seed"] == 3


def test_files_left_aside_by_a_killed_force_run_go_with_the_next_first_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", *TINY, "--epochs", "2", "--time_limit", "1e-9",
                 "--output", str(out)]) == 0
    (out / ".replaced-run").mkdir()  # as a --force run killed (kill -9) before its first step
    (out / ".replaced-run" / "metrics.jsonl").write_text("{}\n")
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress"]) == 0
    assert not (out / ".replaced-run").exists()
    (out / ".replaced-run").mkdir()
    (out / ".replaced-run" / "metrics.jsonl").write_text("{}\n")
    assert main(["search", *TINY, "--force", "--output", str(out)]) == 0
    assert not (out / ".replaced-run").exists()


BARS = [a for a in TINY if a not in ("--no-progress", "-q")]


@pytest.mark.parametrize("failure", ["error", "ctrl_c", "finish"])
def test_messages_start_on_their_own_line_after_a_progress_bar(monkeypatch, tmp_path, failure):
    """stdout and stderr into one pipe (not a terminal): the bars' text ends in a carriage
    return, and every message after it must still begin a line."""
    import io
    import os
    import signal

    from darts_amend.cli import search as search_mod

    pipe = io.StringIO()
    assert not pipe.isatty()
    monkeypatch.setattr("sys.stdout", pipe)
    monkeypatch.setattr("sys.stderr", pipe)

    def on_step(epoch, step):
        if failure == "error":
            from darts_amend.cli import CLIError
            raise CLIError("a failure after the first step")
        if failure == "ctrl_c":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(search_mod, "_on_step", on_step)
    rc = main(["search", *BARS, "--epochs", "2", "--output", str(tmp_path / "o")])
    assert rc == {"error": 2, "ctrl_c": 130, "finish": 0}[failure]
    text = pipe.getvalue()
    assert "\r" in text  # a bar was drawn
    expected = {"error": "darts-amend: error: a failure after the first step",
                "ctrl_c": "darts-amend: interrupted at epoch 1, step 1",
                "finish": "search finished"}[failure]
    assert expected in text
    lines = text.split("\n")
    assert expected in lines or any(ln.startswith(expected) for ln in lines)
    for line in lines:  # a line the bars drew on holds nothing else
        if "\r" in line:
            assert not any(m in line for m in ("darts-amend", "epoch 1/2", "search finished",
                                               "metrics:")), repr(line)


def test_unknown_operation_names_the_closest_or_all_in_one_short_line():
    from darts_amend.supernet import Genotype
    from darts_amend.supernet.operations import OPS

    def message(op: str) -> str:
        text = json.dumps({"normal": [[op, 0], ["skip_connect", 1]], "normal_concat": [2],
                           "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]],
                           "reduce_concat": [2]})
        with pytest.raises(ValueError) as info:
            Genotype.parse(text)
        return str(info.value)

    assert "did you mean 'sep_conv_3x3'" in message("sep_conv_3x4")
    listed = message("warp_drive")
    assert len(listed) <= 170, listed
    # every operation is named, shared parts written once: avg/max_pool_3x3, sep_conv_3x3/5x5
    names = set()
    for part in listed.split("known: ")[1].rstrip(")").split(", "):
        head, _, tail = part.partition("_") if "/" in part.split("_")[0] else ("", "", part)
        for first in (head.split("/") if head else [""]):
            stem, _, sizes = (f"{first}_{tail}" if first else tail).rpartition("_")
            names |= {f"{stem}_{s}" if stem else s for s in sizes.split("/")}
    assert names == set(OPS)


def test_resume_a_folder_written_before_a_setting_existed(tmp_path, capsys):
    """config.json of an earlier version lacks the settings added since: they count as their
    defaults (what that version ran with), so --resume works; a flag that changes one is still
    refused."""
    out = tmp_path / "run"
    assert main(["search", *TINY, "--epochs", "2", "--time_limit", "1e-9",
                 "--output", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    del cfg["config"]["fast_depthwise"], cfg["config"]["hvp_chunks"]
    (out / "config.json").write_text(json.dumps(cfg))
    before = _tree(out)
    capsys.readouterr()
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress",
                 "--no-fast_depthwise"]) == 2
    assert "(fast_depthwise: True -> False)" in capsys.readouterr().err
    assert _tree(out) == before
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 2


def test_a_torn_metrics_line_does_not_block_the_resume(tmp_path, capsys, caplog):
    """kill -9 inside a metrics.jsonl append leaves a cut-off last line: --resume skips it (a
    warning) and rewrites the file without it."""
    out = tmp_path / "run"
    assert main(["search", *TINY, "--epochs", "2", "--time_limit", "1e-9",
                 "--output", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "trai')
    assert main(["search", "--output", str(out), "--resume", "-q", "--no-progress"]) == 0
    assert caplog.text.count("metrics.jsonl line 2 is not a JSON record") == 1
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_train_force_run_failing_before_its_first_step_leaves_the_old_run(tmp_path, capsys):
    out = tmp_path / "train"
    small = [a for a in TINY if a not in ("--space", "s1")] + ["--genotype", "DARTS_V2"]
    assert main(["train", *small, "--output", str(out)]) == 0
    before = _tree(out)
    assert main(["train", *small, "--init_channels", "1000000", "--force",
                 "--output", str(out)]) == 2
    assert "out of memory" in capsys.readouterr().err
    assert _tree(out) == before and not (out / ".replaced-run").exists()


def test_plot_bad_config_json_or_nothing_drawable_is_one_clear_line(tmp_path, capsys,
                                                                    monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "config.json").write_text("{bad")
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("darts-amend: error: ") and "config.json is not valid JSON" in err
    (run / "config.json").write_text('{"command": "search", "config": {}}')
    from matplotlib.figure import Figure

    def read_only(self, *a, **k):  # a folder that cannot be written to
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Figure, "savefig", read_only)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"darts-amend: error: no plot could be drawn from {run} (see the warnings above)"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]


@pytest.mark.parametrize("source", ["log", "warning"])
def test_library_messages_in_mid_epoch_start_on_their_own_line(monkeypatch, tmp_path, source):
    """A library log record or warning emitted while a bar is drawn (pipe, not a terminal) starts
    a line of its own instead of continuing the bar's text; the bar goes on afterwards."""
    import io
    import logging
    import warnings

    from darts_amend.cli import search as search_mod

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stdout", pipe)
    monkeypatch.setattr("sys.stderr", pipe)
    handler = logging.StreamHandler(pipe)  # what logging.basicConfig installs outside pytest
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(  # outside pytest's warning recorder, warnings go to stderr
        warnings, "showwarning",
        lambda message, category, *a, **k: pipe.write(f"{category.__name__}: {message}\n"))
    expected = {"log": "WARNING darts_amend.core: mid-epoch note",
                "warning": "UserWarning: mid-epoch note"}[source]

    def on_step(epoch, step):
        if step == 1:
            if source == "log":
                logging.getLogger("darts_amend.core").warning("mid-epoch note")
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("always")
                    warnings.warn("mid-epoch note", stacklevel=1)

    monkeypatch.setattr(search_mod, "_on_step", on_step)
    try:
        rc = main(["search", *BARS, "--epochs", "1", "--output", str(tmp_path / "o")])
    finally:
        logging.getLogger().removeHandler(handler)
    assert rc == 0
    text = pipe.getvalue()
    assert "\r" in text and expected in text
    assert any(line.startswith(expected) for line in text.split("\n")), repr(text[:2000])
    # the guard is gone after the run: warnings.showwarning and the handler's filters restored
    assert not handler.filters and warnings.showwarning.__name__ == "<lambda>"
