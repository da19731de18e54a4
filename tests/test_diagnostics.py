"""Diagnostics against ground truth: dense eigvalsh, dense implicit hypergradients, hand-made
softmax states and eigenvalue histories, and the figure written from a metrics.jsonl."""
from __future__ import annotations

import json
import logging
import math
import struct

import pytest
import torch
from helpers import (
    MixedMLP,
    QuadraticBilevel,
    assert_same_state,
    dense_blocks,
    dense_grad,
    make_batch,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread per test)
    seed_all,
    snapshot,
)

from darts_amend.diagnostics import (
    alignment,
    collapse_signals,
    convergence_rule,
    dense_hypergradient,
    dominant_eigenvalue,
    edge_entropy,
    eigen_early_stop,
    epoch_diagnostics,
    kept_ops,
    kept_weights,
    lanczos,
    plot_run,
    power_iteration,
    read_metrics,
    skip_share,
)
from darts_amend.hvp import NonFiniteLossError
from darts_amend.supernet import Genotype, build_search_network
from darts_amend.testing import angle_counterexample

DTYPE = torch.float64


def _sym(n: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    ev = torch.linspace(-spread, 2 * spread, n, dtype=DTYPE)
    return q @ torch.diag(ev) @ q.T


# ---------------------------------------------------------------- eigenvalue solvers
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_lanczos_matches_eigvalsh(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=DTYPE)
    a = a + a.T
    ev = torch.linalg.eigvalsh(a)
    v0 = torch.randn(n, generator=g, dtype=DTYPE)
    res = lanczos(lambda u: a @ u, v0, iterations=60, tol=1e-10)
    assert res.converged
    assert res.value == pytest.approx(float(ev.max()), rel=1e-8, abs=1e-10)
    mag = lanczos(lambda u: a @ u, v0, iterations=60, tol=1e-10, which="magnitude")
    assert mag.value == pytest.approx(float(ev[ev.abs().argmax()]), rel=1e-8, abs=1e-10)
    # the residual bounds the distance to the spectrum of a symmetric matrix
    assert float((ev - res.value).abs().min()) <= res.residual + 1e-9


def test_lanczos_few_iterations_is_a_lower_bound_that_improves() -> None:
    a = _sym(60, seed=3, spread=1.0)  # eigenvalues spread evenly over [-1, 2]
    top = float(torch.linalg.eigvalsh(a).max())
    v0 = torch.ones(60, dtype=DTYPE)
    errs = [top - lanczos(lambda u: a @ u, v0, iterations=k, tol=1e-14).value for k in (3, 8, 20)]
    assert all(e >= -1e-10 for e in errs)  # Ritz values never exceed the largest eigenvalue
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-3


def test_power_iteration_matches_eigvalsh() -> None:
    a = _sym(12, seed=5, spread=1.0)  # |lambda| spectrum 2 > 1.8 > ...: largest magnitude is 2
    res = power_iteration(lambda u: a @ u, torch.ones(12, dtype=DTYPE), iterations=1000, tol=1e-9)
    assert res.converged
    assert res.value == pytest.approx(2.0, rel=1e-7)
    neg = power_iteration(lambda u: -a @ u, torch.ones(12, dtype=DTYPE), iterations=1000, tol=1e-9)
    assert neg.value == pytest.approx(-2.0, rel=1e-7)  # the sign is kept


def test_solvers_reject_bad_input() -> None:
    mv = lambda u: u  # noqa: E731
    with pytest.raises(ValueError, match="non-zero"):
        lanczos(mv, torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="which"):
        lanczos(mv, torch.ones(3, dtype=DTYPE), which="smallest")
    with pytest.raises(ValueError, match="flat"):
        power_iteration(mv, torch.ones(2, 2, dtype=DTYPE))
    with pytest.raises(ValueError, match="iterations"):
        power_iteration(mv, torch.ones(3, dtype=DTYPE), iterations=0)
    with pytest.raises(FloatingPointError):
        lanczos(lambda u: u * math.nan, torch.ones(3, dtype=DTYPE))


# ---------------------------------------------------------------- collapse signals
def test_edge_entropy_closed_forms() -> None:
    w = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]],
                     dtype=DTYPE)
    h = edge_entropy(w)
    assert torch.allclose(h, torch.tensor([1.0, 0.0, 0.5], dtype=DTYPE), atol=1e-12)
    raw = edge_entropy(w, normalized=False)
    assert raw[0].item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="softmax"):
        edge_entropy(torch.tensor([[0.5, 0.6]], dtype=DTYPE))
    with pytest.raises(ValueError, match="matrix"):
        edge_entropy(torch.tensor([0.5, 0.5], dtype=DTYPE))


