"""darts_amend.hvp against dense float64 Hessians (torch.autograd.functional.hessian)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICE,
    ArchNet,
    MixedMLP,
    NoArchNet,
    assert_close,
    assert_same_state,
    dense_blocks,
    flat,
    make_batch,
    one_thread,  # noqa: F401  (autouse fixture)
    seed_all,
    snapshot,
    unflat,
)
from torch import nn

from darts_amend.hvp import (
    NonFiniteLossError,
    hessian_matvec,
    hessian_vector_product,
    list_cosine,
    list_dot,
    list_norm,
    mixed_vector_product,
    preserve_state,
    resolve_loss,
    split_parameters,
)


def _setup(batchnorm: bool = False, register_alphas: bool = False, seed: int = 0):
    seed_all(seed)
    model = MixedMLP(batchnorm=batchnorm, register_alphas=register_alphas).to(DEVICE)
    batch = make_batch(8, seed=seed + 1)
    alphas, weights = split_parameters(model)
    A, B, H = dense_blocks(model, batch)
    return model, batch, alphas, weights, A, B, H


@pytest.mark.parametrize("batchnorm", [False, True])
def test_exact_products_match_dense(batchnorm):
    model, batch, alphas, weights, A, B, H = _setup(batchnorm=batchnorm)
    u_w = [torch.randn_like(w) for w in weights]
    u_a = [torch.randn_like(a) for a in alphas]
    assert_close(hessian_vector_product(model, batch, u_w), H @ flat(u_w), rtol=1e-10, atol=1e-12)
    assert_close(mixed_vector_product(model, batch, u_w), B @ flat(u_w), rtol=1e-10, atol=1e-12)
    assert_close(
        hessian_vector_product(model, batch, u_a, wrt="alphas"),
        A @ flat(u_a),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("batchnorm", [False, True])
def test_hessian_matvec_many_products_on_one_graph_match_dense(batchnorm):
    model, batch, alphas, weights, A, B, H = _setup(batchnorm=batchnorm, register_alphas=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    version = [p._version for p in model.parameters()]
    calls = {"n": 0}

    def counting(m, x, y):
        calls["n"] += 1
        return m._loss(x, y)

    for wrt, params, dense in (("weights", weights, H), ("alphas", alphas, A)):
        calls["n"] = 0
        with hessian_matvec(model, batch, wrt=wrt, loss_fn=counting) as hvp:
            vectors = [[torch.randn_like(p) for p in params] for _ in range(4)]
            vectors.append([torch.zeros_like(p) for p in params])
            for u in vectors:
                hu = hvp(u)
                assert [t.shape for t in hu] == [p.shape for p in params]
                assert all(not t.requires_grad for t in hu)
                assert_close(hu, dense @ flat(u), rtol=1e-10, atol=1e-12, msg=wrt)
            # the same vector twice on the same graph gives bit-identical products
            assert torch.equal(flat(hvp(vectors[0])), flat(hvp(vectors[0])))
        assert calls["n"] == 1, "every product must reuse the one forward/backward graph"
        with pytest.raises(RuntimeError, match="after its with-block"):
            hvp(vectors[0])
    assert_same_state(before, snapshot(model))  # BN running stats restored, .grad untouched
    assert version == [p._version for p in model.parameters()]  # parameters never written


def test_hessian_matvec_bad_inputs_and_non_finite_loss():
    model, batch, alphas, weights, *_ = _setup(batchnorm=True)
    before = snapshot(model)
    with pytest.raises(ValueError, match="invalid wrt"):
        with hessian_matvec(model, batch, wrt="both"):
            pass
    with pytest.raises(TypeError, match="pair"):
        with hessian_matvec(model, batch[0]):
            pass
    with pytest.raises(NonFiniteLossError, match="nan"):
        with hessian_matvec(model, (batch[0] * float("nan"), batch[1])):
            pass
    with hessian_matvec(model, batch, wrt="alphas") as hvp:
        with pytest.raises(ValueError, match="tensors but there are"):
            hvp([torch.ones_like(a) for a in alphas] * 2)
        with pytest.raises(ValueError, match="shape"):
            hvp([torch.ones(len(alphas[0].reshape(-1)) + 1, dtype=alphas[0].dtype)])
    assert_same_state(before, snapshot(model))


def test_finite_difference_matches_dense_and_error_shrinks_quadratically():
    model, batch, alphas, weights, A, B, H = _setup()
    u_w = [torch.randn_like(w) for w in weights]
    u_a = [torch.randn_like(a) for a in alphas]
    refs = {"H": H @ flat(u_w), "B": B @ flat(u_w), "A": A @ flat(u_a)}
    errors = {k: [] for k in refs}
    rs = (1e-1, 1e-2, 1e-3)
    for r in rs:
        got = {
            "H": hessian_vector_product(model, batch, u_w, mode="finite_difference", r=r),
            "B": mixed_vector_product(model, batch, u_w, mode="finite_difference", r=r),
            "A": hessian_vector_product(
                model, batch, u_a, wrt="alphas", mode="finite_difference", r=r
            ),
        }
        for k in refs:
            errors[k].append(float((flat(got[k]) - refs[k]).norm() / refs[k].norm()))
    for k, errs in errors.items():
        # central differences: error O(R^2) -> 10x smaller step, ~100x smaller error
        assert errs[0] < 1e-1, (k, errs)
        assert errs[1] < errs[0] / 30, (k, errs)
        assert errs[2] < errs[1] / 30, (k, errs)
        assert errs[2] < 1e-6, (k, errs)


def test_finite_difference_default_r_is_darts_scale():
    # R = 0.01 / ||u||: scaling u must scale the product linearly (R adapts to ||u||)
    model, batch, alphas, weights, A, B, H = _setup()
    u = [torch.randn_like(w) for w in weights]
    p1 = mixed_vector_product(model, batch, u, mode="finite_difference")
    p2 = mixed_vector_product(model, batch, [1000.0 * t for t in u], mode="finite_difference")
    assert_close(p2, [1000.0 * t for t in p1], rtol=1e-9)
    # and at r = 0.01 the product is within the O(r^2) truncation error of the dense one
    rel = float((flat(p1) - B @ flat(u)).norm() / (B @ flat(u)).norm())
    assert rel < 1e-3


def test_zero_vector_gives_zero_in_both_modes():
    model, batch, alphas, weights, *_ = _setup()
    zeros = [torch.zeros_like(w) for w in weights]
    for mode in ("exact", "finite_difference"):
        assert (
            float(flat(hessian_vector_product(model, batch, zeros, mode=mode)).abs().max()) == 0.0
        )
        assert float(flat(mixed_vector_product(model, batch, zeros, mode=mode)).abs().max()) == 0.0


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_products_leave_state_exactly_as_found(mode):
    model, batch, alphas, weights, *_ = _setup(batchnorm=True, register_alphas=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    version = [p._version for p in model.parameters()]
    u = [torch.randn_like(w) for w in weights]
    hessian_vector_product(model, batch, u, mode=mode)
    mixed_vector_product(model, batch, u, mode=mode)
    hessian_vector_product(
        model, batch, [torch.randn_like(a) for a in alphas], wrt="alphas", mode=mode
    )
    assert_same_state(before, snapshot(model))
    if mode == "exact":  # exact mode never writes the parameters at all
        assert version == [p._version for p in model.parameters()]


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_state_restored_when_loss_raises(mode):
    model, batch, alphas, weights, *_ = _setup(batchnorm=True)
    before = snapshot(model)
    calls = {"n": 0}

    def flaky(m, x, y):
        calls["n"] += 1
        out = m._loss(x, y)  # runs BN (updates running stats) before failing
        if calls["n"] == 2 or mode == "exact":
            raise RuntimeError("boom")
        return out

    with pytest.raises(RuntimeError, match="boom"):
        mixed_vector_product(
            model, batch, [torch.randn_like(w) for w in weights], loss_fn=flaky, mode=mode
        )
    assert_same_state(before, snapshot(model))


def test_preserve_state_restores_and_skips_unchanged():
    seed_all(0)
    model = MixedMLP(batchnorm=True)
    before = snapshot(model)
    untouched = model.head.bias
    v0 = untouched._version
    with pytest.raises(KeyError):
        with preserve_state(model) as restore:
            with torch.no_grad():
                model.ops[0].weight.add_(1.0)
            model.train()(make_batch(5)[0])  # updates BN running stats
            restore()
            assert_same_state(before, snapshot(model))
            with torch.no_grad():
                model.ops[1].weight.mul_(-2.0)
            raise KeyError("x")
    assert_same_state(before, snapshot(model))
    assert untouched._version == v0


def test_split_parameters_excludes_registered_alphas_by_identity():
    seed_all(0)
    registered = MixedMLP(register_alphas=True)
    alphas, weights = split_parameters(registered)
    assert len(alphas) == 1 and alphas[0] is registered.alpha
    assert all(w is not registered.alpha for w in weights)
    assert len(weights) == len(list(registered.parameters())) - 1
    plain = MixedMLP()
    a2, w2 = split_parameters(plain)
    assert a2[0] is plain.arch_parameters()[0] and len(w2) == len(list(plain.parameters()))
    # frozen parameters are not weights; wrappers are unwrapped
    plain.head.bias.requires_grad_(False)
    assert len(split_parameters(plain)[1]) == len(w2) - 1
    a3, w3 = split_parameters(nn.DataParallel(registered))
    assert a3[0] is registered.alpha and [id(w) for w in w3] == [id(w) for w in weights]


def test_split_parameters_bad_inputs():
    with pytest.raises(TypeError, match="arch_parameters"):
        split_parameters(NoArchNet())
    with pytest.raises(TypeError, match="nn.Module"):
        split_parameters("not a model")
    with pytest.raises(ValueError, match="no tensors"):
        split_parameters(ArchNet([]))
    with pytest.raises(ValueError, match="does not require grad"):
        split_parameters(ArchNet([torch.zeros(3)]))
    leaf = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf"):
        split_parameters(ArchNet([leaf * 2]))
    with pytest.raises(ValueError, match="more than once"):
        split_parameters(ArchNet([leaf, leaf]))
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        split_parameters(ArchNet([[1.0, 2.0]]))


def test_product_bad_inputs():
    model, batch, alphas, weights, *_ = _setup()
    u = [torch.randn_like(w) for w in weights]
    with pytest.raises(ValueError, match="tensors but there are"):
        hessian_vector_product(model, batch, u[:-1])
    with pytest.raises(ValueError, match="shape"):
        mixed_vector_product(model, batch, [u[0].t()] + u[1:])
    with pytest.raises(ValueError, match="invalid mode"):
        hessian_vector_product(model, batch, u, mode="fd")
    with pytest.raises(ValueError, match="invalid r"):
        mixed_vector_product(model, batch, u, mode="finite_difference", r=0.0)
    with pytest.raises(ValueError, match="invalid wrt"):
        hessian_vector_product(model, batch, u, wrt="both")
    with pytest.raises(ValueError, match="meta"):
        hessian_vector_product(model, (batch[0].to("meta"), batch[1]), u)
    with pytest.raises(TypeError, match="pair"):
        hessian_vector_product(model, batch[0], u)
    nan_batch = (batch[0] * float("nan"), batch[1])
    before = snapshot(model)
    for mode in ("exact", "finite_difference"):
        with pytest.raises(NonFiniteLossError, match="nan"):
            mixed_vector_product(model, nan_batch, u, mode=mode)
    assert_same_state(before, snapshot(model))


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4, dtype=torch.float64)
        self.a = [torch.zeros(1, dtype=torch.float64, requires_grad=True)]

    def arch_parameters(self):
        return self.a

    def forward(self, x):
        out = self.lin(x) * (1 + self.a[0])
        return out, out * 0  # (logits, aux)


def test_resolve_loss_default_and_custom():
    net = _TupleNet()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 4, (5,))
    loss = resolve_loss()(net, x, y)
    assert torch.equal(loss, F.cross_entropy(net(x)[0], y))
    model = MixedMLP()
    assert torch.equal(
        resolve_loss()(model, x.new_zeros(5, 4), y.clamp(max=2)),
        model._loss(x.new_zeros(5, 4), y.clamp(max=2)),
    )
    custom = lambda m, a, b: m._loss(a, b) * 2  # noqa: E731
    assert resolve_loss(custom) is custom
    with pytest.raises(TypeError, match="callable"):
        resolve_loss(3)


def test_list_algebra():
    xs = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    ys = [torch.tensor([0.0, 1.0]), torch.tensor([[0.0]])]
    assert float(list_norm(xs)) == 5.0
    assert float(list_dot(xs, xs)) == 25.0
    assert list_cosine(xs, ys) == 0.0
    assert list_cosine(xs, [-t for t in xs]) == pytest.approx(-1.0)
    assert math.isnan(list_cosine(xs, [torch.zeros(2), torch.zeros(1, 1)]))
    assert unflat(flat(xs), xs)[1].shape == (1, 1)
