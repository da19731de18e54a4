"""The DARTS / PC-DARTS / P-DARTS adapters, driven exactly the way each upstream loop drives its
architect.

Ground truth: the core estimators (``unrolled``, ``amended``, ``first_order``), independent replays
of the
upstream computations (``test_adapters_support``), and P-DARTS' own inline update. Float64, tiny
supernets.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)
from test_adapters_support import (
    DartsLikeNet,
    PCDartsLikeNet,
    PDartsLikeNet,
    build,
    darts_args,
    device,
    make_batches,
    pdarts_inline_alpha_step,
    upstream_first_order_grads,
    upstream_second_order_grads,
)

from darts_amend.adapters import darts, p_darts, pc_darts
from darts_amend.estimators import amended, first_order, unrolled
from darts_amend.hvp import unwrap_model

ADAPTERS = {
    "darts": (darts.Architect, DartsLikeNet),
    "pc_darts": (pc_darts.Architect, PCDartsLikeNet),
    "p_darts": (p_darts.Architect, PDartsLikeNet),
}


def weights_and_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer (BatchNorm running statistics) of the model, alphas excluded by
    identity."""
    net = unwrap_model(model)
    alpha_ids = {id(a) for a in net.arch_parameters()}
    out = {
        f"p:{n}": p.detach().clone() for n, p in net.named_parameters() if id(p) not in alpha_ids
    }
    out.update({f"b:{n}": b.detach().clone() for n, b in net.named_buffers()})
    return out


def assert_bit_equal(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"changed by the architect step: {changed[:5]}"


def alphas_of(model: nn.Module) -> list[torch.Tensor]:
    return [a.detach().clone() for a in unwrap_model(model).arch_parameters()]


def weight_optimizer(model: nn.Module, args) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )


def warm_up(model: nn.Module, optimizer: torch.optim.Optimizer, batches, steps: int = 2) -> None:
    """A few plain weight steps, so the SGD momentum buffers exist (the unrolled step reads
    them)."""
    for x, y in batches[:steps]:
        optimizer.zero_grad()
        model._loss(x, y).backward()
        optimizer.step()


# ------------------------------------------------------------------------ the upstream loops,
# replayed
def darts_train_epochs(
    model, architect, args, train, valid, epochs, *, arch_from_epoch=0, check=None
):
    """quark0/darts (and PC-DARTS, with ``arch_from_epoch=15`` there) ``train()``, modern-PyTorch
    spelling."""
    criterion = nn.CrossEntropyLoss()
    optimizer = weight_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs), eta_min=1e-3)
    for epoch in range(epochs):
        lr = scheduler.get_last_lr()[0]
        for (input, target), (input_search, target_search) in zip(train, valid, strict=True):
            model.train()
            if epoch >= arch_from_epoch:
                before = (weights_and_buffers(model), alphas_of(model))
                architect.step(
                    input,
                    target,
                    input_search,
                    target_search,
                    lr,
                    optimizer,
                    unrolled=args.unrolled,
                )
                if check is not None:
                    check(before, model)
            optimizer.zero_grad()
            logits = model(input)
            loss = criterion(logits, target)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
        scheduler.step()


def step_checks(before, model):
    """After every architect step: every alpha tensor moved, weights and BN statistics
    bit-identical."""
    weights, alphas = before
    assert_bit_equal(weights, weights_and_buffers(model))
    for a0, a1 in zip(alphas, alphas_of(model), strict=True):
        assert not torch.equal(a0, a1)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