def test_skip_share_and_kept_ops_fixed_edges() -> None:
    ops = ["none", "skip_connect", "sep_conv_3x3"]
    w = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]], dtype=DTYPE)
    kept = kept_ops(w, ops)  # argmax per edge, 'none' excluded
    assert kept == [(0, 1), (1, 1), (2, 2)]
    assert torch.equal(kept_weights(w, kept), torch.tensor([0.05, 0.6, 0.5], dtype=DTYPE))
    assert skip_share([ops[o] for _, o in kept]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="non-empty"):
        skip_share([])
    with pytest.raises(ValueError, match="op names"):
        kept_ops(w, ops[:2])


def test_kept_ops_darts_cell_top2_inputs() -> None:
    ops = ["none", "skip_connect", "conv"]
    # 2 nodes: node 0 has edges 0,1 ; node 1 has edges 2,3,4
    w = torch.tensor([[0.1, 0.5, 0.4],   # node0 <- c_{k-2}: skip 0.5
                      [0.8, 0.1, 0.1],   # node0 <- c_{k-1}: best non-none 0.1
                      [0.2, 0.2, 0.6],   # node1 <- s0: conv 0.6
                      [0.1, 0.7, 0.2],   # node1 <- s1: skip 0.7
                      [0.05, 0.05, 0.9]],  # node1 <- node0: conv 0.9 (kept with edge 3)
                     dtype=DTYPE)
    assert kept_ops(w, ops, steps=2) == [(0, 1), (1, 1), (3, 1), (4, 2)]
    with pytest.raises(ValueError, match="edges"):
        kept_ops(w[:4], ops, steps=2)


def test_convergence_rule() -> None:
    g = ["A", "B", "B", "B"]
    assert convergence_rule([0.6, 0.5], g, stable_for=2)
    assert not convergence_rule([0.6, 0.49], g, stable_for=2)  # one kept op below 0.5
    assert not convergence_rule([0.6, 0.7], g, stable_for=3)  # genotype changed 3 epochs ago
    assert not convergence_rule([0.6, 0.7], ["B"], stable_for=1)  # too short to know
    assert convergence_rule(torch.tensor([0.9]), ["B"], stable_for=0)
    with pytest.raises(ValueError, match="threshold"):
        convergence_rule([0.6], g, threshold=0.0)


