"""Estimators against ground truth: dense closed forms, a Newton-solved inner optimum checked by
finite differences of the true response, and the angle claim where (and only where) it holds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICE,
    MixedMLP,
    QuadraticBilevel,
    assert_close,
    assert_same_state,
    dense_blocks,
    dense_grad,
    flat,
    make_batch,
    one_thread,  # noqa: F401  (autouse fixture)
    seed_all,
    snapshot,
)
from torch import Tensor, nn

from darts_amend import NonFiniteLossError
from darts_amend.estimators import (
    ESTIMATORS,
    Hypergradient,
    amended,
    estimator_options,
    first_order,
    get_estimator,
    implicit_cg,
    implicit_neumann,
    unrolled,
    write_grads_,
)
from darts_amend.hvp import list_cosine, preserve_state, split_parameters
from darts_amend.testing import solve_inner_


def _mlp(seed: int = 0, **kw):
    seed_all(seed)
    model = MixedMLP(**kw).to(DEVICE)
    return model, make_batch(8, seed=seed + 1), make_batch(8, seed=seed + 2)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("batchnorm", [False, True])
def test_amended_equals_g1_minus_eta_BHv(batchnorm):
    model, tb, vb = _mlp(batchnorm=batchnorm)
    g1, v = dense_grad(model, vb)
    _, B, H = dense_blocks(model, tb)
    eta = 0.37
    expected = g1 - eta * B @ (H @ v)
    res = amended(model, tb, vb, eta=eta)
    assert_close(res.grads, expected, rtol=1e-10, atol=1e-13)
    assert_close(res.terms["g1"], g1, rtol=1e-10, atol=1e-13)
    assert_close(res.terms["g2"], -eta * B @ (H @ v), rtol=1e-10, atol=1e-13)
    with preserve_state(model), torch.no_grad():  # same loss value (BN statistics restored)
        val = float(model._loss(*vb))
    assert float(res.val_loss) == pytest.approx(val, rel=1e-12)
    with preserve_state(model), torch.no_grad():  # the training loss at w, where H and B are
        train = float(model._loss(*tb))
    assert float(res.train_loss) == pytest.approx(train, rel=1e-12)
    g2 = -eta * B @ (H @ v)
    assert res.cosine() == pytest.approx(float(g1 @ g2 / (g1.norm() * g2.norm())), rel=1e-10)
    assert res.cosine("g1", "g1") == pytest.approx(1.0, rel=1e-12)
    # finite differences (two nested central differences) agree on a smooth model
    fd = amended(model, tb, vb, eta=eta, mode="finite_difference", r=1e-4)
    assert_close(fd.grads, expected, rtol=1e-6, atol=1e-9)


def test_amended_eta_zero_is_first_order_bit_for_bit():
    model, tb, vb = _mlp()
    fo = first_order(model, tb, vb)
    am = amended(model, tb, vb, eta=0.0)
    assert all(torch.equal(a, b) for a, b in zip(fo.grads, am.grads, strict=True))
    assert float(flat(am.terms["g2"]).abs().max()) == 0.0
    assert set(fo.terms) == {"g1"} and math.isnan(fo.cosine())


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_unrolled_equals_dense_closed_form(mode):
    model, tb, vb = _mlp(batchnorm=True)
    alphas, weights = split_parameters(model)
    xi, momentum, wd = 0.05, 0.9, 3e-3
    buffers = [torch.randn_like(w) for w in weights]
    buffers[-1] = None  # a weight without momentum state yet
    # closed form: w' = w - xi (m buf + grad_w L_train(w) + wd w)
    _, gw = dense_grad(model, tb)
    w = flat(weights).detach()
    buf = flat(
        [torch.zeros_like(w_) if b is None else b for b, w_ in zip(buffers, weights, strict=True)]
    )
    w_prime = w - xi * (momentum * buf + gw + wd * w)
    theta_prime = torch.cat([flat(alphas).detach(), w_prime])
    g1, v = dense_grad(model, vb, theta_prime)  # at w'
    _, B, _ = dense_blocks(model, tb)  # B at w
    expected = g1 - xi * B @ v
    res = unrolled(
        model,
        tb,
        vb,
        xi=xi,
        momentum=momentum,
        momentum_buffers=buffers,
        weight_decay=wd,
        mode=mode,
        r=1e-4 if mode == "finite_difference" else 0.01,
    )
    tol = dict(rtol=1e-10, atol=1e-13) if mode == "exact" else dict(rtol=1e-6, atol=1e-9)
    assert_close(res.grads, expected, **tol)
    assert_close(res.terms["g1"], g1, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- inner optimum


class LogRegNet(nn.Module):
    """Ridge-regularised softmax regression on mixed features sum_k softmax(alpha)_k f_k(x).

    L(w, alpha) = CE(W phi_alpha(x) + b, y) + lam/2 (||W||^2 + ||b||^2) is strictly convex in w,
    so w*(alpha) is unique and Newton's method finds it to machine precision.
    """

    def __init__(self, d: int = 3, classes: int = 3, lam: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(0.1 * torch.randn(classes, d, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(classes, dtype=torch.float64))
        self.alpha = nn.Parameter(
            0.5 * torch.randn(3, dtype=torch.float64)
        )  # registered (P-DARTS style)
        self.lam = lam

    def arch_parameters(self):
        return [self.alpha]

    def _loss(self, x, y):
        a = F.softmax(self.alpha, 0)
        phi = a[0] * x + a[1] * torch.tanh(2 * x) + a[2] * torch.sin(x)
        return F.cross_entropy(phi @ self.W.t() + self.b, y) + 0.5 * self.lam * (
            self.W.square().sum() + self.b.square().sum()
        )


def _response(model: LogRegNet, tb, vb, alpha: Tensor) -> float:
    """The true response alpha -> L_val(w*(alpha), alpha), w* by the kit's Newton solver."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.alpha.copy_(alpha)
    solve_inner_(m, tb, tol=1e-14)
    with torch.no_grad():
        return float(m._loss(*vb))


