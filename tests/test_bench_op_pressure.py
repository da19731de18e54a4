"""bench/op_pressure.py: its states are the CLI search's own (network, batches, checkpoint), its
none-components are the estimators' own terms, and its softmax rate has the sign and size of a
direct finite step."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from helpers import (
    load_bench,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread per test)
)


@pytest.fixture(scope="module")
def op():
    return load_bench("op_pressure")


def _argv(out: Path, steps: int = 1) -> list[str]:
    return ["search", "--dataset", "digits", "--subset", "0.1", "--space", "nb201",
            "--layers", "1", "--init_channels", "2", "--batch_size", "16", "--epochs", "1",
            "--steps_per_epoch", str(steps), "--seed", "3", "--threads", "1", "--no-progress",
            "--no-plots", "-q", "--estimator", "amended", "--output", str(out)]


def test_states_and_batches_are_the_cli_search_s(op, tmp_path, monkeypatch) -> None:
    """The initial network and the first batch pair equal what ``darts-amend search`` builds
    and feeds its architect; a finished run's checkpoint and config load back as saved."""
    import darts_amend.supernet as supernet
    from darts_amend import AmendedArchitect
    from darts_amend.cli import main

    built, seen = [], []
    orig_build, orig_step = supernet.build_search_network, AmendedArchitect.step

    def build(*a, **k):
        net = orig_build(*a, **k)
        built.append(copy.deepcopy(net.state_dict()))
        return net

    def step(self, train_batch, valid_batch, **k):
        seen.append((train_batch, valid_batch))
        return orig_step(self, train_batch, valid_batch, **k)

    monkeypatch.setattr(supernet, "build_search_network", build)
    monkeypatch.setattr(AmendedArchitect, "step", step)
    argv = _argv(tmp_path / "run", steps=2)
    assert main(argv) == 0
    monkeypatch.undo()
    cfg = op.cli_config(argv[:-2] + ["--output", str(tmp_path / "other")])
    net, train_set, split = op.build_state(cfg)
    ours = net.state_dict()
    assert built and set(ours) == set(built[0])
    for k, v in built[0].items():
        assert torch.equal(ours[k], v), k
    pairs = op.batch_pairs(cfg, train_set, split, 2)
    assert len(seen) == 2
    for (tb, vb), (stb, svb) in zip(pairs, seen, strict=True):
        for a, b in ((tb, stb), (vb, svb)):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the final state: the stored config is the same config; the checkpoint's alphas moved
    stored = op.stored_config(tmp_path / "run")
    assert stored == cfg
    final, _, _ = op.build_state(stored, tmp_path / "run" / "checkpoint.pt")
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert torch.equal(final.arch_parameters()[0], ck["model"]["alphas.0"])
    assert not torch.equal(final.arch_parameters()[0], net.arch_parameters()[0])


def test_study_config_has_the_setting_s_flags(op) -> None:
    w, s = op.study_config("W", 1), op.study_config("S", 2)
    assert (w.space, w.seed, w.subset, w.arch_learning_rate) == ("nb201", 1, 1.0, 1e-2)
    assert (s.seed, s.subset, s.arch_learning_rate) == (2, 0.2, 3e-2)


def test_none_components_are_the_estimators_terms(op, tmp_path) -> None:
    from darts_amend.estimators import amended, implicit_cg

    cfg = op.cli_config(_argv(tmp_path / "run"))
    net, train_set, split = op.build_state(cfg)
    with torch.no_grad():  # away from uniform, so that the softmax weights matter
        net.arch_parameters()[0].normal_(0.0, 0.5)
    pairs = op.batch_pairs(cfg, train_set, split, 3)
    r = op.probe_state(net, pairs, cg_iterations=4)
    none = net.op_names.index("none")
    want: dict[str, list[torch.Tensor]] = {t: [] for t in op.TERMS}
    for tb, vb in pairs:
        a01 = amended(net, tb, vb, eta=0.1)
        a1 = amended(net, tb, vb, eta=1.0)
        cg = implicit_cg(net, tb, vb, iterations=4)
        want["g1"].append(a01.terms["g1"][0])
        want["g2_amended_0.1"].append(a01.terms["g2"][0])
        want["g2_amended_1"].append(a1.terms["g2"][0])
        want["g2_cg"].append(cg.terms["g2"][0])
        want["g_amended_0.1"].append(a01.grads[0])
        want["g_amended_1"].append(a1.grads[0])
        want["g_cg"].append(cg.grads[0])
    for t in op.TERMS:
        got = torch.tensor(r["terms"][t]["per_pair"]["component"], dtype=torch.float64)
        ref = torch.stack([g[:, none] for g in want[t]]).double()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-9)
        means = torch.tensor([s["mean"] for s in r["terms"][t]["component"]], dtype=torch.float64)
        torch.testing.assert_close(means, ref.mean(0), rtol=1e-6, atol=1e-12)
    assert r["terms"]["g2_amended_1"]["component"][0]["mean"] == pytest.approx(
        10 * r["terms"]["g2_amended_0.1"]["component"][0]["mean"], rel=1e-4)  # linear in eta
    ratio = [float(a.norm() / b.norm()) for a, b in zip(want["g2_amended_0.1"], want["g1"],
                                                        strict=True)]
    assert r["ratio_g2_g1"]["amended_0.1"]["per_pair"] == pytest.approx(ratio, rel=1e-5)
    cos = [float((a * b).sum() / (a.norm() * b.norm()))
           for a, b in zip(want["g2_amended_0.1"], want["g2_cg"], strict=True)]
    assert r["cos_g2amended_g2cg"]["per_pair"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
    r["label"] = "initial W s3"
    text = op.table([r])
    rate = r["terms"]["g1"]["rate"][1]
    assert "| initial W | 1 | g1 |" in text and op._fmt(rate, 1e3) in text


def test_rate_has_the_sign_and_size_of_a_finite_step(op) -> None:
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(6, 5, generator=gen)
    g = torch.randn(6, 5, generator=gen)
    e = op.none_effects(alpha, g, 0)
    t = 1e-6
    step = (torch.softmax(alpha.double() - t * g.double(), -1)[:, 0]
            - torch.softmax(alpha.double(), -1)[:, 0]) / t
    assert all(math.copysign(1, a) == math.copysign(1, b) for a, b in zip(e["rate"], step.tolist(),
                                                                           strict=True))
    assert e["rate"] == pytest.approx(step.tolist(), rel=1e-4, abs=1e-9)
    assert e["fd_rate"] == pytest.approx(e["rate"], rel=1e-2, abs=1e-6)
    # a positive none-component at uniform alphas lowers none (descent), a negative raises it
    u = torch.zeros(1, 5)
    up = op.none_effects(u, torch.tensor([[-1.0, 0.25, 0.25, 0.25, 0.25]]), 0)
    down = op.none_effects(u, torch.tensor([[1.0, -0.25, -0.25, -0.25, -0.25]]), 0)
    assert up["component"][0] < 0 < up["rate"][0]
    assert down["component"][0] > 0 > down["rate"][0]
    assert up["rate"][0] == pytest.approx(0.2 * 1.0)  # -p (g_n - p.g) = -0.2 * (-1 - 0)


def test_direction_and_table(op) -> None:
    assert op.direction({"mean": 1.0, "se": 0.4}) == "up"
    assert op.direction({"mean": -1.0, "se": 0.4}) == "down"
    assert op.direction({"mean": 1.0, "se": 0.6}) == "within"
    assert op.direction({"mean": 1.0, "se": math.nan}) == "within"