def test_eigen_early_stop_fires_on_growth_and_reverts() -> None:
    epochs = list(range(0, 40, 2))  # measured every 2 epochs
    flat = [1.0 + 0.01 * (i % 2) for i in range(len(epochs))]
    d = eigen_early_stop(epochs, flat)
    assert not d.stop and d.ratio == pytest.approx(1.0, abs=0.02) and d.revert_epoch is None
    grow = [1.0] * 12 + [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    d = eigen_early_stop(epochs, grow)
    # newest window = indices 15..19 (mean 3.5); 4 measurements earlier: 11..15 (mean 1.6)
    assert d.stop
    assert d.ratio == pytest.approx(3.5 / 1.6)
    assert d.revert_epoch == epochs[13]  # centre of the earlier window
    # not before start_epoch: the earlier window is centred at epoch 26 < 30
    assert not eigen_early_stop(epochs, grow, start_epoch=30).stop
    assert not eigen_early_stop(epochs[:7], grow[:7]).stop  # too short: nan ratio
    assert math.isnan(eigen_early_stop(epochs[:7], grow[:7]).ratio)
    with pytest.raises(ValueError, match="increasing"):
        eigen_early_stop([0, 0], [1.0, 1.0])
    with pytest.raises(ValueError, match="factor"):
        eigen_early_stop(epochs, grow, factor=1.0)


# ---------------------------------------------------------------- plotting
def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_run_writes_a_figure(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    lines = []
    for e in range(8):
        rec = {"epoch": e, "collapse/skip_share": e / 8, "collapse/entropy/normal": 1 - e / 10,
               "collapse/entropy_mean": 1 - e / 12, "collapse/kept_weight_min": 0.2 + e / 20,
               "align/amended/cos_g2": -0.5, "align/amended/cos_grad": 0.9,
               "align/first_order/cos_g2": None, "diag/early_stop": e == 6}
        if e % 2 == 0:
            rec["eig/alphas"] = 0.1 * (e + 1)
        lines.append(json.dumps(rec))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 8, "eig/al')
    out = plot_run(tmp_path)
    assert out == tmp_path / "diagnostics.png"
    assert _png_size(out) == (1100, 750)
    full = out.stat().st_size
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 8  # torn last line skipped

    # a run without any diagnostic keys still gets a figure, with notes instead of curves
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0}\n')
    other = plot_run(empty, path=tmp_path / "x" / "fig.png")
    assert other == tmp_path / "x" / "fig.png" and _png_size(other) == (1100, 750)
    assert other.stat().st_size < full  # the curves are really drawn in the first figure
    # the CLI prints each plot's path: no second INFO line for it from the library
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "wrote" in r.message]


def test_plot_run_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run folder"):
        plot_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="metrics"):
        plot_run(tmp_path)


# ---------------------------------------------------------------- curvature of real models


@pytest.mark.parametrize("batchnorm", [False, True])
def test_dominant_eigenvalue_matches_dense_hessian(batchnorm: bool) -> None:
    seed_all(0)
    model = MixedMLP(d_in=4, hidden=3, classes=3, ops=3, batchnorm=batchnorm).train()
    valid, train = make_batch(8, seed=1), make_batch(8, seed=2)
    a_hess, _, _ = dense_blocks(model, valid)
    _, _, w_hess = dense_blocks(model, train)
    before = snapshot(model)
    rng = torch.get_rng_state()
    for wrt, dense, batch in (("alphas", a_hess, valid), ("weights", w_hess, train)):
        ev = torch.linalg.eigvalsh(dense)
        n = dense.shape[0]
        res = dominant_eigenvalue(model, batch, wrt=wrt, iterations=n, tol=1e-12)
        assert res.value == pytest.approx(float(ev.max()), rel=1e-8, abs=1e-10), wrt
        assert res.iterations <= n and res.seconds > 0
        mag = dominant_eigenvalue(model, batch, wrt=wrt, which="magnitude", iterations=n, tol=1e-12)
        assert mag.value == pytest.approx(float(ev[ev.abs().argmax()]), rel=1e-8, abs=1e-10)
    # state and the caller's RNG stream are untouched
    assert_same_state(before, snapshot(model))
    assert torch.equal(rng, torch.get_rng_state())


def test_dominant_eigenvalue_power_and_errors() -> None:
    seed_all(0)
    model = QuadraticBilevel(torch.ones(1, 3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE))
    m = torch.diag(torch.tensor([1.0, -4.0, 2.0], dtype=DTYPE))
    batch = (m, torch.zeros(3, dtype=DTYPE))
    res = dominant_eigenvalue(model, batch, wrt="weights", method="power", which="magnitude",
                              iterations=500, tol=1e-10)
    assert res.value == pytest.approx(-4.0, rel=1e-8)
    top = dominant_eigenvalue(model, batch, wrt="weights", iterations=3)
    assert top.value == pytest.approx(2.0)
    # the loss is linear in alpha: its Hessian is zero
    assert dominant_eigenvalue(model, batch, wrt="alphas").value == 0.0
    with pytest.raises(ValueError, match="wrt"):
        dominant_eigenvalue(model, batch, wrt="betas")
    with pytest.raises(ValueError, match="magnitude"):
        dominant_eigenvalue(model, batch, method="power")
    # a non-finite loss raises the core's error (one product path: darts_amend.hvp.hessian_matvec)
    before = snapshot(model)
    for wrt in ("alphas", "weights"):
        with pytest.raises(NonFiniteLossError, match="nan"):
            dominant_eigenvalue(model, (m * math.nan, batch[1]), wrt=wrt)
    assert_same_state(before, snapshot(model))


