"""The cost options of the second-order estimators: ``chunks``, ``second_order_batch``,
``mode="forward_difference"`` and ``fast_depthwise`` (ground truth: dense Hessians, the
unchunked / full-batch estimator, PyTorch's own double backward)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICE,
    MixedMLP,
    assert_close,
    assert_same_state,
    dense_blocks,
    flat,
    make_batch,
    one_thread,  # noqa: F401  (autouse)
    seed_all,
    snapshot,
)
from torch import nn

from darts_amend import AmendedArchitect
from darts_amend._depthwise import fast_grouped_conv
from darts_amend.estimators import (
    amended,
    implicit_cg,
    implicit_neumann,
    unrolled,
    validate_options,
)
from darts_amend.hvp import (
    hessian_vector_product,
    mixed_vector_product,
    preserve_state,
    resolve_loss,
    second_order_products,
    split_batch,
    split_parameters,
    take_batch,
)
from darts_amend.supernet import build_search_network


def _mlp(seed: int = 0, **kw):
    seed_all(seed)
    model = MixedMLP(**kw).to(DEVICE)
    return model, make_batch(7, seed=seed + 1), make_batch(5, seed=seed + 2)


def _supernet(train: bool):
    """The darts-space supernet (8 ops incl. sep/dil convs: grouped convolutions), float64."""
    seed_all(0)
    net = build_search_network("darts", C=2, num_classes=3, layers=1).to(DEVICE, torch.float64)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(4, 3, 6, 6, generator=gen, dtype=torch.float64).to(DEVICE),
            torch.randint(0, 3, (4,), generator=gen).to(DEVICE),
        )
        for _ in range(2)
    ]
    if train:
        with torch.no_grad():  # running statistics away from their initial values
            net(batches[1][0])
    net.train(train)
    return net, batches[0], batches[1]


def _rel(a, b) -> float:
    return float((flat(a) - flat(b)).norm() / flat(b).norm())


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("mode", ["exact", "finite_difference", "forward_difference"])
def test_chunked_products_equal_one_batch_and_the_dense_hessian(mode):
    model, tb, _ = _mlp()
    alphas, weights = split_parameters(model)
    _, B, H = dense_blocks(model, tb)
    gen = torch.Generator().manual_seed(3)
    u = [torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in weights]
    loss_fn = resolve_loss()
    out = {}
    for chunks in (1, 3, 7):
        with preserve_state(model):
            p = second_order_products(
                model, tb, loss_fn, alphas, weights, mode=mode, r=1e-5, chunks=chunks
            )
            out[chunks] = (p.hvp(u), p.mixed(u))
    for chunks in (3, 7):  # 7 = one sample per micro-batch
        for got, ref in zip(out[chunks], out[1], strict=True):
            assert _rel(got, ref) < (1e-10 if mode == "exact" else 1e-7)
    # against the dense Hessian (norm-relative): exact to round-off, FD to O(r^2) / O(r)
    tol = {"exact": 1e-10, "finite_difference": 1e-7, "forward_difference": 1e-4}[mode]
    assert _rel(out[3][0], [H @ flat(u)]) < tol
    assert _rel(out[3][1], [B @ flat(u)]) < tol


def test_chunked_amended_equals_unchunked_on_an_eval_mode_supernet():
    net, tb, vb = _supernet(train=False)  # eval-mode BatchNorm: samples are independent
    before = snapshot(net)
    ref = amended(net, tb, vb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no coupling warning in eval mode
        got = amended(net, tb, vb, chunks=3)
    assert_close(got.grads, ref.grads, rtol=1e-10, atol=1e-14)
    assert float(flat(got.terms["g2"]).norm()) > 0
    assert_close(got.train_loss, ref.train_loss, rtol=1e-12)
    assert_same_state(before, snapshot(net))


@pytest.mark.parametrize(
    "estimator,opts",
    [(implicit_cg, {"iterations": 3}), (implicit_neumann, {"terms": 3}), (unrolled, {"xi": 0.1})],
)
def test_chunked_estimators_equal_unchunked_without_batchnorm(estimator, opts):
    model, tb, vb = _mlp()
    for mode in ("exact", "forward_difference"):
        ref = estimator(model, tb, vb, mode=mode, **opts)
        got = estimator(model, tb, vb, mode=mode, chunks=3, **opts)
        assert _rel(got.grads, ref.grads) < (1e-10 if mode == "exact" else 1e-7)


def test_chunks_with_train_mode_batchnorm_warn_and_leave_state():
    net, tb, vb = _supernet(train=True)
    before = snapshot(net)
    with pytest.warns(UserWarning, match="ghost-batch-norm"):
        got = amended(net, tb, vb, chunks=2)
    ref = amended(net, tb, vb)
    assert got.is_finite() and _rel(got.terms["g2"], ref.terms["g2"]) > 1e-6  # it differs
    assert_same_state(before, snapshot(net))


def test_split_and_take_batch():
    x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    parts = split_batch((x, y), 3)
    assert [p[0][0].shape[0] for p in parts] == [2, 2, 1]
    assert [s for _, s in parts] == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([p[0][1] for p in parts]), y)
    assert len(split_batch((x, y), 50)) == 5  # at most one micro-batch per sample
    nested = ({"a": x, "scale": 2.0}, y)
    first = take_batch(nested, 2)
    assert torch.equal(first[0]["a"], x[:2]) and first[0]["scale"] == 2.0
    assert take_batch((x, y), 9) == (x, y)
    with pytest.raises(ValueError, match="first .sample. dimension"):
        split_batch((x, y[:3]), 2)


# --------------------------------------------------------------------------- sub-batch


@pytest.mark.parametrize("mode", ["exact", "finite_difference", "forward_difference"])
def test_second_order_batch_is_the_estimator_on_that_sub_batch(mode):
    net, tb, vb = _mlp(batchnorm=True)  # train-mode BatchNorm: the sub-batch's own statistics
    net.train()
    sub = (tb[0][:4], tb[1][:4])
    got = amended(net, tb, vb, second_order_batch=4, mode=mode)
    ref = amended(net, sub, vb, mode=mode)
    assert_close(got.grads, ref.grads, rtol=1e-12, atol=1e-15)
    full = amended(net, tb, vb, mode=mode)
    assert _rel(got.terms["g2"], full.terms["g2"]) > 1e-6  # a different estimator
    # larger than the batch: the whole batch
    assert_close(amended(net, tb, vb, second_order_batch=99).grads, amended(net, tb, vb).grads)


def test_second_order_batch_in_unrolled_acts_on_the_mixed_product_only():
    model, tb, _ = _mlp()
    vb = make_batch(5, seed=9)
    kw = dict(xi=0.1, weight_decay=1e-3)
    got = unrolled(model, tb, vb, second_order_batch=3, **kw)
    full = unrolled(model, tb, vb, **kw)
    assert_close(got.terms["g1"], full.terms["g1"], rtol=1e-14)  # unrolled step: whole batch
    assert _rel(got.terms["g2"], full.terms["g2"]) > 1e-6


# --------------------------------------------------------------------------- forward differences


def _counting(calls):
    def loss_fn(model, x, y):
        calls.append(x.shape[0])
        return F.cross_entropy(model(x), y)

    return loss_fn


def test_forward_difference_against_central_and_exact_on_a_smooth_toy():
    model, tb, vb = _mlp()
    exact = amended(model, tb, vb).terms["g2"]
    errs = {}
    for mode in ("finite_difference", "forward_difference"):
        for r in (1e-3, 1e-4):
            errs[mode, r] = _rel(amended(model, tb, vb, mode=mode, r=r).terms["g2"], exact)
    # stated tolerances: forward O(r), central O(r^2) (float64, tanh network)
    assert errs["forward_difference", 1e-4] < 1e-3
    assert errs["finite_difference", 1e-4] < 1e-6
    assert errs["forward_difference", 1e-4] > 10 * errs["finite_difference", 1e-4]
    ratio = errs["forward_difference", 1e-3] / errs["forward_difference", 1e-4]
    assert 5 < ratio < 20  # first order: error falls ~10x per 10x smaller step


@pytest.mark.parametrize("wrt", ["weights", "alphas"])
def test_forward_difference_products_match_the_dense_hessian(wrt):
    model, tb, _ = _mlp()
    A, B, H = dense_blocks(model, tb)
    alphas, weights = split_parameters(model)
    params = weights if wrt == "weights" else alphas
    gen = torch.Generator().manual_seed(4)  # (not ones: softmax alphas are shift-invariant)
    u = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    hv = hessian_vector_product(model, tb, u, wrt=wrt, mode="forward_difference", r=1e-5)
    assert _rel(hv, [(H if wrt == "weights" else A) @ flat(u)]) < 1e-4
    uw = [torch.ones_like(w) for w in weights]
    bu = mixed_vector_product(model, tb, uw, mode="forward_difference", r=1e-5)
    assert _rel(bu, [B @ flat(uw)]) < 1e-4


def test_forward_difference_saves_one_pass_per_estimator():
    model, tb, vb = _mlp()
    passes = {}
    for name, fn, kw in (
        ("amended", amended, {}),
        ("unrolled", unrolled, {"xi": 0.1}),
    ):
        for mode in ("finite_difference", "forward_difference"):
            calls: list[int] = []
            fn(model, tb, vb, loss_fn=_counting(calls), mode=mode, **kw)
            passes[name, mode] = len(calls)
    assert passes["amended", "finite_difference"] == 5
    assert passes["amended", "forward_difference"] == 4
    assert passes["unrolled", "finite_difference"] == 4
    assert passes["unrolled", "forward_difference"] == 3  # reuses the unrolled step's gradient


def test_forward_difference_unrolled_equals_its_reference_and_keeps_state():
    model, tb, vb = _mlp(batchnorm=True)
    model.train()
    before = snapshot(model)
    kw = dict(xi=0.05, weight_decay=1e-3, mode="forward_difference", r=1e-4)
    got = unrolled(model, tb, vb, **kw)
    # reference: the same estimator without reusing the base gradient (chunks=1 via the
    # sub-batch path, which recomputes it)
    ref = unrolled(model, tb, vb, second_order_batch=99, **kw)
    assert_close(got.grads, ref.grads, rtol=1e-10, atol=1e-14)
    assert_same_state(before, snapshot(model))


# --------------------------------------------------------------------------- fast depthwise


def test_fast_depthwise_equals_pytorchs_double_backward_on_a_train_mode_supernet():
    net, tb, vb = _supernet(train=True)
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in net.modules())
    before = snapshot(net)
    fast = amended(net, tb, vb)
    native = amended(net, tb, vb, fast_depthwise=False)
    assert_close(fast.grads, native.grads, rtol=1e-10, atol=1e-14)
    assert float(flat(fast.terms["g2"]).norm()) > 0
    assert_same_state(before, snapshot(net))


@pytest.mark.parametrize(
    "stride,dilation,padding,size,bias",
    [(1, 1, 1, 7, False), (2, 1, 2, 9, True), (1, 2, 2, 8, False), (2, 2, 4, 11, True)],
)
def test_fast_grouped_conv_gradients_and_hessian_products(stride, dilation, padding, size, bias):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)  # groups 2
    b = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    params = [x0, w] + ([b] if bias else [])
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]

    def products(fast: bool):
        with fast_grouped_conv(fast):
            y = F.conv2d(torch.tanh(x0), w, b, stride, padding, dilation, 2)
        loss = (torch.tanh(y) ** 2).sum()
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(g, params, v)
        return [t.detach() for t in g], hv

    (g_fast, hv_fast), (g_ref, hv_ref) = products(True), products(False)
    assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-13)
    assert_close(hv_fast, hv_ref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- validation, wiring


@pytest.mark.parametrize(
    "options,match",
    [
        ({"chunks": 0}, "invalid chunks: 0"),
        ({"chunks": 2.0}, "invalid chunks"),
        ({"chunks": True}, "invalid chunks"),
        ({"second_order_batch": 0}, "invalid second_order_batch: 0"),
        ({"second_order_batch": "8"}, "invalid second_order_batch"),
        ({"fast_depthwise": 1}, "invalid fast_depthwise: 1"),
        ({"mode": "forward"}, "invalid mode: 'forward'"),
    ],
)
def test_bad_cost_options_are_rejected_before_anything_runs(options, match):
    model, tb, vb = _mlp()
    calls: list[int] = []
    for est in ("amended", "unrolled", "implicit_cg", "implicit_neumann"):
        with pytest.raises(ValueError, match=match):
            validate_options(est, options)
    with pytest.raises(ValueError, match=match):
        amended(model, tb, vb, loss_fn=_counting(calls), **options)
    with pytest.raises(ValueError, match=match):
        AmendedArchitect(model, **options)
    assert calls == []


def test_architect_step_with_cost_options_moves_alphas_and_round_trips():
    model, tb, vb = _mlp()
    arch = AmendedArchitect(model, chunks=2, second_order_batch=4, mode="forward_difference")
    assert arch.options["chunks"] == 2 and arch.options["second_order_batch"] == 4
    before = model.arch_parameters()[0].detach().clone()
    assert arch.step(tb, vb).finite
    assert not torch.equal(before, model.arch_parameters()[0])
    other = AmendedArchitect(model, chunks=2, second_order_batch=4, mode="forward_difference")
    other.load_state_dict(arch.state_dict())
    assert other.options == arch.options


def _darts_args(**fields):
    base = dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
    return SimpleNamespace(**base, **fields)


def test_adapter_flags_reach_the_options():
    from darts_amend.adapters.darts import Architect

    model, tb, vb = _mlp()
    args = _darts_args(amend_chunks=3, amend_second_order_batch=4, amend_mode="forward_difference")
    architect = Architect(model, args)
    opts = architect._architect.options
    assert (opts["chunks"], opts["second_order_batch"], opts["mode"]) == (
        3,
        4,
        "forward_difference",
    )
    ref = amended(model, tb, vb, chunks=3, second_order_batch=4, mode="forward_difference")
    architect.step(*tb, *vb, 0.025, None, unrolled=False)
    assert architect.last_info.g2_norm == pytest.approx(ref.norm("g2"), rel=1e-6)
    with pytest.raises(ValueError, match="invalid amend_chunks: 0"):
        Architect(model, _darts_args(amend_chunks=0))
    with pytest.raises(ValueError, match="amend_second_order_batch does nothing with amend_eta=0"):
        Architect(model, _darts_args(amend_second_order_batch=8, amend_eta=0.0))
    with pytest.raises(ValueError, match="amend_chunks does nothing for amend_estimator"):
        Architect(model, _darts_args(amend_chunks=2, amend_estimator="first_order"))


def test_search_flags_reach_the_options():
    from darts_amend.cli.settings import SearchConfig, estimator_options

    cfg = SearchConfig(hvp_chunks=4, second_order_batch=16, hvp_mode="forward_difference")
    opts = estimator_options(cfg)
    assert (opts["chunks"], opts["second_order_batch"], opts["mode"]) == (
        4,
        16,
        "forward_difference",
    )
    assert estimator_options(SearchConfig())["second_order_batch"] is None
    assert validate_options("amended", opts) == opts
