"""Fault injection: kill -9 at chosen points, damaged and unsafe checkpoints, full disks, a
torchrun rank that dies. The goal everywhere: a resumed run ends bit for bit where an
uninterrupted one ends, and a run that cannot go on says why in one line and changes nothing.

Kills are exact, not timed: a wrapper script hooks the search (after the n-th weight step,
inside the n-th checkpoint write, between the two renames of a rotation) and sends itself
SIGKILL there. Everything is tiny (C=4, 2 cells, 8x8 fake images, 2 steps per epoch, one
thread, ``--workers 0``) so that CPU runs are bit-exact.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from darts_amend.cli import main
from darts_amend.cli import search as search_mod
from darts_amend.cli.checkpoint import (
    CURRENT,
    FORMAT,
    PREVIOUS,
    CheckpointError,
    content_digest,
    read_checkpoint,
)

TINY = ["--dataset", "fake", "--fake_size", "16", "--image_size", "8", "--space", "s1",
        "--layers", "2", "--init_channels", "4", "--batch_size", "4", "--steps_per_epoch", "2",
        "--threads", "1", "--workers", "0", "--no-progress", "--no-plots", "-q"]
EPOCHS = ["--epochs", "3"]
TIMING = {"epoch_seconds", "step_seconds", "diag/seconds"}

HOOKS = textwrap.dedent(r'''
    import io, os, signal, sys
    import torch
    from darts_amend.cli import main
    from darts_amend.cli import checkpoint as ckmod
    from darts_amend.cli import search as search_mod

    mode, n = sys.argv[1], int(sys.argv[2])
    count = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "step":  # after the n-th weight step, before anything of it is saved
        def on_step(epoch, step):
            count[0] += 1
            if count[0] == n:
                die()
        search_mod._on_step = on_step
    elif mode == "write":  # inside the n-th checkpoint write: half of its bytes on disk
        real_save = torch.save
        def half_save(obj, fh, *a, **k):
            count[0] += 1
            if count[0] == n:
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                die()
            return real_save(obj, fh, *a, **k)
        ckmod.torch.save = half_save
    elif mode == "rotate":  # the n-th rotation: checkpoint.pt moved aside, the new one not in
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(ckmod.PREVIOUS):
                count[0] += 1
                if count[0] == n:
                    die()
        ckmod.os.replace = replace
    elif mode == "rank1_dies":  # torchrun rank 1 dies after its n-th step
        def on_step(epoch, step):
            count[0] += 1
            if count[0] == n and os.environ.get("RANK") == "1":
                die()
        search_mod._on_step = on_step
    elif mode == "rank1_hangs":  # torchrun rank 1 stops (SIGSTOP) after its n-th step
        def on_step(epoch, step):
            count[0] += 1
            if count[0] == n and os.environ.get("RANK") == "1":
                os.kill(os.getpid(), signal.SIGSTOP)
        search_mod._on_step = on_step
    sys.exit(main(sys.argv[3:]))
''')


def _search(out, *extra: str) -> int:
    return main(["search", *TINY, *EPOCHS, "--output", str(out), *extra])


def _resume(out) -> int:
    return main(["search", "--output", str(out), "--resume", "-q", "--no-progress"])


def _lines(path):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (path / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_same_run(a, b):
    """Final weights, BN statistics, alphas, Adam state, genotype and metrics identical."""
    ca, cb = read_checkpoint(a / CURRENT), read_checkpoint(b / CURRENT)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key
    for x, y in zip(ca["architect"]["alphas"], cb["architect"]["alphas"], strict=True):
        assert torch.equal(x, y)
    assert content_digest(ca["architect"]["optimizer"]) == \
        content_digest(cb["architect"]["optimizer"])
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    assert _lines(a) == _lines(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert _search(out) == 0
    return out


def _killed(tmp_path, mode: str, n: int):
    script = tmp_path / "hooks.py"
    script.write_text(HOOKS)
    out = tmp_path / f"{mode}{n}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), mode, str(n), "search", *TINY, *EPOCHS,
                           "--output", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return out


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow  # four killed interpreters (each imports torch): ~25 s on 2 busy cores
@pytest.mark.parametrize("mode, n, lost_from", [
    ("step", 1, (0, 0)),   # in the first epoch: back to the checkpoint written at the start
    ("step", 4, (1, 0)),   # late in epoch 2: back to the end of epoch 1
    ("write", 3, (1, 0)),  # inside the end-of-epoch-2 write: its half file is ignored
    ("rotate", 2, (1, 0)),  # between the renames: only checkpoint.prev.pt is there
])
def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path, caplog, mode, n,
                                                 lost_from):
    out = _killed(tmp_path, mode, n)
    newest = out / CURRENT if (out / CURRENT).is_file() else out / PREVIOUS
    ck = read_checkpoint(newest)
    assert (ck["epoch"], ck["step"]) == lost_from  # what was lost: the unsaved steps since
    assert _resume(out) == 0
    _assert_same_run(reference, out)
    assert not list(out.glob(".*.tmp"))  # a killed write's half file is cleared by the next save


# --------------------------------------------------------------------------- damage


def _interrupted(tmp_path, monkeypatch, name="run"):
    """A run stopped by Ctrl-C in epoch 2, step 1: checkpoint.pt = (1, 1), prev = (1, 0)."""
    out = tmp_path / name

    def ctrl_c(epoch, step):
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(search_mod, "_on_step", ctrl_c)
    assert _search(out) == 130
    monkeypatch.setattr(search_mod, "_on_step", lambda e, s: None)
    assert read_checkpoint(out / CURRENT)["step"] == 1
    assert read_checkpoint(out / PREVIOUS)["step"] == 0
    return out


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all\n" * 10)
    else:  # flip bytes in the middle of the file
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(255 - b for b in data[mid:mid + 64])
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage"])
def test_damaged_newest_falls_back_to_previous_and_finishes(reference, tmp_path, monkeypatch,
                                                            caplog, how):
    out = _interrupted(tmp_path, monkeypatch)
    _damage(out / CURRENT, how)
    prev = (out / PREVIOUS).read_bytes()
    with caplog.at_level("WARNING", logger="darts_amend.cli"):
        assert _resume(out) == 0
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint.pt is damaged" in msg and "resuming from checkpoint.prev.pt" in msg
    assert "the end of epoch 1" in msg  # what was lost: epoch 2's step 1
    _assert_same_run(reference, out)
    # the damaged file was replaced, the good previous one kept until a new good one existed
    assert (out / PREVIOUS).read_bytes() != prev


def test_both_damaged_clear_error_and_folder_unchanged(tmp_path, monkeypatch, capsys):
    out = _interrupted(tmp_path, monkeypatch)
    _damage(out / CURRENT, "truncate")
    _damage(out / PREVIOUS, "garbage")
    before = _snapshot(out)
    capsys.readouterr()
    assert _resume(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("darts-amend: error: cannot resume")
    assert "checkpoint.pt and checkpoint.prev.pt: each is damaged" in err[0]
    assert "--force" in err[0] and len(err[0].replace(str(out), "<dir>")) <= 200, err[0]
    assert _snapshot(out) == before


def test_digest_catches_content_changed_behind_the_file_format(tmp_path):
    """A file that loads fine but whose tensors were altered fails the content check."""
    out = tmp_path / "ck.pt"
    state = {"epoch": 1, "step": 0, "model": {"w": torch.arange(4.0)}, "optimizer": {},
             "rng": {}, "format": FORMAT}
    state["digest"] = content_digest(state)
    torch.save(state, out)
    assert read_checkpoint(out)["model"]["w"].tolist() == [0, 1, 2, 3]
    state["model"]["w"][2] = 7.0
    torch.save(state, out)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        read_checkpoint(out)


def test_pickled_callable_is_refused_never_run(tmp_path, capsys):
    """weights_only loading: a shared run folder whose checkpoint carries code is refused."""
    out = tmp_path / "shared"
    assert _search(out, "--epochs", "1") == 0
    marker = tmp_path / "pwned"
    for name in (CURRENT, PREVIOUS):
        ck = read_checkpoint(out / name)
        ck["evil"] = _Evil(str(marker))
        ck["digest"] = content_digest(ck)
        torch.save(ck, out / name)
    before = _snapshot(out)
    assert _resume(out) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt and checkpoint.prev.pt: each holds pickled objects" in err
    assert "not loaded" in err and len(err.strip().replace(str(out), "<dir>")) <= 200, err
    assert not marker.exists()  # the pickled call never ran
    assert _snapshot(out) == before


class _Evil:
    """Pickles to a call of ``open(path, 'w')``: what an unsafe load would execute."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# --------------------------------------------------------------------------- disks


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"),
                                        (errno.EROFS, "Read-only file system")])