def _counterexample(k: float = 4.0) -> tuple[QuadraticBilevel, tuple, tuple]:
    """DESIGN.md 2.1: H = diag(1, k), B = [1, 1] (B^T B = [[1,1],[1,1]]), v = (1, -1), g1 = 0."""
    problem = angle_counterexample(k, dtype=DTYPE)
    return problem.model, problem.train_batch, problem.valid_batch


def test_dense_hypergradient_closed_form() -> None:
    k = 4.0
    model, train, valid = _counterexample(k)
    g1, g2 = dense_hypergradient(model, train, valid)
    assert float(g1[0].abs().max()) == 0.0
    assert g2[0].tolist() == pytest.approx([-(1 - 1 / k)], rel=1e-12)  # -B H^-1 v
    with pytest.raises(ValueError, match="max_weights"):
        dense_hypergradient(model, train, valid, max_weights=1)
    sing = (torch.zeros(2, 2, dtype=DTYPE), torch.zeros(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="singular"):
        dense_hypergradient(model, sing, valid)


# ---------------------------------------------------------------- alignment


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("reference", ["dense", "implicit_cg"])
def test_alignment_counterexample_amended_term_points_backwards(reference: str) -> None:
    k, eta = 4.0, 0.1
    model, train, valid = _counterexample(k)
    before = snapshot(model)
    rep = alignment(model, train, valid, reference=reference,
                    estimators={"first_order": None, "amended": {"eta": eta},
                                "implicit_cg": {"iterations": 2}})
    assert rep.reference == reference and rep.reference_seconds > 0
    am = rep.estimators["amended"]
    # exact g2 = -(1 - 1/k) = -0.75, amended g2' = -eta (1 - k) = +0.3: opposite directions
    assert am.cos_g2 == pytest.approx(-1.0, abs=1e-12)
    assert am.rel_err_g2 == pytest.approx((0.3 + 0.75) / 0.75, rel=1e-10)
    assert am.g2_norm_ratio == pytest.approx(0.3 / 0.75, rel=1e-10)
    assert am.cos_grad == pytest.approx(-1.0, abs=1e-12)  # g1 = 0 here
    assert am.seconds > 0
    cg = rep.estimators["implicit_cg"]  # CG on a 2x2 SPD system is exact in 2 steps
    assert cg.cos_g2 == pytest.approx(1.0, abs=1e-12) and cg.rel_err_g2 < 1e-12
    fo = rep.estimators["first_order"]  # no second term: counted as zero
    assert math.isnan(fo.cos_g2) and fo.rel_err_g2 == 1.0 and fo.g2_norm_ratio == 0.0
    flat = rep.flat()
    assert flat["align/first_order/cos_g2"] is None
    assert flat["align/amended/cos_g2"] == pytest.approx(-1.0)
    if reference == "implicit_cg":  # the reference's solver report: converged on this SPD H
        assert rep.reference_info["cg_stop"] == "tol"
        assert flat["align/reference/cg_stop"] == "tol"
        assert flat["align/reference/cg_iterations"] == rep.reference_info["cg_iterations"] <= 2
    else:
        assert rep.reference_info == {} and not any("/reference/" in k for k in flat)
    json.dumps(flat, allow_nan=False)
    assert_same_state(before, snapshot(model))


def test_alignment_matches_dense_exact_on_mixed_mlp() -> None:
    seed_all(3)
    model = MixedMLP(d_in=4, hidden=3, classes=3, ops=3)
    train, valid = make_batch(10, seed=4), make_batch(10, seed=5)
    _, b, h = dense_blocks(model, train)
    g1, v = dense_grad(model, valid)
    g2 = -b @ torch.linalg.solve(h, v)
    eta = 0.3
    g2_am = -eta * b @ (h @ v)
    rep = alignment(model, train, valid, reference="dense",
                    estimators={"amended": {"eta": eta}, "first_order": {}})
    am = rep.estimators["amended"]
    assert am.cos_g2 == pytest.approx(_cos(g2_am, g2), abs=1e-9)
    assert am.rel_err_g2 == pytest.approx(float((g2_am - g2).norm() / g2.norm()), rel=1e-8)
    assert am.cos_grad == pytest.approx(_cos(g1 + g2_am, g1 + g2), abs=1e-9)
    assert am.rel_err_grad == pytest.approx(
        float((g2_am - g2).norm() / (g1 + g2).norm()), rel=1e-8)
    fo = rep.estimators["first_order"]
    assert fo.cos_grad == pytest.approx(_cos(g1, g1 + g2), abs=1e-9)


def test_alignment_rejects_bad_requests() -> None:
    model, train, valid = _counterexample()
    with pytest.raises(ValueError, match="valid names"):
        alignment(model, train, valid, estimators=["amended", "second_order"])
    with pytest.raises(TypeError, match="string"):
        alignment(model, train, valid, estimators="amended")
    with pytest.raises(ValueError, match="valid names"):
        alignment(model, train, valid, reference="exact")
    with pytest.raises(ValueError, match="empty"):
        alignment(model, train, valid, estimators=[])


# ---------------------------------------------------------------- collapse on a real supernet


def _set_alphas(net, values: dict[str, float]) -> None:
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
            for op, val in values.items():
                a[:, net.op_names.index(op)] = val


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0) / math.log(len(p))