@pytest.fixture(scope="module")
def optimum():
    seed_all(3)
    model = LogRegNet()
    gen = torch.Generator().manual_seed(5)
    tb = (
        torch.randn(40, 3, dtype=torch.float64, generator=gen),
        torch.randint(0, 3, (40,), generator=gen),
    )
    vb = (
        torch.randn(30, 3, dtype=torch.float64, generator=gen),
        torch.randint(0, 3, (30,), generator=gen),
    )
    alpha = model.alpha.detach().clone()
    solve_inner_(model, tb, tol=1e-14)
    # ground truth 1: the implicit-function gradient from dense matrices at w*(alpha)
    g1, v = dense_grad(model, vb)
    _, B, H = dense_blocks(model, tb)
    reference = g1 - B @ torch.linalg.solve(H, v)
    # ground truth 2: a central difference of the true response alpha -> L_val(w*(alpha), alpha)
    h = 1e-5
    response = torch.zeros_like(alpha)
    for i in range(alpha.numel()):
        vals = []
        for s in (h, -h):
            a = alpha.clone()
            a[i] += s
            vals.append(_response(model, tb, vb, a))
        response[i] = (vals[0] - vals[1]) / (2 * h)
    return model, tb, vb, reference, response, H


def test_implicit_reference_matches_true_response(optimum):
    model, tb, vb, reference, response, H = optimum
    assert float((reference - response).norm() / response.norm()) < 1e-7
    # the second term matters here: first-order alone is far from the truth
    g1 = flat(first_order(model, tb, vb).grads)
    assert float((g1 - response).norm() / response.norm()) > 1e-2


def test_implicit_cg_converges_to_the_true_hypergradient(optimum):
    model, tb, vb, reference, response, H = optimum
    errs = [
        float(
            (flat(implicit_cg(model, tb, vb, iterations=k).grads) - reference).norm()
            / reference.norm()
        )
        for k in (1, 3, H.shape[0])
    ]
    # CG is exact after n updates (n = the weights' count, here 12; steepest descent is not)
    assert errs[2] < 1e-9, errs
    assert errs[0] > errs[2] and errs[1] > errs[2]
    hg = implicit_cg(model, tb, vb, iterations=50)
    assert hg.info["cg_stop"] == "tol" and hg.info["cg_iterations"] <= H.shape[0]
    fd = implicit_cg(model, tb, vb, iterations=30, mode="finite_difference", r=1e-4)
    assert float((flat(fd.grads) - reference).norm() / reference.norm()) < 1e-6