# ------------------------------------------------------------------------------------- DARTS
def test_darts_loop_amended_by_default(no_warnings):
    model = build(DartsLikeNet)
    batches = make_batches(6)
    args = darts_args()  # no amend_* fields at all: amended, eta = 0.1
    architect = darts.Architect(model, args)
    assert architect.estimator == "amended" and architect.amend_eta == 0.1
    start = weights_and_buffers(model)
    darts_train_epochs(
        model, architect, args, batches[:3], batches[3:], epochs=2, check=step_checks
    )
    assert model.new_calls == 0
    info = architect.last_info
    assert info.finite and info.g2_norm > 0 and info.g1_norm > 0
    assert not torch.equal(
        start["p:classifier.weight"], model.classifier.weight
    )  # the weight steps ran
    assert model.genotype()


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
@pytest.mark.parametrize("flavor", ["darts", "pc_darts"])
def test_second_order_equals_core_unrolled(flavor, mode, no_warnings):
    cls, net_cls = ADAPTERS[flavor]
    model = build(net_cls)
    batches = make_batches(4)
    args = darts_args(unrolled=True, amend_estimator="unrolled", amend_mode=mode)
    optimizer = weight_optimizer(model, args)
    warm_up(model, optimizer, batches)
    (xt, yt), (xv, yv) = batches[2], batches[3]
    lr = 0.0173
    buffers = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    ref = unrolled(
        model,
        (xt, yt),
        (xv, yv),
        xi=lr,
        momentum=args.momentum,
        momentum_buffers=buffers,
        weight_decay=args.weight_decay,
        mode=mode,
    )
    no_momentum = unrolled(
        model, (xt, yt), (xv, yv), xi=lr, weight_decay=args.weight_decay, mode=mode
    )
    assert any(
        not torch.allclose(a, b) for a, b in zip(ref.grads, no_momentum.grads, strict=True)
    )  # momentum matters
    twin_alphas = [a.detach().clone().requires_grad_() for a in model.arch_parameters()]
    adam = torch.optim.Adam(
        twin_alphas,
        lr=args.arch_learning_rate,
        betas=(0.5, 0.999),
        weight_decay=args.arch_weight_decay,
    )
    architect = cls(model, args)
    before = weights_and_buffers(model)
    architect.step(xt, yt, xv, yv, lr, optimizer, unrolled=True)
    assert_bit_equal(before, weights_and_buffers(model))
    assert model.new_calls == 0
    for a, g in zip(model.arch_parameters(), ref.grads, strict=True):
        torch.testing.assert_close(a.grad, g, rtol=1e-12, atol=1e-15)
    for t, g in zip(twin_alphas, ref.grads, strict=True):
        t.grad = g.clone()
    adam.step()
    for a, t in zip(model.arch_parameters(), twin_alphas, strict=True):
        torch.testing.assert_close(a.detach(), t.detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("net_cls", [DartsLikeNet, PCDartsLikeNet])
def test_second_order_with_finite_differences_replays_upstream(net_cls):
    """Against an independent replay of upstream's algorithm (new(), flat theta, SGD state, central
    FD)."""
    model = build(net_cls)
    batches = make_batches(4)
    args = darts_args(unrolled=True, amend_estimator="unrolled", amend_mode="finite_difference")
    optimizer = weight_optimizer(model, args)
    warm_up(model, optimizer, batches)
    (xt, yt), (xv, yv) = batches[2], batches[3]
    lr = 0.021
    twin, twin_opt = copy.deepcopy(
        (model, optimizer)
    )  # one deepcopy: the optimizer state follows the copy
    expected = upstream_second_order_grads(
        twin, xt, yt, xv, yv, lr, twin_opt, args.momentum, args.weight_decay
    )
    assert twin.new_calls == 1 and model.new_calls == 0
    darts.Architect(model, args).step(xt, yt, xv, yv, lr, optimizer, unrolled=True)
    for a, g in zip(model.arch_parameters(), expected, strict=True):
        torch.testing.assert_close(a.grad, g, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("flavor", ["darts", "pc_darts", "p_darts"])
def test_amend_eta_zero_is_first_order(flavor):
    cls, net_cls = ADAPTERS[flavor]
    model = build(net_cls)
    (xt, yt), (xv, yv) = make_batches(2)
    expected = upstream_first_order_grads(model, xv, yv)
    core = first_order(model, (xt, yt), (xv, yv)).grads
    args = darts_args(amend_eta=0.0, grad_clip=1e6)
    architect = cls(model, args)
    architect.step(xt, yt, xv, yv, 0.025, weight_optimizer(model, args), unrolled=False)
    assert architect.last_info.g2_norm == 0.0
    for a, g, c in zip(model.arch_parameters(), expected, core, strict=True):
        torch.testing.assert_close(a.grad, g, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(a.grad, c, rtol=0, atol=0)


@pytest.mark.parametrize("flavor", ["darts", "pc_darts", "p_darts"])
def test_amend_eta_reaches_the_amended_estimator(flavor):
    cls, net_cls = ADAPTERS[flavor]
    grads = {}
    for eta in (0.1, 0.4):
        model = build(net_cls)
        (xt, yt), (xv, yv) = make_batches(2)
        ref = amended(model, (xt, yt), (xv, yv), eta=eta)
        args = darts_args(amend_eta=eta, grad_clip=1e6)
        cls(model, args).step(xt, yt, xv, yv, 0.025, weight_optimizer(model, args), unrolled=False)
        for a, g in zip(model.arch_parameters(), ref.grads, strict=True):
            torch.testing.assert_close(a.grad, g, rtol=1e-12, atol=1e-15)
        grads[eta] = ref.terms["g2"]
    for g_small, g_big in zip(
        grads[0.1], grads[0.4], strict=True
    ):  # g2' = -eta B H v is linear in eta
        torch.testing.assert_close(4 * g_small, g_big, rtol=1e-9, atol=1e-14)
    assert any(g.abs().sum() > 0 for g in grads[0.1])


def test_finite_difference_mode_reaches_the_amended_estimator():
    model = build(DartsLikeNet)
    (xt, yt), (xv, yv) = make_batches(2)
    ref = amended(model, (xt, yt), (xv, yv), eta=0.1, mode="finite_difference")
    args = darts_args(amend_mode="finite_difference")
    darts.Architect(model, args).step(xt, yt, xv, yv, 0.025, None, unrolled=False)
    for a, g in zip(model.arch_parameters(), ref.grads, strict=True):
        torch.testing.assert_close(a.grad, g, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------- PC-DARTS
def test_pc_darts_loop_steps_all_four_arch_tensors_from_the_start_epoch(no_warnings):
    model = build(PCDartsLikeNet)
    batches = make_batches(4)
    args = darts_args(arch_learning_rate=6e-4, amend_eta=0.1)
    architect = pc_darts.Architect(model, args)
    assert len(architect.alphas) == 4
    start = alphas_of(model)
    seen = []

    def check(before, m):
        step_checks(before, m)
        seen.append(1)

    darts_train_epochs(
        model, architect, args, batches[:2], batches[2:], epochs=2, arch_from_epoch=1, check=check
    )
    assert len(seen) == 2  # only the epoch >= arch_from_epoch steps
    assert all(not torch.equal(a, b) for a, b in zip(start, alphas_of(model), strict=True))
    assert model.new_calls == 0


# ------------------------------------------------------------------------------------- P-DARTS
def pdarts_stage(switches, p, args, batches, *, eps_no_arch, epochs, check=None):
    """One P-DARTS stage: rebuild the network (DataParallel), the optimizers and the architect."""
    torch.manual_seed(len(switches[0]))
    model = nn.DataParallel(
        PDartsLikeNet(switches=switches, p=p).to(device=device(), dtype=torch.float64)
    )
    criterion = nn.CrossEntropyLoss()
    network_params = [
        v
        for k, v in model.named_parameters()
        if not (k.endswith("alphas_normal") or k.endswith("alphas_reduce"))
    ]
    optimizer = torch.optim.SGD(
        network_params, args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
    )
    architect = p_darts.Architect(model, args)
    train, valid = batches[: len(batches) // 2], batches[len(batches) // 2 :]
    for epoch in range(epochs):
        lr = args.learning_rate
        model.module.p = p * (epochs - epoch - 1) / epochs
        model.module.update_p()
        for (input, target), (input_search, target_search) in zip(train, valid, strict=True):
            model.train()
            if epoch >= eps_no_arch:
                before = (weights_and_buffers(model), alphas_of(model))
                architect.step(
                    input, target, input_search, target_search, lr, optimizer, unrolled=False
                )
                if check is not None:
                    check(before, model, architect)
            optimizer.zero_grad()
            loss = criterion(model(input), target)
            loss.backward()
            nn.utils.clip_grad_norm_(network_params, args.grad_clip)
            optimizer.step()
    return model, optimizer, architect


def test_p_darts_stages_with_dataparallel_and_dropout(no_warnings):
    args = darts_args(arch_learning_rate=6e-4, grad_clip=5.0, amend_eta=0.1)
    batches = make_batches(4)
    steps = []

    def check(before, model, architect):
        step_checks(before, model)
        assert architect.last_info.finite and architect.last_info.g2_norm > 0
        steps.append(1)

    stage1 = pdarts_stage(
        [[True] * 4] * 5, 0.3, args, batches, eps_no_arch=1, epochs=2, check=check
    )
    stage2 = pdarts_stage(
        [[False, True, True, False]] * 5, 0.3, args, batches, eps_no_arch=1, epochs=2, check=check
    )
    assert len(steps) == 4
    assert stage2[0].module.alphas_normal.shape == (5, 2)
    # the stage-1 architect must not be reused with the stage-2 network's optimizer
    (x, y), (xs, ys) = batches[0], batches[1]
    old_alphas = alphas_of(stage1[0])
    with pytest.raises(ValueError, match="rebuilds it at every stage"):
        stage1[2].step(x, y, xs, ys, 0.025, stage2[1], unrolled=False)
    for a0, a1 in zip(old_alphas, alphas_of(stage1[0]), strict=True):
        assert torch.equal(a0, a1)


def test_p_darts_alpha_gradient_is_clipped_like_the_inline_update():
    args = darts_args(arch_learning_rate=6e-4, grad_clip=1e-4)
    (xt, yt), (xv, yv) = make_batches(2)
    model = nn.DataParallel(build(PDartsLikeNet, p=0.4))
    twin = copy.deepcopy(model)
    architect = p_darts.Architect(model, dataclass_args(args, amend_eta=0.0))
    torch.manual_seed(7)  # the same dropout masks for both (one forward on the search batch each)
    architect.step(xt, yt, xv, yv, 0.025, None, unrolled=False)
    torch.manual_seed(7)
    adam = torch.optim.Adam(
        twin.module.arch_parameters(),
        lr=args.arch_learning_rate,
        betas=(0.5, 0.999),
        weight_decay=args.arch_weight_decay,
    )
    pdarts_inline_alpha_step(twin, adam, nn.CrossEntropyLoss(), xv, yv, args.grad_clip)
    grad_norm = torch.cat([a.grad.reshape(-1) for a in model.module.arch_parameters()]).norm()
    assert architect.last_info.grad_norm > 10 * args.grad_clip  # clipping was engaged ...
    torch.testing.assert_close(
        grad_norm,
        torch.tensor(args.grad_clip, dtype=grad_norm.dtype, device=grad_norm.device),
        rtol=1e-4,
        atol=0,
    )
    for a, b in zip(
        model.module.arch_parameters(), twin.module.arch_parameters(), strict=True
    ):  # ... exactly as upstream
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-15)


def dataclass_args(args, **extra):
    merged = copy.copy(args)
    for k, v in extra.items():
        setattr(merged, k, v)
    return merged


def test_ddp_wrapped_model_is_unwrapped(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = build(PDartsLikeNet)
        (xt, yt), (xv, yv) = make_batches(2)
        ref = amended(model, (xt, yt), (xv, yv), eta=0.1)
        ddp = nn.parallel.DistributedDataParallel(model)
        args = darts_args()
        architect = p_darts.Architect(ddp, dataclass_args(args, grad_clip=1e6))
        weights = weights_and_buffers(model)
        architect.step(xt, yt, xv, yv, 0.025, weight_optimizer(ddp, args), unrolled=False)
        assert_bit_equal(weights, weights_and_buffers(model))
        for a, g in zip(model.arch_parameters(), ref.grads, strict=True):
            torch.testing.assert_close(a.grad, g, rtol=1e-12, atol=1e-15)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(amend_estimator="second_order"), "valid names: first_order, unrolled, amended"),
        (dict(amend_eta=-0.1), "invalid amend_eta"),
        (dict(amend_eta=float("nan")), "invalid amend_eta"),
        (
            dict(amend_estimator="unrolled", unrolled=True, amend_eta=0.1),
            "only used by amend_estimator 'amended'",
        ),
        (dict(unrolled=True), "--amend_estimator unrolled"),
        (dict(amend_estimator="unrolled"), "pass --unrolled"),
        (dict(amend_mode="fast"), "invalid amend_mode"),
        (dict(amend_estimator="first_order", amend_mode="exact"), "does nothing"),
        (dict(amend_eta=0.0, amend_mode="finite_difference"), "does nothing"),
        (dict(arch_learning_rate=0.0), "arch_learning_rate"),
    ],
)
def test_bad_args_are_refused_at_construction(overrides, match):
    model = build(DartsLikeNet)
    with pytest.raises(ValueError, match=match):
        darts.Architect(model, darts_args(**overrides))


def test_missing_args_field_is_named():
    args = darts_args()
    del args.arch_weight_decay
    with pytest.raises(ValueError, match="args has no 'arch_weight_decay'"):
        darts.Architect(build(DartsLikeNet), args)
    args = darts_args()
    del args.grad_clip
    darts.Architect(build(DartsLikeNet), args)  # DARTS does not read grad_clip ...
    with pytest.raises(ValueError, match="grad_clip"):
        p_darts.Architect(build(PDartsLikeNet), args)  # ... P-DARTS' update clips with it


def test_bad_step_input_changes_nothing():
    model = build(DartsLikeNet)
    (xt, yt), (xv, yv) = make_batches(2)
    delattr_args = darts_args()
    del delattr_args.unrolled  # a loop without --unrolled: the step's flag is checked instead
    architect = darts.Architect(model, delattr_args)
    before = alphas_of(model)
    with pytest.raises(ValueError, match="second-order DARTS"):
        architect.step(xt, yt, xv, yv, 0.025, None, unrolled=True)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        architect.step(xt, yt, xv, yv, 0.025, "sgd", unrolled=False)
    other = torch.optim.SGD(build(DartsLikeNet, seed=1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of this model's weights"):
        architect.step(xt, yt, xv, yv, 0.025, other, unrolled=False)
    second = darts.Architect(model, darts_args(unrolled=True, amend_estimator="unrolled"))
    with pytest.raises(ValueError, match="invalid eta"):
        second.step(xt, yt, xv, yv, 0.0, None, unrolled=True)
    for a0, a1 in zip(before, alphas_of(model), strict=True):
        assert torch.equal(a0, a1)
    assert all(a.grad is None for a in model.arch_parameters())


def test_state_dict_round_trip_resumes_identically():
    args = darts_args()
    batches = make_batches(4)
    model = build(DartsLikeNet)
    architect = darts.Architect(model, args)
    architect.step(*batches[0], *batches[1], 0.025, None, unrolled=False)
    saved_state, saved_alphas = copy.deepcopy(architect.state_dict()), alphas_of(model)
    architect.step(*batches[2], *batches[3], 0.025, None, unrolled=False)
    expected = alphas_of(model)
    resumed = darts.Architect(model, args)
    resumed.load_state_dict(saved_state)
    for a, s in zip(model.arch_parameters(), saved_alphas, strict=True):
        assert torch.equal(a.detach(), s)
    resumed.step(*batches[2], *batches[3], 0.025, None, unrolled=False)
    for a, e in zip(alphas_of(model), expected, strict=True):
        assert torch.equal(a, e)


def test_estimator_specific_options_reach_the_estimator_through_amend_flags():
    """``args.amend_<option>`` for any registry option of the chosen estimator; refused for one
    that the estimator does not take (never silently ignored)."""
    from types import SimpleNamespace

    from darts_amend.adapters._upstream import read_amend_options

    est, opts = read_amend_options(SimpleNamespace(
        amend_estimator="implicit_cg", amend_iterations=3, amend_damping=0.5, amend_tol=1e-6))
    assert est == "implicit_cg" and opts == {"iterations": 3, "damping": 0.5, "tol": 1e-6}
    est, opts = read_amend_options(SimpleNamespace(
        amend_estimator="implicit_neumann", amend_terms=4, amend_gamma=0.05))
    assert opts == {"terms": 4, "gamma": 0.05}
    _, opts = read_amend_options(SimpleNamespace(amend_mode="finite_difference", amend_r=0.001,
                                                 amend_fast_depthwise=False))
    assert opts == {"eta": 0.1, "mode": "finite_difference", "r": 0.001, "fast_depthwise": False}
    with pytest.raises(ValueError, match="amend_iterations does nothing for amend_estimator "
                                         "'amended' \\(it is an option of implicit_cg\\)"):
        read_amend_options(SimpleNamespace(amend_iterations=3))
    with pytest.raises(ValueError, match="amend_terms"):
        read_amend_options(SimpleNamespace(amend_estimator="implicit_neumann", amend_terms=0))
    with pytest.raises(ValueError, match="amend_r does nothing for amend_estimator 'first_order'"):
        read_amend_options(SimpleNamespace(amend_estimator="first_order", amend_r=0.01))