def test_collapse_signals_on_a_collapsing_darts_supernet() -> None:
    torch.manual_seed(0)
    net = build_search_network("darts", C=2, num_classes=3, layers=3, in_channels=1)
    n_ops = len(net.op_names)  # 8, with 'none'
    # start of a search: uniform mixture
    _set_alphas(net, {})
    s = collapse_signals(net)
    assert s["collapse/entropy_mean"] == pytest.approx(1.0, abs=1e-12)
    assert s["collapse/kept_weight_min"] == pytest.approx(1 / n_ops, abs=1e-12)
    assert not s["collapse/kept_above"]
    # collapse: 'none' dominates (never kept), skip_connect second -> every kept op is skip
    _set_alphas(net, {"none": 6.0, "skip_connect": 5.0})
    s = collapse_signals(net)
    z = math.exp(6) + math.exp(5) + (n_ops - 2)
    p = [math.exp(6) / z, math.exp(5) / z] + [1 / z] * (n_ops - 2)
    assert s["collapse/skip_share"] == 1.0
    assert s["collapse/kept_weight_min"] == pytest.approx(p[1], rel=1e-6)
    assert s["collapse/kept_weight_mean"] == pytest.approx(p[1], rel=1e-6)
    assert not s["collapse/kept_above"]  # 0.27 < 0.5: not converged, although collapsed
    for kind in ("normal", "reduce"):
        assert s[f"collapse/entropy/{kind}"] == pytest.approx(_entropy(p), rel=1e-6)
    geno = Genotype.from_json(s["collapse/genotype"])
    assert {op for op, _ in geno.normal} == {"skip_connect"}
    # half collapsed: only the normal cell is all skip
    with torch.no_grad():
        net.alphas[1].zero_()
        net.alphas[1][:, net.op_names.index("sep_conv_3x3")] = 5.0
    assert collapse_signals(net)["collapse/skip_share"] == 0.5
    with pytest.raises(TypeError, match="edge_weights"):
        collapse_signals(torch.nn.Linear(2, 2))