def test_implicit_neumann_converges_to_the_true_hypergradient(optimum):
    model, tb, vb, reference, response, H = optimum
    gamma = 1.0 / float(torch.linalg.eigvalsh(H).max())
    errs = [
        float(
            (flat(implicit_neumann(model, tb, vb, terms=k, gamma=gamma).grads) - reference).norm()
            / reference.norm()
        )
        for k in (2, 20, 400)
    ]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 1e-8, errs


def test_implicit_solvers_match_their_dense_formulas():
    # away from an optimum, on a closed-form quadratic: CG with damping and a short Neumann series
    seed_all(1)
    n = 5
    Q = torch.randn(n, n, dtype=torch.float64)
    H = Q @ Q.t() + 0.5 * torch.eye(n, dtype=torch.float64)
    C = torch.randn(2, n, dtype=torch.float64)
    model = QuadraticBilevel(C, torch.randn(n, dtype=torch.float64))
    v = torch.randn(n, dtype=torch.float64)
    Mv = torch.zeros(n, n, dtype=torch.float64)
    tb, vb = (H, torch.zeros(n, dtype=torch.float64)), (Mv, -v)
    g1 = C @ model.w.detach()
    damping = 0.3
    cg = implicit_cg(model, tb, vb, iterations=n, damping=damping)
    assert_close(
        cg.grads,
        g1 - C @ torch.linalg.solve(H + damping * torch.eye(n, dtype=H.dtype), v),
        rtol=1e-9,
        atol=1e-12,
    )
    gamma, K = 0.05, 4
    x, p = torch.zeros_like(v), v.clone()
    for _ in range(K):
        x, p = x + p, p - gamma * H @ p
    ne = implicit_neumann(model, tb, vb, terms=K, gamma=gamma)
    assert_close(ne.grads, g1 - C @ (gamma * x), rtol=1e-12, atol=1e-13)
    # a loose tol stops CG early: the estimator's numbers are the solver's at that tol
    from darts_amend.linear_solve import solve_cg

    loose, k = solve_cg(lambda u: [H @ u[0]], [v], 50, tol=0.2, return_info=True)
    assert k.stop == "tol" and k.iterations < n
    early = implicit_cg(model, tb, vb, iterations=50, tol=0.2)
    assert early.info == {"cg_iterations": k.iterations, "cg_stop": "tol"}
    assert_close(early.grads, g1 - C @ loose[0], rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- the angle claim


def _quadratic_g2s(H: Tensor, C: Tensor, v: Tensor, eta: float):
    n = H.shape[0]
    model = QuadraticBilevel(C, torch.zeros(n, dtype=H.dtype))
    tb = (H, torch.zeros(n, dtype=H.dtype))
    vb = (torch.zeros(n, n, dtype=H.dtype), -v)  # L_val = v^T w -> grad_w L_val = v
    g2_amended = amended(model, tb, vb, eta=eta).terms["g2"]  # -eta B H v
    g2_exact = implicit_cg(model, tb, vb, iterations=n).terms["g2"]  # -B H^-1 v
    return g2_amended, g2_exact


@pytest.mark.parametrize("c", [0.01, 1.0, 30.0])
def test_angle_claim_holds_when_H_is_a_multiple_of_identity(c):
    seed_all(7)
    n = 6
    for _ in range(5):
        C, v = torch.randn(3, n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
        g2a, g2 = _quadratic_g2s(c * torch.eye(n, dtype=torch.float64), C, v, eta=0.1)
        assert float(flat(g2a) @ flat(g2)) > 0
        assert list_cosine(g2a, g2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [0.25, 4.0, 100.0])
def test_angle_claim_fails_on_the_design_counterexample(k):
    # H = diag(1, k), B^T B = [[1, 1], [1, 1]] (B = [1, 1]), v = (1, -1):
    # <g2', g2> = eta (2 - k - 1/k) < 0 for every k != 1 (DESIGN.md 2.1)
    eta = 0.1
    H = torch.diag(torch.tensor([1.0, k], dtype=torch.float64))
    C = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([1.0, -1.0], dtype=torch.float64)
    g2a, g2 = _quadratic_g2s(H, C, v, eta)
    assert float(flat(g2a) @ flat(g2)) == pytest.approx(eta * (2 - k - 1 / k), rel=1e-12)
    assert list_cosine(g2a, g2) == pytest.approx(-1.0, abs=1e-12)


# ----------------------------------------------------------------------- purity, options, errors

_OPTIONS = {
    "first_order": {},
    "unrolled": {"xi": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    "amended": {"eta": 0.2},
    "implicit_cg": {"iterations": 3, "damping": 0.1},
    "implicit_neumann": {"terms": 3, "gamma": 0.1},
}


@pytest.mark.parametrize(
    "name,mode",
    [("first_order", "-")]
    + [(n, m) for n in ESTIMATORS if n != "first_order" for m in ("exact", "finite_difference")],
)
def test_estimators_leave_state_as_found(name, mode):
    model, tb, vb = _mlp(batchnorm=True, register_alphas=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    opts = dict(_OPTIONS[name])
    if name != "first_order":
        opts["mode"] = mode
    res = get_estimator(name)(model, tb, vb, **opts)
    assert isinstance(res, Hypergradient) and res.is_finite()
    assert [g.shape for g in res.grads] == [a.shape for a in model.arch_parameters()]
    assert "g1" in res.terms and (name == "first_order" or "g2" in res.terms)
    assert_same_state(before, snapshot(model))
    # also when the loss raises half-way (on the training batch)
    calls = {"n": 0}

    def flaky(m, x, y):
        calls["n"] += 1
        out = m._loss(x, y)
        if calls["n"] == (1 if name == "first_order" else 2):
            raise RuntimeError("boom")
        return out

    with pytest.raises(RuntimeError, match="boom"):
        get_estimator(name)(model, tb, vb, loss_fn=flaky, **opts)
    assert_same_state(before, snapshot(model))


def test_registered_and_plain_alphas_give_the_same_hypergradient():
    m1, tb, vb = _mlp(seed=4)
    m2, _, _ = _mlp(seed=4, register_alphas=True)
    assert torch.equal(m1.arch_parameters()[0], m2.arch_parameters()[0])
    for name, opts in _OPTIONS.items():
        a = get_estimator(name)(m1, tb, vb, **opts)
        b = get_estimator(name)(m2, tb, vb, **opts)
        assert_close(a.grads, b.grads, rtol=1e-12, atol=1e-14)


def test_bad_inputs_raise_clear_errors():
    model, tb, vb = _mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="invalid eta"):
        amended(model, tb, vb, eta=-0.1)
    with pytest.raises(
        ValueError, match="unknown estimator 'second_order'; valid names: first_order"
    ):
        get_estimator("second_order")
    with pytest.raises(ValueError, match="needs xi"):
        unrolled(model, tb, vb)
    with pytest.raises(ValueError, match="momentum_buffers has 1"):
        unrolled(model, tb, vb, xi=0.1, momentum_buffers=[None])
    with pytest.raises(ValueError, match="invalid iterations"):
        implicit_cg(model, tb, vb, iterations=0)
    with pytest.raises(ValueError, match="invalid gamma"):
        implicit_neumann(model, tb, vb, gamma=0.0)
    with pytest.raises(ValueError, match="invalid mode"):
        amended(model, tb, vb, mode="forward")
    with pytest.raises(TypeError, match="unexpected keyword"):
        amended(model, tb, vb, xi=0.1)
    for name, opts in _OPTIONS.items():
        with pytest.raises(ValueError, match="valid_batch inputs are on meta"):
            get_estimator(name)(model, tb, (vb[0].to("meta"), vb[1]), **opts)
        with pytest.raises(NonFiniteLossError, match="validation loss is nan"):
            get_estimator(name)(model, tb, (vb[0] * math.nan, vb[1]), **opts)
    with pytest.raises(NonFiniteLossError, match="training loss"):
        amended(model, (tb[0] * math.inf, tb[1]), vb)
    with pytest.raises(TypeError, match="arch_parameters"):
        first_order(nn.Linear(2, 2), tb, vb)
    assert_same_state(before, snapshot(model))


def test_estimator_options_and_write_grads():
    cost = {
        "chunks": 1,
        "second_order_batch": None,
        "fast_depthwise": True,
        "common_random_numbers": None,
    }
    assert estimator_options("first_order") == {"common_random_numbers": None}
    assert estimator_options("amended") == {"eta": 0.1, "mode": "exact", "r": 0.01, **cost}
    assert set(estimator_options("unrolled")) == {
        "xi",
        "momentum",
        "momentum_buffers",
        "weight_decay",
        "mode",
        "r",
        *cost,
    }
    model, tb, vb = _mlp()
    res = amended(model, tb, vb)
    alphas = model.arch_parameters()
    write_grads_(alphas, res.grads)
    assert torch.equal(alphas[0].grad, res.grads[0])
    write_grads_(alphas, res.grads, accumulate=True)
    assert torch.equal(alphas[0].grad, 2 * res.grads[0])
    assert res.norm() == pytest.approx(float(flat(res.grads).norm()))
    assert res.is_finite()
    one = torch.tensor(1.0)
    assert not Hypergradient(grads=(torch.tensor([0.0, math.nan]),), val_loss=one).is_finite()
    assert not Hypergradient(grads=(torch.zeros(2),), val_loss=torch.tensor(math.inf)).is_finite()
    assert Hypergradient(grads=(torch.zeros(2),), val_loss=one).is_finite()


# --------------------------------------------------------------------------- how CG stopped


def test_solve_cg_reports_how_it_stopped():
    from darts_amend.linear_solve import CGInfo, solve_cg

    seed_all(3)
    n = 5
    Q = torch.randn(n, n, dtype=torch.float64)
    spd = Q @ Q.t() + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)

    def mv(A):
        return lambda u: [A @ u[0]]

    x, info = solve_cg(mv(spd), [b], 50, return_info=True)
    assert info.stop == "tol" and 1 <= info.iterations <= n and math.isnan(info.curvature)
    assert_close(x[0], torch.linalg.solve(spd, b), rtol=1e-9, atol=1e-12)
    x2 = solve_cg(mv(spd), [b], 50)  # default: the solution alone, the same numbers
    assert torch.equal(x2[0], x[0])
    assert solve_cg(mv(spd), [b], 2, return_info=True)[1] == CGInfo(2, "iterations")
    # <b, A b> < 0: stops before the first update, x = 0, the curvature reported exactly
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    x, info = solve_cg(mv(A), [torch.tensor([0.1, 1.0], dtype=torch.float64)], 10,
                       return_info=True)
    assert info.stop == "curvature" and info.iterations == 0
    assert info.curvature == pytest.approx(0.01 - 1.0, abs=1e-15) and not x[0].any()
    # first direction positive; the A-conjugate one then has negative curvature (inertia 1, 1)
    A = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    x, info = solve_cg(mv(A), [torch.tensor([1.0, 0.5], dtype=torch.float64)], 10,
                       return_info=True)
    assert info.stop == "curvature" and info.iterations == 1 and info.curvature < 0
    assert x[0].any()


def test_implicit_cg_warns_when_negative_curvature_zeroes_g2():
    import warnings

    from darts_amend import AmendedArchitect

    n = 3
    H = torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    C = torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([0.2, 1.0, 0.1], dtype=torch.float64)  # v^T H v = -1.955 < 0
    model = QuadraticBilevel(C, torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    tb, vb = (H, torch.zeros(n, dtype=torch.float64)), (torch.zeros(n, n, dtype=torch.float64), -v)
    with pytest.warns(RuntimeWarning, match="stopped before its first update and g2 = 0"):
        hg = implicit_cg(model, tb, vb, iterations=10)
    assert hg.info == {"cg_iterations": 0, "cg_stop": "curvature"}
    assert not any(t.any() for t in hg.terms["g2"])
    assert torch.equal(hg.grads[0], hg.terms["g1"][0])  # exactly the first-order estimate
    # damping 3: H + 3 I is positive-definite, no warning, the dense solution
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hg = implicit_cg(model, tb, vb, iterations=10, damping=3.0)
        arch = AmendedArchitect(model, estimator="implicit_cg", iterations=10, damping=3.0)
        step = arch.step(tb, vb)
    assert hg.info["cg_stop"] == "tol" and hg.info["cg_iterations"] <= n
    x = torch.linalg.solve(H + 3.0 * torch.eye(n, dtype=torch.float64), v)
    assert_close(hg.terms["g2"], -(C @ x), rtol=1e-9, atol=1e-12)
    assert step.solver == hg.info  # StepInfo carries the solver's report
    assert first_order(model, tb, vb).info == {} and amended(model, tb, vb).info == {}
