"""AmendedArchitect: exact replay of Adam on the estimator's hypergradient, non-finite steps,
state_dict round trip and resume, distributed averaging, and every bad input."""

from __future__ import annotations

import copy
import io
import math
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    ArchNet,
    MixedMLP,
    NoArchNet,
    assert_same_state,
    flat,
    make_batch,
    one_thread,  # noqa: F401  (autouse fixture)
    seed_all,
    snapshot,
)
from torch import nn

from darts_amend import AmendedArchitect, amended, get_estimator
from darts_amend.hvp import list_cosine


def _setup(seed: int = 0, **kw):
    seed_all(seed)
    return (
        MixedMLP(batchnorm=True, **kw),
        make_batch(8, seed=seed + 1),
        make_batch(8, seed=seed + 2),
    )


def _batches(n: int, seed: int = 10):
    return [
        (make_batch(8, seed=seed + 2 * i), make_batch(8, seed=seed + 2 * i + 1)) for i in range(n)
    ]


def test_step_is_adam_on_the_estimator_hypergradient():
    model, tb, vb = _setup()
    ref = copy.deepcopy(model)
    arch = AmendedArchitect(model)  # amended, eta 0.1, Adam(3e-4, (0.5, 0.999), wd 1e-3)
    ref_alpha = ref.arch_parameters()
    ref_opt = torch.optim.Adam(ref_alpha, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    for tb_i, vb_i in _batches(3):
        res = amended(ref, tb_i, vb_i, eta=0.1)
        ref_alpha[0].grad = res.grads[0].clone()
        ref_opt.step()
        info = arch.step(tb_i, vb_i)
        assert torch.equal(model.arch_parameters()[0], ref_alpha[0])
        assert info.finite
        assert info.val_loss == float(res.val_loss)
        assert info.g1_norm == pytest.approx(float(flat(res.terms["g1"]).norm()), rel=1e-12)
        assert info.g2_norm == pytest.approx(float(flat(res.terms["g2"]).norm()), rel=1e-12)
        assert info.cosine == pytest.approx(
            list_cosine(res.terms["g1"], res.terms["g2"]), rel=1e-12
        )
        assert info.grad_norm == pytest.approx(float(flat(res.grads).norm()), rel=1e-12)
    # weights and BN statistics are the estimator's business only: untouched by the architect
    assert_same_state(
        {k: v for k, v in snapshot(ref).items() if k[0] in "pb"},
        {k: v for k, v in snapshot(model).items() if k[0] in "pb"},
    )
    assert torch.equal(model.arch_parameters()[0].grad, ref_alpha[0].grad)
    arch.zero_grad()
    assert model.arch_parameters()[0].grad is None


@pytest.mark.parametrize(
    "name,init,per_step",
    [
        ("first_order", {}, {}),
        ("unrolled", {"momentum": 0.9}, {"xi": 0.025, "weight_decay": 3e-4}),
        ("implicit_cg", {"iterations": 2, "damping": 0.1}, {}),
        ("implicit_neumann", {"terms": 2, "gamma": 0.05}, {}),
        ("amended", {"mode": "finite_difference"}, {"eta": 0.5}),
    ],
)
def test_any_estimator_by_name_with_per_step_options(name, init, per_step):
    model, tb, vb = _setup()
    ref = copy.deepcopy(model)
    arch = AmendedArchitect(model, estimator=name, lr=0.01, **init)
    info = arch.step(tb, vb, **per_step)
    opts = dict(init, **per_step)
    if name == "amended":
        opts.setdefault("eta", 0.1)
    res = get_estimator(name)(ref, tb, vb, **opts)
    ref_opt = torch.optim.Adam(
        ref.arch_parameters(), lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3
    )
    ref.arch_parameters()[0].grad = res.grads[0].clone()
    ref_opt.step()
    assert torch.equal(model.arch_parameters()[0], ref.arch_parameters()[0])
    assert info.finite and (
        name != "first_order" or (info.g2_norm == 0.0 and math.isnan(info.cosine))
    )
    assert arch.options == dict(
        init, **({"eta": 0.1} if name == "amended" else {})
    )  # per-step not kept


def test_non_finite_loss_or_hypergradient_leaves_alphas_untouched():
    model, tb, vb = _setup()
    arch = AmendedArchitect(model)
    arch.step(tb, vb)  # some Adam state to protect
    alpha = model.arch_parameters()[0]
    before = alpha.detach().clone()
    opt_before = copy.deepcopy(arch.optimizer.state_dict())
    with pytest.warns(RuntimeWarning, match="non-finite validation loss is nan"):
        info = arch.step(tb, (vb[0] * math.nan, vb[1]))
    assert not info.finite and all(
        math.isnan(x) for x in (info.val_loss, info.g1_norm, info.grad_norm)
    )
    assert torch.equal(alpha, before)
    with pytest.warns(RuntimeWarning, match="non-finite training loss"):
        assert not arch.step((tb[0] * math.inf, tb[1]), vb).finite

    # finite loss, non-finite hypergradient: d/dx sqrt(x) at 0 is inf
    def loss_fn(m, x, y):
        a = m.arch_parameters()[0]
        return m._loss(x, y) + torch.sqrt((a - a.detach()).abs()).sum()

    bad = AmendedArchitect(model, loss_fn=loss_fn, estimator="first_order")
    with pytest.warns(RuntimeWarning, match="non-finite hypergradient"):
        info = bad.step(tb, vb)
    assert not info.finite and math.isfinite(info.val_loss)
    assert torch.equal(alpha, before)
    sd = arch.optimizer.state_dict()
    assert torch.equal(sd["state"][0]["exp_avg"], opt_before["state"][0]["exp_avg"])
    assert float(sd["state"][0]["step"]) == float(opt_before["state"][0]["step"]) == 1.0


def test_state_dict_round_trip_and_resume_equal_an_uninterrupted_run():
    batches = _batches(4)
    model, _, _ = _setup(register_alphas=True)
    start = copy.deepcopy(model)
    arch = AmendedArchitect(model, eta=0.3, lr=0.01)
    for tb, vb in batches:
        arch.step(tb, vb)
    # interrupted after 2 steps, saved to bytes, resumed in a fresh process-like copy
    model2 = copy.deepcopy(start)
    arch2 = AmendedArchitect(model2, eta=0.3, lr=0.01)
    for tb, vb in batches[:2]:
        arch2.step(tb, vb)
    buf = io.BytesIO()
    torch.save({"arch": arch2.state_dict(), "weights": model2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model3 = copy.deepcopy(start)
    model3.load_state_dict(saved["weights"])
    with torch.no_grad():
        model3.arch_parameters()[0].zero_()  # the architect's state restores the alphas itself
    arch3 = AmendedArchitect(
        model3, eta=0.05, lr=0.5
    )  # settings come from the state, as torch.optim
    arch3.load_state_dict(saved["arch"])
    assert arch3.eta == 0.3 and arch3.optimizer.param_groups[0]["lr"] == 0.01
    sd2, sd3 = arch2.state_dict(), arch3.state_dict()
    assert sd2["options"] == sd3["options"] and sd2["estimator"] == sd3["estimator"]
    assert torch.equal(flat(sd2["alphas"]), flat(sd3["alphas"]))
    for k in sd2["optimizer"]["state"][0]:
        assert torch.equal(
            torch.as_tensor(sd2["optimizer"]["state"][0][k]),
            torch.as_tensor(sd3["optimizer"]["state"][0][k]),
        )
    for tb, vb in batches[2:]:
        arch3.step(tb, vb)
    assert torch.equal(model3.arch_parameters()[0], model.arch_parameters()[0])


def test_load_state_dict_mismatch_changes_nothing():
    model, tb, vb = _setup()
    arch = AmendedArchitect(model)
    arch.step(tb, vb)
    good = arch.state_dict()
    before = snapshot(model)
    other, _, _ = _setup(seed=1)
    with pytest.raises(ValueError, match="estimator 'amended'"):
        AmendedArchitect(other, estimator="first_order").load_state_dict(good)
    wrong_shape = dict(good, alphas=[torch.zeros(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="shape"):
        arch.load_state_dict(wrong_shape)
    with pytest.raises(ValueError, match="2 alphas"):
        arch.load_state_dict(dict(good, alphas=good["alphas"] * 2))
    with pytest.raises(ValueError, match="missing"):
        arch.load_state_dict({"alphas": good["alphas"]})
    with pytest.raises(ValueError, match="invalid eta"):
        arch.load_state_dict(dict(good, options={"eta": -1.0}))
    assert_same_state(before, snapshot(model))


def test_bad_inputs_raise_before_anything_changes():
    model, tb, vb = _setup()
    with pytest.raises(TypeError, match="arch_parameters"):
        AmendedArchitect(NoArchNet())
    with pytest.raises(ValueError, match="no tensors"):
        AmendedArchitect(ArchNet([]))
    with pytest.raises(ValueError, match="does not require grad"):
        AmendedArchitect(ArchNet([torch.zeros(2)]))
    with pytest.raises(ValueError, match="not a leaf"):
        AmendedArchitect(ArchNet([torch.zeros(2, requires_grad=True) + 1]))
    with pytest.raises(ValueError, match="invalid eta"):
        AmendedArchitect(model, eta=-0.1)
    with pytest.raises(ValueError, match="unknown estimator 'darts'; valid names"):
        AmendedArchitect(model, estimator="darts")
    with pytest.raises(ValueError, match="only used by estimator 'amended'"):
        AmendedArchitect(model, estimator="unrolled", eta=0.1)
    with pytest.raises(TypeError, match="unknown option.*iterations"):
        AmendedArchitect(model, iterations=3)
    with pytest.raises(ValueError, match="invalid lr"):
        AmendedArchitect(model, lr=0.0)
    with pytest.raises(ValueError, match="invalid betas"):
        AmendedArchitect(model, betas=(0.5, 1.0))
    with pytest.raises(ValueError, match="invalid mode"):
        AmendedArchitect(model, mode="fd")
    arch = AmendedArchitect(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="train_batch inputs are on meta"):
        arch.step((tb[0].to("meta"), tb[1]), vb)
    with pytest.raises(ValueError, match="invalid eta"):
        arch.step(tb, vb, eta=-1.0)
    with pytest.raises(ValueError, match="needs xi"):
        AmendedArchitect(model, estimator="unrolled").step(tb, vb)
    assert_same_state(before, snapshot(model))
    assert arch.optimizer.state_dict()["state"] == {}


def test_dataparallel_wrapper_is_unwrapped():
    model, tb, vb = _setup()
    ref = copy.deepcopy(model)
    AmendedArchitect(nn.DataParallel(model), estimator="first_order", lr=0.1).step(tb, vb)
    AmendedArchitect(ref, estimator="first_order", lr=0.1).step(tb, vb)
    assert torch.equal(model.arch_parameters()[0], ref.arch_parameters()[0])


# --------------------------------------------------------------------------- torch.distributed


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        model, _, _ = _setup()
        arch = AmendedArchitect(model, lr=0.01)
        tb, vb = _batches(world, seed=100)[rank]  # every rank sees different data
        info = arch.step(tb, vb)
        torch.save(
            {"alpha": model.arch_parameters()[0].detach(), "grad_norm": info.grad_norm},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # both ranks done before either tears gloo down: a rank that closes its sockets while
        # the other is still in a collective makes that one abort ("terminate called without
        # an active exception", SIGABRT), which failed CI once
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_single_process_group_takes_the_all_reduce_path():
    """Fast cover of the distributed branch (world size 1: the average is the gradient itself;
    then a faked second rank: the sum is halved)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    model, tb, vb = _setup()
    ref = copy.deepcopy(model)
    calls = []
    real, real_size = torch.distributed.all_reduce, torch.distributed.get_world_size
    with tempfile.TemporaryDirectory() as tmp:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{tmp}/init", rank=0, world_size=1
        )
        try:
            torch.distributed.all_reduce = lambda t, **kw: (calls.append(t.numel()), real(t, **kw))[
                1
            ]
            AmendedArchitect(model, lr=0.01).step(tb, vb)
            # as if a second rank contributed ones: the sum over 2 ranks, halved, per tensor
            torch.distributed.all_reduce = lambda t, **kw: t.add_(1.0)
            torch.distributed.get_world_size = lambda *a, **kw: 2
            out = AmendedArchitect._all_reduce((torch.tensor([1.0, 3.0]), torch.tensor([[5.0]])))
            assert torch.equal(out[0], torch.tensor([1.0, 2.0]))
            assert torch.equal(out[1], torch.tensor([[3.0]]))
        finally:
            torch.distributed.all_reduce = real
            torch.distributed.get_world_size = real_size
            torch.distributed.destroy_process_group()
    AmendedArchitect(ref, lr=0.01).step(tb, vb)
    assert calls == [model.arch_parameters()[0].numel()]
    assert torch.equal(model.arch_parameters()[0], ref.arch_parameters()[0])


@pytest.mark.slow
def test_distributed_step_averages_the_hypergradient():
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
        outs = [
            torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(world)
        ]
    assert torch.equal(outs[0]["alpha"], outs[1]["alpha"])
    # reference: one process, Adam on the mean of the per-rank hypergradients
    model, _, _ = _setup()
    grads = [
        amended(copy.deepcopy(model), tb, vb, eta=0.1).grads[0]
        for tb, vb in _batches(world, seed=100)
    ]
    mean = (grads[0] + grads[1]) / 2
    opt = torch.optim.Adam(model.arch_parameters(), lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)
    model.arch_parameters()[0].grad = mean
    opt.step()
    torch.testing.assert_close(
        outs[0]["alpha"], model.arch_parameters()[0].detach(), rtol=1e-14, atol=1e-15
    )
    assert outs[0]["grad_norm"] == pytest.approx(float(mean.norm()), rel=1e-12)
    assert float((grads[0] - grads[1]).norm()) > 1e-3  # the ranks really disagreed