def test_epoch_diagnostics_measures_the_right_batches_and_replays_the_reference() -> None:
    """Each eigenvalue on its own batch (alphas: validation loss, weights: training loss), and
    an estimator aligned with itself as the reference gives cos 1, error 0 exactly, also on a
    supernet that draws dropout masks (every call replays the same random numbers)."""
    torch.manual_seed(0)
    net = build_search_network("s1", C=2, num_classes=3, layers=3, in_channels=1).double()
    x, y = torch.randn(6, 1, 8, 8, dtype=DTYPE), torch.randint(0, 3, (6,))
    train, valid = (x[:3], y[:3]), (x[3:], y[3:])
    rec = epoch_diagnostics(net, train, valid, epoch=1, curvature=("alphas", "weights"),
                            eigen_iterations=6, estimators=())
    for wrt, batch, other in (("alphas", valid, train), ("weights", train, valid)):
        own = dominant_eigenvalue(net, batch, wrt=wrt, iterations=6).value
        assert rec[f"eig/{wrt}"] == own, wrt
        assert abs(own - dominant_eigenvalue(net, other, wrt=wrt, iterations=6).value) > 1e-3
    noisy = build_search_network("s1", C=2, num_classes=3, layers=3, in_channels=1,
                                 dropout=0.5).double().train()
    rec = epoch_diagnostics(noisy, train, valid, epoch=1, curvature=(),
                            estimators={"amended": {"eta": 0.3}}, reference="amended",
                            reference_options={"eta": 0.3})
    assert rec["align/amended/cos_g2"] == pytest.approx(1.0, abs=1e-12)
    assert rec["align/amended/rel_err_g2"] <= 1e-12 and rec["align/amended/rel_err_grad"] <= 1e-12


def test_epoch_diagnostics_on_s1_supernet() -> None:
    torch.manual_seed(0)
    net = build_search_network("s1", C=2, num_classes=3, layers=3, in_channels=1,
                               dropout=0.2).double().train()
    _set_alphas(net, {"skip_connect": 3.0})  # skip weight e^3/(e^3+6) = 0.77 on every edge
    x, y = torch.randn(6, 1, 8, 8, dtype=DTYPE), torch.randint(0, 3, (6,))
    train, valid = (x[:3], y[:3]), (x[3:], y[3:])
    before = snapshot(net)
    rng = torch.get_rng_state()
    grown = [{"epoch": e, "eig/alphas": 1e-3 if e < 12 else 1.0} for e in range(16)]
    now = collapse_signals(net)["collapse/genotype"]
    stale = [{"epoch": 17, "eig/alphas": 1e6}]  # a replayed record of this epoch: not history
    history = grown + stale + [{"epoch": 16, "collapse/genotype": now}]
    rec = epoch_diagnostics(net, train, valid, epoch=17, history=history, every=1,
                            eigen_iterations=4, early_stop={"start_epoch": 0},
                            estimators={"amended": {"eta": 0.1}},
                            reference_options={"iterations": 3})
    json.dumps(rec, allow_nan=False)
    assert_same_state(before, snapshot(net))  # weights, BN statistics, alphas untouched
    assert torch.equal(rng, torch.get_rng_state())  # dropout drew from a forked stream
    assert rec["collapse/skip_share"] == 1.0
    assert rec["collapse/kept_weight_min"] == pytest.approx(math.exp(3) / (math.exp(3) + 6))
    assert rec["collapse/kept_above"] and rec["collapse/converged"]  # same genotype as epoch 16
    assert rec["eig/alphas_seconds"] > 0 and math.isfinite(rec["eig/alphas"])
    assert rec["align/amended/seconds"] > 0 and -1 <= rec["align/amended/cos_g2"] <= 1
    # eigenvalue history 1e-3 ... then ~1: the RobustDARTS rule fires and points back
    assert rec["diag/early_stop"] and rec["diag/revert_epoch"] is not None
    assert rec["diag/revert_epoch"] < 12
    # not a measuring epoch: only the cheap signals, and no stop decision
    quiet = epoch_diagnostics(net, train, valid, epoch=3, every=2, early_stop={})
    assert not any(k.startswith(("eig/", "align/")) for k in quiet)
    assert quiet["diag/early_stop"] is False and "collapse/converged" in quiet
    with pytest.raises(ValueError, match="curvature"):
        epoch_diagnostics(net, train, valid, epoch=0, curvature=("betas",))
    with pytest.raises(ValueError, match="alphas"):
        epoch_diagnostics(net, train, valid, epoch=0, curvature=(), early_stop={})
