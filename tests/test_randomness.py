"""Common random numbers (darts_amend.randomness) on stochastic supernets, against ground truth:
the same network with its noise held fixed (a seed inside forward, no help from the library)."""

from __future__ import annotations

import warnings

import pytest
import torch
from fork_replicas import DirichletNet, vector_batches
from helpers import assert_close, assert_same_state, one_thread, snapshot  # noqa: F401

from darts_amend import AmendedArchitect, amended, first_order, implicit_cg, unrolled
from darts_amend.hvp import list_cosine
from darts_amend.randomness import GeneratorState, draws_randomness, shared_sample
from darts_amend.testing import MixedMLP


def _pair_batch(gen: torch.Generator):
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (8,), generator=gen)


class FixedNoiseNet(DirichletNet):
    """DirichletNet whose forward draws its noise from a fixed seed: a deterministic function."""

    seed = 0

    def op_weights(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().op_weights()


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    net = DirichletNet(edges=3, n_ops=4, k=1).double()
    net._initialize_alphas(3, 4)
    ref = FixedNoiseNet(edges=3, n_ops=4, k=1).double()
    ref.load_state_dict(net.state_dict())
    ref.alphas_normal = net.alphas_normal
    ref._arch_parameters = net._arch_parameters
    return net, ref


def test_replica_draws_a_new_sample_every_forward():
    net, _ = _pair()
    x, y = vector_batches(1)[0]
    assert not torch.equal(net._loss(x, y), net._loss(x, y))


@pytest.mark.parametrize("mode", ["exact", "finite_difference", "forward_difference"])
def test_every_pass_of_one_estimate_sees_the_first_pass_sample(mode):
    """g1 and g2 equal those of the network with that sample frozen (exact mode to round-off,
    finite differences to their O(R^2) / O(R) error on a smooth network)."""
    net, ref = _pair()
    tb, vb = vector_batches(2, batch=16)
    before = snapshot(net)
    torch.manual_seed(7)
    got = amended(net, tb, vb, mode=mode)
    FixedNoiseNet.seed = 7
    want = amended(ref, tb, vb, mode="exact")
    assert_close(got.terms["g1"], want.terms["g1"], rtol=1e-12, atol=1e-14)
    tol = {"exact": 1e-10, "finite_difference": 1e-4, "forward_difference": 3e-2}[mode]
    assert_close(got.terms["g2"], want.terms["g2"], rtol=tol, atol=tol * 1e-2)
    assert_same_state(before, snapshot(net))


def test_without_common_random_numbers_the_passes_mix_samples():
    net, ref = _pair()
    tb, vb = vector_batches(2, batch=16)
    torch.manual_seed(7)
    mixed = amended(net, tb, vb, common_random_numbers=False)
    FixedNoiseNet.seed = 7
    want = amended(ref, tb, vb)
    assert_close(mixed.terms["g1"], want.terms["g1"], rtol=1e-12, atol=1e-14)  # first pass
    # the training pass drew another sample: g2 is that of another network
    assert list_cosine(mixed.terms["g2"], want.terms["g2"]) < 0.99


@pytest.mark.parametrize(
    "estimator, options",
    [
        (amended, {"mode": "finite_difference"}),
        (unrolled, {"xi": 0.01, "mode": "finite_difference"}),
        (implicit_cg, {"iterations": 3}),
    ],
)
def test_repeat_estimates_from_one_seed_are_bit_identical(estimator, options):
    net, _ = _pair()
    tb, vb = vector_batches(2, batch=8)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        results.append(estimator(net, tb, vb, **options))
    for a, b in zip(results[0].grads, results[1].grads, strict=True):
        assert torch.equal(a, b)


def test_global_generator_after_an_estimate_is_where_first_order_leaves_it():
    net, _ = _pair()
    tb, vb = vector_batches(2, batch=8)
    torch.manual_seed(5)
    first_order(net, tb, vb)
    after_first_order = torch.get_rng_state()
    for options in ({"mode": "exact"}, {"mode": "finite_difference"}):
        torch.manual_seed(5)
        amended(net, tb, vb, **options)
        assert torch.equal(torch.get_rng_state(), after_first_order)
    torch.manual_seed(5)
    unrolled(net, tb, vb, xi=0.01, mode="finite_difference")
    # unrolled's first pass is the training loss: one pass drawn, the same amount of noise
    assert torch.equal(torch.get_rng_state(), after_first_order)


def test_deterministic_model_is_untouched_by_detection():
    torch.manual_seed(0)
    net = MixedMLP()
    gen = torch.Generator().manual_seed(0)
    tb, vb = (_pair_batch(gen), _pair_batch(gen))
    torch.manual_seed(11)
    state = torch.get_rng_state()
    a = amended(net, tb, vb, mode="finite_difference")
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn, nothing reset
    b = amended(net, tb, vb, mode="finite_difference", common_random_numbers=False)
    for u, v in zip(a.grads, b.grads, strict=True):
        assert torch.equal(u, v)


def test_difference_modes_refuse_fresh_samples_per_pass():
    net, _ = _pair()
    tb, vb = vector_batches(2, batch=8)
    before = snapshot(net)
    with pytest.raises(ValueError, match="draws random numbers in forward"):
        amended(net, tb, vb, mode="finite_difference", common_random_numbers=False)
    assert_same_state(before, snapshot(net))
    net.draws_randomness = False  # a wrong declaration is caught the same way
    with pytest.raises(ValueError, match="common_random_numbers=False"):
        amended(net, tb, vb, mode="forward_difference")
    amended(net, tb, vb, mode="exact")  # exact mode: allowed, passes draw afresh


def test_model_declaration_is_honoured():
    net, _ = _pair()
    assert draws_randomness(net) is None
    net.draws_randomness = True
    assert draws_randomness(torch.nn.DataParallel(net)) is True
    net.draws_randomness = "yes"  # not a bool: ignored, detection decides
    assert draws_randomness(net) is None


class _CountingDraws(torch.nn.Module):
    """Draws a different amount of noise on every other forward (randomness whose size depends
    on state): common random numbers cannot make its passes share one sample."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3).double()
        self.alpha = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.calls = 0

    def arch_parameters(self):
        return [self.alpha]

    def forward(self, x):
        self.calls += 1
        noise = torch.rand(1 + self.calls % 2, dtype=torch.float64).sum()
        return torch.tanh(self.lin(x)) * self.alpha + 1e-3 * noise


def test_warns_when_passes_draw_different_amounts():
    net = _CountingDraws()
    gen = torch.Generator().manual_seed(0)
    tb, vb = (_pair_batch(gen), _pair_batch(gen))
    with pytest.warns(RuntimeWarning, match="did not share one sample"):
        amended(net, tb, vb, mode="finite_difference")


def test_architect_option_and_validation():
    net, _ = _pair()
    tb, vb = vector_batches(2, batch=8)
    arch = AmendedArchitect(net, mode="finite_difference", common_random_numbers=True)
    before = net.alphas_normal.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = arch.step(tb, vb)
    assert info.finite and not torch.equal(before, net.alphas_normal)
    assert arch.options["common_random_numbers"] is True
    with pytest.raises(ValueError, match="invalid common_random_numbers"):
        AmendedArchitect(net, common_random_numbers="on")
    with pytest.raises(ValueError, match="invalid common_random_numbers"):
        amended(net, tb, vb, common_random_numbers=1)


def test_generator_state_snapshot_and_nesting():
    s = GeneratorState()
    torch.rand(3)
    assert GeneratorState() != s
    s.restore()
    assert GeneratorState() == s
    net, _ = _pair()
    tb, vb = vector_batches(2, batch=8)
    with shared_sample(net, tb, vb, common_random_numbers=True):
        first = net._loss(*vb)  # outside an estimator's evaluation hook: not replayed
        second = net._loss(*vb)
    assert not torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_is_forked_and_replayed():
    """On a CUDA model the Dirichlet noise comes from the device's generator: repeat estimates from
    one seed are bit-identical, and the CUDA generator ends where first_order leaves it."""
    net, _ = _pair()
    net = net.cuda()
    net.alphas_normal = net.alphas_normal.detach().cuda().requires_grad_()
    net._arch_parameters = [net.alphas_normal]
    tb, vb = [tuple(t.cuda() for t in b) for b in vector_batches(2, batch=8)]
    torch.manual_seed(5)
    first_order(net, tb, vb)
    after_first_order = torch.cuda.get_rng_state()
    grads = []
    for _ in range(2):
        torch.manual_seed(5)
        grads.append(amended(net, tb, vb, mode="finite_difference").grads[0])
        assert torch.equal(torch.cuda.get_rng_state(), after_first_order)
    assert torch.equal(grads[0], grads[1])
