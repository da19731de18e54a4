"""The DrNAS, beta-DARTS and DARTS-PT adapters, driven the way the forks' scripts call them, on
replicas written for this project (tests/fork_replicas.py; no fork code)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from fork_replicas import (
    DirichletNet,
    NB201Net,
    ProjNet,
    beta_decay_closed_form,
    drnas_args,
    fork_args,
    vector_batches,
)
from helpers import (  # noqa: F401
    assert_close,
    assert_same_state,
    flat,
    one_thread,
    snapshot,
)

from darts_amend import amended, first_order, unrolled
from darts_amend.adapters import beta_darts, darts, darts_pt, drnas


def _drnas_net(seed: int = 0, **kw) -> DirichletNet:
    torch.manual_seed(seed)
    net = DirichletNet(**kw).double()
    net._initialize_alphas(len(net.edges), len(net.edges[0].ops))
    return net


def _wb(net) -> dict:
    """Weights, buffers and weight grads (not the alphas) of a snapshot."""
    return {
        k: v
        for k, v in snapshot(net).items()
        if k[:2] in ("p:", "b:", "g:") and "_arch_parameters" not in k
    }


def _sgd(net, args):
    return torch.optim.SGD(
        [p for p in net.parameters() if p is not net.alphas_normal],
        args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )


def _weight_step(net, optimizer, batch):
    optimizer.zero_grad()
    net._loss(*batch).backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------ DrNAS
def test_drnas_weight_decay_from_reg_type():
    net = _drnas_net()
    assert drnas.Architect(net, drnas_args()).optimizer.param_groups[0]["weight_decay"] == 1e-3
    kl = drnas.Architect(net, drnas_args(reg_type="kl", reg_scale=0.5))
    assert kl.optimizer.param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="reg_type"):
        drnas.Architect(net, drnas_args(reg_type="l1"))
    args = drnas_args()
    del args.reg_type
    with pytest.raises(ValueError, match="args has no 'reg_type'"):
        drnas.Architect(net, args)
    with pytest.raises(ValueError, match="arch_weight_decay"):
        darts.Architect(net, drnas_args())  # the DARTS adapter fails as the issue reported


@pytest.mark.parametrize(
    "flags",
    [
        {},  # amended, exact
        {"amend_mode": "finite_difference"},
        {"amend_eta": 0.0},  # DrNAS' own first-order update
        {"amend_estimator": "unrolled", "unrolled": True},
    ],
)
def test_drnas_loop_with_prune_and_widen(flags):
    """DrNAS' progressive loop: 2 stages, pruning + widening in between (new weights and a new
    SGD); every architect step moves alpha and leaves weights and buffers as found."""
    net = _drnas_net(k=2)
    args = drnas_args(**flags)
    architect = drnas.Architect(net, args)
    optimizer = _sgd(net, args)
    batches = vector_batches(6, batch=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stage in range(2):
            for i in range(2):
                tb, vb = batches[2 * i], batches[2 * i + 1]
                alpha = net.alphas_normal.detach().clone()
                before = _wb(net)
                architect.step(*tb, *vb, args.learning_rate, optimizer, unrolled=args.unrolled)
                assert_same_state(before, _wb(net))
                assert not torch.equal(alpha, net.alphas_normal)
                optimizer.zero_grad()
                architect.optimizer.zero_grad()
                _weight_step(net, optimizer, tb)
            if stage == 0:
                stale = {id(p) for p in net.parameters()}
                net.pruning(3)
                net.wider(1)
                assert len({id(p) for p in net.parameters()} - stale) > 0  # new weight tensors
                optimizer = _sgd(net, args)


def test_drnas_unrolled_after_widen_reads_the_new_optimizer_momentum():
    net = _drnas_net(k=2)
    args = drnas_args(amend_estimator="unrolled", unrolled=True)
    architect = drnas.Architect(net, args)
    net.wider(1)
    optimizer = _sgd(net, args)
    tb, vb = vector_batches(2, batch=8)
    _weight_step(net, optimizer, tb)  # momentum buffers for the new weights
    weights = [p for p in net.parameters() if p is not net.alphas_normal]
    buffers = [optimizer.state[w]["momentum_buffer"] for w in weights]
    torch.manual_seed(4)
    want = unrolled(net, tb, vb, xi=0.025, momentum=0.9, momentum_buffers=buffers,
                    weight_decay=3e-4)
    torch.manual_seed(4)
    architect.step(*tb, *vb, 0.025, optimizer, unrolled=True)
    got = architect._architect.last_hypergradient
    for a, b in zip(got.grads, want.grads, strict=True):
        assert torch.equal(a, b)


def test_drnas_kl_regulariser_enters_g1():
    net = _drnas_net(sample=False, reg_type="kl", reg_scale=0.5)
    architect = drnas.Architect(net, drnas_args(reg_type="kl", reg_scale=0.5, amend_eta=0.0))
    tb, vb = vector_batches(2, batch=8)
    architect.step(*tb, *vb, 0.025, None, unrolled=False)
    got = architect._architect.last_hypergradient.grads[0]
    # ground truth at the alphas of the step: the same net rebuilt from the same seed
    net2 = _drnas_net(sample=False, reg_type="kl", reg_scale=0.5)
    ce = F.cross_entropy(net2(vb[0]), vb[1])
    full = torch.autograd.grad(net2._loss(*vb), net2.alphas_normal)[0]
    only_ce = torch.autograd.grad(ce, net2.alphas_normal)[0]
    assert_close(got, full, rtol=1e-12, atol=1e-14)
    assert float((full - only_ce).abs().max()) > 1e-3  # the KL term is really there


def test_drnas_common_random_numbers_flag():
    net = _drnas_net()
    tb, vb = vector_batches(2, batch=8)
    off = drnas.Architect(net, drnas_args(amend_mode="finite_difference",
                                          amend_common_random_numbers="off"))
    before = _wb(net)
    alpha = net.alphas_normal.detach().clone()
    with pytest.raises(ValueError, match="draws random numbers"):
        off.step(*tb, *vb, 0.025, None, unrolled=False)
    assert_same_state(before, _wb(net))
    assert torch.equal(alpha, net.alphas_normal)
    with pytest.raises(ValueError, match="amend_common_random_numbers"):
        drnas.Architect(net, drnas_args(amend_common_random_numbers="maybe"))
    grads = []
    for _ in range(2):  # the same seed: bit-identical estimates, finite differences included
        a = drnas.Architect(_drnas_net(), drnas_args(amend_mode="finite_difference"))
        torch.manual_seed(9)
        a.step(*tb, *vb, 0.025, None, unrolled=False)
        grads.append(a._architect.last_hypergradient.grads[0])
    assert torch.equal(grads[0], grads[1])


# -------------------------------------------------------------------------------------- beta-DARTS
def _nb201(seed: int = 0) -> NB201Net:
    torch.manual_seed(seed)
    return NB201Net().double()


@pytest.mark.parametrize("epoch", [0, 3, 40])
def test_beta_darts_nb201_call_adds_the_beta_decay_gradient(epoch):
    """g = (amended g1 + g2 of the plain loss) + lambda(epoch) softmax(A) / rows, to 1e-12."""
    net = _nb201()
    args = fork_args()
    architect = beta_darts.Architect(net, args)
    optimizer = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9)
    tb, vb = vector_batches(2, batch=8)
    plain = amended(net, tb, vb)
    before = _wb(net)
    # the fork's NAS-Bench-201 call: epoch positional, unrolled by keyword
    architect.step(*tb, *vb, 0.025, optimizer, epoch, unrolled=args.unrolled)
    got = architect._architect.last_hypergradient
    closed = beta_decay_closed_form(net.arch_parameters(), epoch)
    assert_close(got.terms["g2"], plain.terms["g2"], rtol=1e-10, atol=1e-14)
    want = [a + b for a, b in zip(plain.terms["g1"], closed, strict=True)]
    # two sums of the same terms in another order: round-off ~1e-11 at lambda = 20
    assert_close(got.terms["g1"], want, rtol=1e-9, atol=1e-12)
    assert_same_state(before, _wb(net))


def test_beta_darts_darts_space_call_needs_an_epoch():
    net = _nb201()
    args = fork_args()
    architect = beta_darts.Architect(net, args)
    tb, vb = vector_batches(2, batch=8)
    alpha = net._arch_parameters.detach().clone()
    with pytest.raises(ValueError, match="set_epoch"):
        architect.step(*tb, *vb, 0.025, None, unrolled=False)  # sota/cnn's call
    assert torch.equal(alpha, net._arch_parameters)
    architect.set_epoch(10)
    architect.step(*tb, *vb, 0.025, None, unrolled=False)
    # optimizers/darts' positional call: the bool is the unrolled flag, the epoch from set_epoch
    architect.step(*tb, *vb, 0.025, None, False)
    with pytest.raises(ValueError, match="amend_estimator"):
        architect.step(*tb, *vb, 0.025, None, True)  # --unrolled with amended: refused
    with pytest.raises(ValueError, match="invalid epoch"):
        architect.step(*tb, *vb, 0.025, None, -1, unrolled=False)


def test_beta_darts_at_epoch_zero_is_the_darts_adapter():
    args = fork_args()
    tb, vb = vector_batches(2, batch=8)
    nets = [_nb201(), _nb201()]
    beta_darts.Architect(nets[0], args).step(*tb, *vb, 0.025, None, 0, unrolled=False)
    darts.Architect(nets[1], args).step(*tb, *vb, 0.025, None, unrolled=False)
    assert torch.equal(nets[0]._arch_parameters, nets[1]._arch_parameters)


def test_beta_darts_second_order_also_gets_the_regulariser():
    net = _nb201()
    args = fork_args(amend_estimator="unrolled", unrolled=True)
    architect = beta_darts.Architect(net, args)
    tb, vb = vector_batches(2, batch=8)
    plain = unrolled(net, tb, vb, xi=0.025, momentum=0.9, weight_decay=3e-4)
    architect.step(*tb, *vb, 0.025, None, 8, unrolled=True)
    got = architect._architect.last_hypergradient
    closed = beta_decay_closed_form(net.arch_parameters(), 8)
    want = [a + b for a, b in zip(plain.grads, closed, strict=True)]
    assert_close(got.grads, want, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------- DARTS-PT
def _proj(args):
    torch.manual_seed(0)
    net = ProjNet().double()
    net.optimizer = torch.optim.SGD(net.get_weights(), 0.025, momentum=0.9)
    return net, darts_pt.Architect(net, args)


def test_darts_pt_accepts_the_three_calls_and_returns_none():
    args = fork_args(method="darts-proj")
    net, architect = _proj(args)
    batches = vector_batches(6, batch=8)
    calls = [
        lambda tb, vb: architect.step(*tb, *vb, 0.025, net.optimizer),  # sota search
        lambda tb, vb: architect.step(*tb, *vb, eta=0.025, network_optimizer=net.optimizer),
        lambda tb, vb: architect.step(*tb, *vb, return_logits=True),  # projection phase
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, call in enumerate(calls):
            tb, vb = batches[2 * i], batches[2 * i + 1]
            alpha = net._arch_parameters.detach().clone()
            net.optimizer.zero_grad()
            architect.optimizer.zero_grad()
            before = _wb(net)
            shared = call(tb, vb)
            assert shared is None
            assert not torch.equal(alpha, net._arch_parameters)
            assert_same_state(before, _wb(net))
            net.optimizer.zero_grad()
            architect.optimizer.zero_grad()
            net.step(*tb, args, shared=shared)  # the fork's weight step asserts shared is None
    with pytest.raises(TypeError, match="unexpected keyword"):
        architect.step(*batches[0], *batches[1], return_grad=True)


def test_darts_pt_eta_zero_is_the_forks_first_order_update():
    args = fork_args(method="darts", amend_eta=0.0)
    net, architect = _proj(args)
    tb, vb = vector_batches(2, batch=8)
    want = first_order(net, tb, vb).grads[0]
    architect.step(*tb, *vb, return_logits=True)
    assert torch.equal(architect._architect.last_hypergradient.grads[0], want)


def test_darts_pt_methods_reset_and_second_order():
    tb, vb = vector_batches(2, batch=8)
    net, blank = _proj(fork_args(method="blank-proj"))
    alpha = net._arch_parameters.detach().clone()
    assert blank.step(*tb, *vb, return_logits=True) is None
    assert torch.equal(alpha, net._arch_parameters)
    with pytest.raises(ValueError, match="args.method"):
        _proj(fork_args(method="darts-so"))
    net, architect = _proj(fork_args(method="darts"))
    start = net._arch_parameters.detach().clone()
    architect.step(*tb, *vb)
    assert not torch.equal(start, net._arch_parameters)
    architect.reset_arch_parameters()
    assert torch.equal(start, net._arch_parameters)
    args = fork_args(method="darts", amend_estimator="unrolled", unrolled=True)
    net, so = _proj(args)
    with pytest.raises(ValueError, match="needs eta"):
        so.step(*tb, *vb, return_logits=True)
    net.optimizer.zero_grad()
    net.step(*tb, args)  # a weight step first: the optimizer now has momentum buffers
    net.optimizer.zero_grad()
    weights = net.get_weights()
    buffers = [net.optimizer.state[w]["momentum_buffer"] for w in weights]
    want = unrolled(net, tb, vb, xi=0.01, momentum=0.9, momentum_buffers=buffers,
                    weight_decay=3e-4).grads  # the step's xi is the fork's current eta
    plain = unrolled(net, tb, vb, xi=0.01).grads  # without momentum and decay: different
    assert not torch.allclose(flat(plain), flat(want), rtol=1e-6)
    so.step(*tb, *vb, eta=0.01, network_optimizer=net.optimizer, unrolled=True)
    assert_close(so._architect.last_hypergradient.grads, want, rtol=1e-12, atol=1e-15)


def test_beta_darts_nb201_style_loop():
    """The fork's NB201 loop shape: per epoch, architect.step(..., optimizer, epoch,
    unrolled=args.unrolled), zero_grad of both optimizers, a weight step; the regulariser's
    weight grows with the epoch (the step at epoch 40 carries lambda = 20)."""
    net = _nb201()
    args = fork_args()
    architect = beta_darts.Architect(net, args)
    weights = [p for p in net.parameters() if p is not net._arch_parameters]
    optimizer = torch.optim.SGD(weights, 0.025, momentum=0.9)
    batches = vector_batches(4, batch=8)
    lambdas = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in (0, 1, 40):
            for i in range(2):
                tb, vb = batches[2 * i], batches[2 * i + 1]
                alpha = net._arch_parameters.detach().clone()
                architect.step(*tb, *vb, 0.025, optimizer, epoch, unrolled=args.unrolled)
                assert not torch.equal(alpha, net._arch_parameters)
                got = architect._architect.last_hypergradient
                lambdas.append(architect._lambda)
                optimizer.zero_grad()
                architect.optimizer.zero_grad()
                _weight_step(net, optimizer, tb)
            assert got.is_finite()
    assert lambdas == [0.0, 0.0, 0.5, 0.5, 20.0, 20.0]
