"""The public testing kit (darts_amend.testing) against ground truth, and as a new user meets it.

Every exact hypergradient is checked against a closed form or an independent reference (central
differences of the true response alpha -> L_val(w*(alpha), alpha), torch.autograd.functional on
a pure function), in float64; correct estimators pass, deliberately broken ones fail with a
message that names the problem; the pytest plugin provides the problems as fixtures.
"""

from __future__ import annotations

import configparser
import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)
from torch import Tensor

from darts_amend import (
    hessian_vector_product,
    implicit_cg,
    mixed_vector_product,
    split_parameters,
)
from darts_amend.estimators import Hypergradient, conjugate_gradient, get_estimator
from darts_amend.testing import (
    MAX_DENSE_WEIGHTS,
    PROBLEMS,
    BilevelProblem,
    DartsToy,
    MixedMLP,
    all_problems,
    angle_counterexample,
    assert_hypergradient_close,
    darts_1d,
    dense_derivatives,
    exact_hypergradient,
    make_problem,
    ridge,
    softmax_mixture,
    solve_inner_,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(PROBLEMS)
EXACT = dict(rtol=1e-9, atol=1e-12)  # an exact estimator in float64 agrees to ~1e-13 here


def _max_err(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _fd_response(problem: BilevelProblem, h: float = 1e-5) -> Tensor:
    """Central differences of alpha -> L_val(w*(alpha), alpha), w* re-solved by Newton."""
    alpha = problem.alphas[0]
    out = torch.zeros_like(alpha)
    for i in range(alpha.numel()):
        vals = []
        for s in (h, -h):
            m = copy.deepcopy(problem.model)
            with torch.no_grad():
                m.arch_parameters()[0].view(-1)[i] += s
            solve_inner_(m, problem.train_batch, tol=1e-13)
            with torch.no_grad():
                vals.append(float(m._loss(*problem.valid_batch)))
        out.view(-1)[i] = (vals[0] - vals[1]) / (2 * h)
    return out


# --------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 2.0])
def test_darts_1d_closed_form(alpha: float) -> None:
    p = darts_1d(alpha)
    assert p.exact.grads[0].tolist() == [2 * alpha - 2]  # the DARTS paper: d/dalpha (alpha-1)^2
    assert p.exact.terms["g1"][0].tolist() == [alpha - 2] and p.exact.terms["g2"][0].tolist() == [
        alpha
    ]
    assert p.model.w.tolist() == [alpha]  # w* = alpha
    dense = exact_hypergradient(p.model, p.train_batch, p.valid_batch)
    assert _max_err(dense.grads, p.exact.grads) < 1e-14
    assert float(dense.val_loss) == pytest.approx((alpha - 1) ** 2, abs=1e-15)
    assert _fd_response(p)[0].item() == pytest.approx(2 * alpha - 2, abs=1e-9)


def test_ridge_closed_form_against_dense_and_true_response() -> None:
    p = ridge()
    dense = exact_hypergradient(p.model, p.train_batch, p.valid_batch)
    g = p.exact.grads[0]
    assert float((dense.grads[0] - g).abs().max()) < 1e-13
    assert float(p.exact.terms["g1"][0].abs().max()) == 0.0  # L_val does not see alpha
    # the true response, central differences with Newton re-solves: agrees to ~1e-10 (h = 1e-5)
    fd = _fd_response(p)
    assert float((fd - g).norm() / g.norm()) < 1e-8
    # Newton from w = 0 finds the closed-form w* to machine precision
    m = copy.deepcopy(p.model)
    with torch.no_grad():
        m.w.zero_()
    assert solve_inner_(m, p.train_batch) <= 1e-12
    assert float((m.w - p.model.w).detach().abs().max()) < 1e-12


def test_softmax_mixture_is_at_an_optimum_and_matches_true_response() -> None:
    rng = torch.get_rng_state()
    p = softmax_mixture()
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is left alone
    d = dense_derivatives(p.model, p.train_batch)
    assert float(d.grad_weights.norm()) <= 1e-12  # w* by Newton
    assert float(torch.linalg.eigvalsh(d.weight_weight).min()) > 0  # a strict minimum
    g = p.exact.grads[0]
    assert float(g.abs().min()) > 1e-2  # not the trivial optimum w = 0
    fd = _fd_response(p)
    assert float((fd - g).norm() / g.norm()) < 1e-6
    # the second term matters: first-order DARTS alone is far off
    g1 = p.exact.terms["g1"][0]
    assert float((g1 - g).norm() / g.norm()) > 0.1


@pytest.mark.parametrize("k", [0.25, 4.0, 100.0])
def test_angle_counterexample_closed_form(k: float) -> None:
    p = angle_counterexample(k)
    assert p.exact.grads[0].tolist() == pytest.approx([-(1 - 1 / k)], rel=1e-14)
    dense = exact_hypergradient(p.model, p.train_batch, p.valid_batch)
    assert _max_err(dense.grads, p.exact.grads) < 1e-14
    eta = 0.1
    g2a = get_estimator("amended")(p.model, p.train_batch, p.valid_batch, eta=eta).terms["g2"][0]
    assert g2a.tolist() == pytest.approx([-eta * (1 - k)], rel=1e-14)  # the opposite sign
    with pytest.raises(ValueError, match="invalid k"):
        angle_counterexample(0.0)


def test_dense_derivatives_match_autograd_functional_hessian() -> None:
    # an independent reference: the loss as a pure function of theta via functional_call
    torch.manual_seed(0)
    model = MixedMLP(batchnorm=True, register_alphas=True, activation=("tanh", "gelu"))
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    alphas, weights = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    params = alphas + weights
    bufs = {n: b.clone() for n, b in model.named_buffers()}

    def f(theta: Tensor) -> Tensor:
        pieces, i = {}, 0
        for p in params:
            pieces[names[id(p)]] = theta[i : i + p.numel()].view_as(p)
            i += p.numel()
        state = {**pieces, **{n: b.clone() for n, b in bufs.items()}}
        return F.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    full = torch.autograd.functional.hessian(f, theta)
    grad = torch.autograd.functional.jacobian(f, theta)
    d = dense_derivatives(model, (x, y))
    m = alphas[0].numel()
    for got, ref in ((d.alpha_alpha, full[:m, :m]), (d.alpha_weight, full[:m, m:]),
                     (d.weight_weight, full[m:, m:]), (d.grad_alphas, grad[:m]),
                     (d.grad_weights, grad[m:])):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(model.bn.running_mean, bufs["bn.running_mean"])  # buffers restored


# --------------------------------------------------------------------------- correct estimators


@pytest.mark.parametrize(
    "name,estimator,options",
    [(n, e, o) for n in NAMES for e, o in PROBLEMS[n]().exact_with.items()],
)
def test_library_estimators_pass_where_they_are_exact(name, estimator, options) -> None:
    grads = assert_hypergradient_close(estimator, name, options=options, **EXACT)
    assert len(grads) == 1


def test_the_exact_reference_passes_everywhere_and_first_order_fails() -> None:
    for p in all_problems():
        assert_hypergradient_close(exact_hypergradient, p, rtol=1e-12, atol=1e-14)
        with pytest.raises(AssertionError, match=f"problem '{p.name}'") as err:
            assert_hypergradient_close("first_order", p, rtol=1e-3, atol=1e-6)
        assert "g1 matches; the estimator has no second term" in str(err.value)


def test_amended_fails_the_counterexample_with_a_readable_report() -> None:
    with pytest.raises(AssertionError) as err:
        assert_hypergradient_close("amended", "angle_counterexample", options={"eta": 0.1})
    msg = str(err.value)
    assert "problem 'angle_counterexample'" in msg and "estimator 'amended'" in msg
    assert "1 of 1 hypergradient entries differ" in msg
    assert "alphas[0][0]" in msg and "+3.0000000000e-01" in msg and "-7.5000000000e-01" in msg
    assert "the error is in the second term g2: cos(estimated, exact) = -1.000000" in msg


# --------------------------------------------------------------------------- broken estimators
#
# Written the way a methods researcher writes a new estimator: from the library's products.


def _valid_grads(model, batch):
    alphas, weights = split_parameters(model)
    g = torch.autograd.grad(model._loss(*batch), alphas + weights)
    return list(g[: len(alphas)]), list(g[len(alphas) :])


def _solve_h(model, tb, v):
    return conjugate_gradient(lambda u: hessian_vector_product(model, tb, u), v, 200, tol=1e-14)


def implicit_sign_flipped(model, tb, vb):
    """g1 + B H^-1 v: the sign of the second term is wrong."""
    g1, v = _valid_grads(model, vb)
    bx = mixed_vector_product(model, tb, _solve_h(model, tb, v))
    return [a + b for a, b in zip(g1, bx, strict=True)]


def amended_user(model, tb, vb, *, eta: float = 0.25):
    """g1 - eta B H v, written from scratch (correct)."""
    g1, v = _valid_grads(model, vb)
    bhv = mixed_vector_product(model, tb, hessian_vector_product(model, tb, v))
    return [a - eta * b for a, b in zip(g1, bhv, strict=True)]


def amended_missing_eta(model, tb, vb):
    """g1 - B H v: the factor eta is missing."""
    g1, v = _valid_grads(model, vb)
    bhv = mixed_vector_product(model, tb, hessian_vector_product(model, tb, v))
    return [a - b for a, b in zip(g1, bhv, strict=True)]


def implicit_b_at_wrong_point(model, tb, vb, *, restore: bool = True):
    """g1 - B(w + r v/||v||) H^-1 v: B taken after a finite-difference step that was not undone
    (``restore=False`` also leaves the weights moved)."""
    g1, v = _valid_grads(model, vb)
    x = _solve_h(model, tb, v)
    weights = split_parameters(model)[1]
    saved = [w.detach().clone() for w in weights]
    step = 0.01 / float(torch.sqrt(sum((t * t).sum() for t in v)))
    with torch.no_grad():
        for w, t in zip(weights, v, strict=True):
            w.add_(t, alpha=step)
    bx = mixed_vector_product(model, tb, x)
    if restore:
        with torch.no_grad():
            for w, s in zip(weights, saved, strict=True):
                w.copy_(s)
    return [a - b for a, b in zip(g1, bx, strict=True)]


@pytest.mark.parametrize("name", NAMES)
def test_sign_flip_is_caught_on_every_problem(name: str) -> None:
    match = f"estimator implicit_sign_flipped on problem '{name}'"
    with pytest.raises(AssertionError, match=match):
        assert_hypergradient_close(implicit_sign_flipped, name, rtol=1e-6, atol=1e-9)


def test_missing_eta_is_caught() -> None:
    # on the DARTS example H = 2 I, so the correct amended with eta = 1/4 is exact there
    assert_hypergradient_close(amended_user, "darts_1d", **EXACT)
    for name in NAMES:
        with pytest.raises(AssertionError, match=f"problem '{name}'") as err:
            assert_hypergradient_close(amended_missing_eta, name, rtol=1e-6, atol=1e-9)
    # darts_1d, alpha = 0.5: g1 - B H v = -1.5 + 4 * 0.5 = 0.5 instead of -1
    with pytest.raises(AssertionError) as err:
        assert_hypergradient_close(amended_missing_eta, "darts_1d")
    assert "+5.0000000000e-01" in str(err.value) and "-1.0000000000e+00" in str(err.value)


def test_b_at_the_wrong_point_is_caught_where_b_depends_on_w() -> None:
    # B is constant on the two quadratic toys, so this bug is invisible there -- one reason to
    # run every problem; ridge (B = diag(e^alpha w)) and the mixture catch it
    for name in ("darts_1d", "angle_counterexample"):
        assert_hypergradient_close(implicit_b_at_wrong_point, name, rtol=1e-9, atol=1e-12)
    for name in ("ridge", "softmax_mixture"):
        with pytest.raises(AssertionError, match=f"problem '{name}'") as err:
            assert_hypergradient_close(implicit_b_at_wrong_point, name, rtol=1e-6, atol=1e-9)
        assert "alphas[0][" in str(err.value)
        assert "the estimator did not leave" not in str(err.value)
    # not restoring the weights is reported too, even where the values happen to agree
    with pytest.raises(AssertionError, match="did not leave the model as it found it") as err:
        assert_hypergradient_close(
            implicit_b_at_wrong_point, "darts_1d", options={"restore": False}, **EXACT
        )
    assert "weight 'w'" in str(err.value) and "problem 'darts_1d'" in str(err.value)
    assert "entries differ" not in str(err.value)


# --------------------------------------------------------------------------- the assertion's API


def test_output_forms_and_bad_outputs() -> None:
    p = ridge()
    g = p.exact.grads[0]
    for out in (p.exact, [g], (g,), g, g.reshape(2, 2)):
        assert_hypergradient_close(lambda m, tb, vb, out=out: out, p, rtol=0, atol=0)
    with pytest.raises(AssertionError, match=r"problem 'ridge'.*shapes \[\(3,\)\]"):
        assert_hypergradient_close(lambda m, tb, vb: [g[:3]], p)
    with pytest.raises(TypeError, match="Hypergradient"):
        assert_hypergradient_close(lambda m, tb, vb: "nope", p)
    nan = torch.full_like(g, math.nan)
    with pytest.raises(AssertionError, match="4 of 4"):
        assert_hypergradient_close(lambda m, tb, vb: nan, p)
    with pytest.raises(ValueError, match="unknown estimator"):
        assert_hypergradient_close("nope", p)
    with pytest.raises(ValueError, match="unknown problem 'nope'; valid names: darts_1d"):
        assert_hypergradient_close("implicit_cg", "nope")
    with pytest.raises(TypeError, match="BilevelProblem"):
        assert_hypergradient_close("implicit_cg", 3)  # type: ignore[arg-type]
    # the library's Hypergradient, a partial and a loss_fn-aware callable all work
    import functools

    assert_hypergradient_close(functools.partial(implicit_cg, iterations=20), p, **EXACT)
    hg = assert_hypergradient_close(
        lambda m, tb, vb, **kw: Hypergradient(grads=(g.clone(),)), p, **EXACT
    )
    assert torch.equal(hg[0], g)


def test_problems_are_fresh_and_registered() -> None:
    assert NAMES == ["darts_1d", "ridge", "softmax_mixture", "angle_counterexample"]
    a, b = make_problem("softmax_mixture"), make_problem("softmax_mixture")
    assert a.model is not b.model
    with torch.no_grad():
        next(a.model.parameters()).add_(1.0)
    assert_hypergradient_close(exact_hypergradient, b, rtol=1e-12, atol=1e-14)
    assert [p.name for p in all_problems()] == NAMES
    assert "ridge" in repr(make_problem("ridge", seed=1)) and "tensor" not in repr(a)


# --------------------------------------------------------------------------- limits and errors


def test_size_limit_is_a_clear_error() -> None:
    big = MixedMLP(d_in=40, hidden=50, classes=3)  # 2 * (40 * 50 + 50) + 3 * 50 + 3 = 4253
    x, y = torch.randn(2, 40, dtype=torch.float64), torch.tensor([0, 1])
    msg = f"4253 weights, above the limit max_weights={MAX_DENSE_WEIGHTS}"
    with pytest.raises(ValueError, match=msg):
        exact_hypergradient(big, (x, y), (x, y))
    with pytest.raises(ValueError, match=msg):
        dense_derivatives(big, (x, y))
    with pytest.raises(ValueError, match=msg):
        solve_inner_(big, (x, y))
    p = darts_1d()
    with pytest.raises(ValueError, match="has 1 weights, above the limit max_weights=0"):
        exact_hypergradient(p.model, p.train_batch, p.valid_batch, max_weights=0)


def test_exact_hypergradient_errors() -> None:
    p = darts_1d()
    flat = (torch.zeros(6, dtype=torch.float64), torch.zeros(0))  # L_train = 0: H = 0
    with pytest.raises(ValueError, match="singular"):
        exact_hypergradient(p.model, flat, p.valid_batch)
    with pytest.raises(TypeError, match="train_batch must be an"):
        exact_hypergradient(p.model, (1, 2, 3), p.valid_batch)


def test_solve_inner_refuses_saddles_and_slow_convergence() -> None:
    saddle = DartsToy(0.0, w=0.0)  # L = -w^2: the gradient vanishes at a maximum
    coef = torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="saddle"):
        solve_inner_(saddle, (coef, torch.zeros(0)))
    torch.manual_seed(0)
    model = MixedMLP(weight_decay=0.05)
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    with pytest.raises(RuntimeError, match="after 1 Newton steps"):
        solve_inner_(model, (x, y), max_iterations=1)


# --------------------------------------------------------------------------- packaging


def test_import_does_not_import_pytest() -> None:
    code = "import sys, darts_amend.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


_USER_TESTS = """
    from darts_amend.testing import assert_hypergradient_close

    def test_all(bilevel_problem):
        assert_hypergradient_close("implicit_cg", bilevel_problem, options={"iterations": 200})

    def test_named(darts_1d_problem, ridge_problem, softmax_mixture_problem,
                   angle_counterexample_problem):
        assert darts_1d_problem.name == "darts_1d" and ridge_problem.name == "ridge"
        assert softmax_mixture_problem.name == "softmax_mixture"
        assert angle_counterexample_problem.name == "angle_counterexample"
"""


def test_plugin_provides_the_problems_as_fixtures(pytester, monkeypatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # same run, installed or not
    pytester.makepyfile(test_user=textwrap.dedent(_USER_TESTS))
    result = pytester.runpytest_inprocess("-p", "darts_amend.testing.plugin", "-v")
    result.assert_outcomes(passed=5)
    for name in NAMES:
        result.stdout.fnmatch_lines([f"*test_all?{name}? PASSED*"])


def test_entry_point_loads_the_plugin_without_clashing_with_dash_p(tmp_path) -> None:
    # the pytest11 entry point declared in setup.cfg, installed into a throw-away dist-info;
    # one run with the plugin also named by -p: it must load through the entry point, once
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    line = cfg["options.entry_points"]["pytest11"].strip()
    ep_name, target = (s.strip() for s in line.split("="))
    assert target == "darts_amend.testing.plugin"
    dist = tmp_path / "site" / "kit_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{ep_name} = {target}\n")
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(f"""
        def test_fixture(darts_1d_problem, request):
            assert darts_1d_problem.name == "darts_1d"
            infos = request.config.pluginmanager.list_plugin_distinfo()
            assert [d.project_name for p, d in infos if p.__name__ == {target!r}] == ["kit-probe"]
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", target,
           "test_probe.py"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_check_estimator_example_runs(monkeypatch, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_estimator", ROOT / "examples" /
                                                  "check_estimator.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["check_estimator.py"])
    assert module.main() == 0
    out = capsys.readouterr().out
    assert out.count("PASS  ") == len(NAMES) and "FAIL" not in out
    assert "problem 'ridge'" in out and "cos(estimated, exact) = -1.000000" in out