def test_disk_full_or_read_only_clear_error_checkpoints_intact(reference, tmp_path,
                                                               monkeypatch, capsys, code, text):
    out = _interrupted(tmp_path, monkeypatch)
    kept = {n: (out / n).read_bytes() for n in (CURRENT, PREVIOUS)}
    real_save = torch.save

    def failing(obj, fh, *a, **k):  # the disk fills up part way through the write
        fh.write(b"\0" * 100)
        raise OSError(code, text)

    monkeypatch.setattr(torch, "save", failing)
    capsys.readouterr()
    assert _resume(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write {out / CURRENT}: {text}" in err[0], err
    assert len(err[0].replace(str(out), "<dir>")) <= 200, err[0]
    assert {n: (out / n).read_bytes() for n in (CURRENT, PREVIOUS)} == kept
    assert not list(out.glob(".*.tmp"))  # the partial temporary file is gone
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run goes on
    assert _resume(out) == 0
    _assert_same_run(reference, out)


def test_unwritable_output_folder_fresh_run(tmp_path, monkeypatch, capsys):
    import darts_amend.cli.checkpoint as ckmod

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckmod.tempfile, "mkstemp", read_only)
    out = tmp_path / "ro"
    assert _search(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write" in err[0] and "Read-only file system" in err[0]


# --------------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two interpreters per case
@pytest.mark.parametrize("mode", ["rank1_dies", "rank1_hangs"])
def test_rank_death_or_hang_ends_the_other_rank_with_a_clear_error(tmp_path, mode):
    script = tmp_path / "hooks.py"
    script.write_text(HOOKS)
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), mode, "1", "search", *TINY, *EPOCHS,
             "--dist_timeout", "8", "--output", str(tmp_path / "run")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=240)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("darts-amend")]
    assert procs[0].returncode == 2, err[-3000:]
    assert lines and "rank 0: lost contact with the other torchrun processes" in lines[-1]
    assert "--resume" in lines[-1]
    assert "Traceback" not in err
    assert waited < 200  # bounded: the peer's death is seen at once, a hang after 8 s
