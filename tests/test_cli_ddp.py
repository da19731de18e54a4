"""`darts-amend search` under torchrun: 2 CPU processes (gloo), DDP weights, all-reduced alphas.

Each rank records its architect; after the run both ranks must hold bit-identical alphas and
weights, equal to what rank 0 alone wrote to checkpoint.pt and genotype.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from darts_amend.cli import main
from darts_amend.cli.runtime import Dist, epoch_loader

SCRIPT = r'''
import os, sys, torch
import darts_amend
from darts_amend.cli import main

seen = {}

class Recording(darts_amend.AmendedArchitect):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        seen["architect"] = self

darts_amend.AmendedArchitect = Recording
rc = main(sys.argv[2:])
arch = seen["architect"]
torch.save({"rc": rc, "alphas": [a.detach().clone() for a in arch.alphas],
            "weights": {k: v.detach().clone() for k, v in arch.model.named_parameters()},
            "buffers": {k: v.clone() for k, v in arch.model.named_buffers()},
            "steps": arch.optimizer.state[arch.alphas[0]]["step"]},
           os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
'''


@pytest.mark.slow  # ~20-30 s on 2 busy cores: two interpreters import torch
def test_torchrun_two_ranks_keep_identical_alphas(tmp_path):
    script = tmp_path / "ddp_search.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", str(script), str(tmp_path),
           "search", "--dataset", "fake", "--fake_size", "16", "--image_size", "8",
           "--space", "s1", "--layers", "2", "--init_channels", "4", "--batch_size", "4",
           "--epochs", "2", "--threads", "1", "--no-progress", "--no-plots", "-q",
           "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["rc"] == r1["rc"] == 0
    # 8 weight-half images, global batch 4 = 2 per rank: 2 steps per epoch on each rank
    assert r0["steps"] == r1["steps"] == 4
    for a, b in zip(r0["alphas"], r1["alphas"], strict=True):
        assert torch.equal(a, b)
    # weights through DDP; BatchNorm statistics are re-synchronised from rank 0 before each
    # evaluation and forward, so after the last evaluation they agree too
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
    for key, value in r0["buffers"].items():
        assert torch.equal(value, r1["buffers"][key]), key
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    for a, b in zip(ck["architect"]["alphas"], r0["alphas"], strict=True):
        assert torch.equal(a, b)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # rank 0 alone wrote the metrics
    assert [r["alpha_steps"] for r in rows] == [2, 4]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_rank_shards_partition_the_epoch_and_restart_mid_epoch():
    """The data path of the DDP run, in-process: the two ranks' shards partition the indices,
    and restarting at batch k yields exactly the remaining batches of that rank."""
    data = torch.utils.data.TensorDataset(torch.arange(40.0), torch.arange(40))
    idx = list(range(3, 27))  # 24 samples of a subset

    def batches(rank, start=0, epoch=5):
        loader = epoch_loader(data, idx, batch_size=3, epoch=epoch, seed=1,
                              d=Dist(rank, 2), workers=0, start_batch=start)
        return [y.tolist() for _, y in loader]

    r0, r1 = batches(0), batches(1)
    assert len(r0) == len(r1) == 4
    seen = sorted(v for b in r0 + r1 for v in b)
    assert seen == idx  # disjoint shards covering the subset
    assert batches(0, start=2) == r0[2:]
    assert batches(0, epoch=6) != r0  # a new permutation each epoch


def test_global_batch_must_split_over_processes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["search", "--batch_size", "5", "--output", str(tmp_path / "o")]) == 2
    assert "divisible by the 2 torchrun processes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
