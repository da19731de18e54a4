"""Search network: every space and cell type, PC-DARTS options, consistent-search options,
genotype rules against hand-built alphas, convergence test, space sizes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

from darts_amend.supernet import (
    PRIMITIVES,
    SPACES,
    MixedOp,
    SearchNetwork,
    build_search_network,
    derive_cell,
    get_space,
    is_converged,
    space_size,
)
from darts_amend.supernet.operations import FactorizedReduce, drop_path, make_op
from darts_amend.supernet.search import channel_shuffle


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _check_grads(net: SearchNetwork, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = net._loss(x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    arch = net.arch_parameters()
    arch_ids = {id(p) for p in arch}
    weights = net.weight_parameters()
    # weights and alphas are disjoint and together are all parameters
    assert arch_ids.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    for p in arch:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0, "an architecture parameter got no gradient"
    nonzero = sum(int(p.grad is not None and p.grad.abs().sum() > 0) for p in weights)
    assert nonzero > 0.9 * len(weights)


@pytest.mark.parametrize("space", ["darts", "s1", "s2"])
@pytest.mark.parametrize("size,channels", [(8, 1), (8, 3), (32, 1), (32, 3), (64, 3), (64, 1)])
def test_forward_backward_every_space(space: str, size: int, channels: int) -> None:
    # 3 cells: normal, reduction, reduction -> both cell types (per-cell s2: 3 alpha sets)
    net = build_search_network(space, C=4, num_classes=5, layers=3, in_channels=channels)
    x = torch.randn(2, channels, size, size)
    y = torch.tensor([1, 3])
    out = net(x)
    assert out.shape == (2, 5)
    _check_grads(net, x, y)
    kinds = ["cell_0", "cell_1", "cell_2"] if space == "s2" else ["normal", "reduce"]
    assert list(net.edge_weights()) == kinds
    n_edges = 14 if space == "darts" else 8
    for w in net.edge_weights().values():
        assert w.shape == (n_edges, len(SPACES[space].ops))
        torch.testing.assert_close(w.sum(-1), torch.ones(n_edges))


@pytest.mark.parametrize("size", [9, 15])
def test_odd_image_sizes(size: int) -> None:
    net = build_search_network("darts", C=4, layers=3, in_channels=3, partial_channels=2)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_pc_darts_options_and_betas() -> None:
    net = build_search_network(
        "darts", C=8, layers=3, partial_channels=4, edge_normalization=True, stem="imagenet"
    )
    assert len(net.arch_parameters()) == 4  # alphas normal/reduce, then betas normal/reduce
    assert net.arch_parameters()[2].shape == (14,)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    _check_grads(net, x, y)
    for w in net.edge_normalizers().values():  # softmax over each node's inputs
        sums = [float(w[a:b].sum()) for a, b in ((0, 2), (2, 5), (5, 9), (9, 14))]
        assert sums == pytest.approx([1.0] * 4)


def test_consistent_search_options() -> None:
    net = build_search_network("s1", C=4, layers=3, auxiliary=True, drop_path_prob=0.3, dropout=0.2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    net.train()
    out = net(x)
    assert isinstance(out, tuple) and out[0].shape == out[1].shape == (2, 10)
    _check_grads(net, x, y)
    # drop-path and dropout are random in training ...
    assert not torch.equal(net(x)[0], net(x)[0])
    # ... and off in eval mode, where the auxiliary head is skipped too
    net.eval()
    a, b = net(x), net(x)
    assert isinstance(a, torch.Tensor) and torch.equal(a, b)


def test_auxiliary_loss_is_weighted_sum() -> None:
    net = build_search_network("s1", C=4, layers=3, auxiliary=True, auxiliary_weight=0.4)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([2, 7])
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    logits, aux = net(x)
    net.load_state_dict(state)  # undo the BN running-stat update of the first pass
    expected = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    torch.testing.assert_close(net._loss(x, y), expected)


def test_alphas_registered_and_initialised_small() -> None:
    net = build_search_network("s2", C=4, layers=4)
    names = [n for n, _ in net.named_parameters() if n.startswith(("alphas", "betas"))]
    assert names == ["alphas.0", "alphas.1", "alphas.2", "alphas.3"]
    assert all(k in net.state_dict() for k in names)
    for a in net.arch_parameters():
        assert a.requires_grad and a.is_leaf and a.abs().max() < 1e-2
    net64 = net.to(torch.float64)
    assert all(a.dtype == torch.float64 for a in net64.arch_parameters())
    assert net64(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_mixed_op_is_weighted_sum_of_ops() -> None:
    op = MixedOp(4, 1, ["skip_connect", "max_pool_3x3", "sep_conv_3x3"]).eval()
    x = torch.randn(2, 4, 8, 8)
    w = torch.tensor([0.2, 0.3, 0.5])
    expected = sum(wi * o(x) for wi, o in zip(w, op.ops, strict=True))
    torch.testing.assert_close(op(x, w), expected)
    torch.testing.assert_close(op(x, torch.tensor([1.0, 0.0, 0.0])), x)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_and_shuffle(stride: int) -> None:
    K = 2
    op = MixedOp(8, stride, ["skip_connect", "avg_pool_3x3"], partial_channels=K).eval()
    x = torch.randn(2, 8, 9, 9)
    w = torch.tensor([0.7, 0.3])
    part, rest = x[:, :4], x[:, 4:]
    mixed = 0.7 * op.ops[0](part) + 0.3 * op.ops[1](part)
    if stride == 2:
        rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
    cat = torch.cat([mixed, rest], 1)
    # shuffle with 2 groups interleaves: channel order 0,4,1,5,2,6,3,7
    expected = cat[:, [0, 4, 1, 5, 2, 6, 3, 7]]
    torch.testing.assert_close(op(x, w), expected)
    assert op(x, w).shape == (2, 8, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
    torch.testing.assert_close(channel_shuffle(channel_shuffle(cat, 2), 4), cat)


def test_drop_path_exact() -> None:
    x = torch.randn(64, 3, 2, 2)
    y = drop_path(x, 0.25)
    kept = (y != 0).flatten(1).any(1)
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert (y[~kept] == 0).all() and 0 < int(kept.sum()) < 64
    assert drop_path(x, 0.0) is x


def test_stride2_ops_give_ceil_half_for_odd_sizes() -> None:
    x = torch.randn(1, 4, 11, 11)
    for name in PRIMITIVES:
        assert make_op(name, 4, 2, affine=False)(x).shape[-2:] == (6, 6), name
    assert FactorizedReduce(4, 6)(x).shape == (1, 6, 6, 6)


def _set_alphas(net: SearchNetwork, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for a, v in zip(net.alphas, values, strict=True):
            a.copy_(v)


def test_darts_genotype_top2_excluding_none() -> None:
    net = build_search_network("darts", C=4, layers=3)
    ops = list(PRIMITIVES)
    a = torch.zeros(14, 8)
    # node 0 (edges 0,1): edge 1 prefers sep_conv_5x5; edge 0 prefers 'none' but its best
    # non-none op is dil_conv_3x3
    a[0, ops.index("none")] = 9.0
    a[0, ops.index("dil_conv_3x3")] = 2.0
    a[1, ops.index("sep_conv_5x5")] = 3.0
    # node 1 (edges 2,3,4 from states 0,1,2): keep inputs 2 and 0
    a[4, ops.index("skip_connect")] = 5.0
    a[2, ops.index("max_pool_3x3")] = 4.0
    a[3, ops.index("avg_pool_3x3")] = 1.0
    # node 2 (edges 5..8) and node 3 (edges 9..13): keep states 3,1 and 4,0
    a[8, ops.index("sep_conv_3x3")] = 3.0
    a[6, ops.index("dil_conv_5x5")] = 2.0
    a[13, ops.index("sep_conv_3x3")] = 3.0
    a[9, ops.index("skip_connect")] = 2.0
    _set_alphas(net, [a, a.flip(0)])
    g = net.genotype()
    assert g.normal == (
        ("sep_conv_5x5", 1),
        ("dil_conv_3x3", 0),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("sep_conv_3x3", 3),
        ("dil_conv_5x5", 1),
        ("sep_conv_3x3", 4),
        ("skip_connect", 0),
    )
    assert g.normal_concat == (2, 3, 4, 5)
    assert not g.is_per_cell and g.reduce != g.normal


def test_edge_normalization_changes_edge_ranking() -> None:
    net = build_search_network("darts", C=4, layers=3, edge_normalization=True)
    a = torch.zeros(14, 8)
    a[0, 4] = a[1, 4] = 2.0  # node 0: both inputs equally good on alphas ...
    a[2, 5] = 2.2  # node 1: input 0 best on alphas alone
    a[3, 5] = a[4, 5] = 2.0
    _set_alphas(net, [a, a])
    b = torch.zeros(14)
    b[1] = 0.5  # ... betas favour c_{k-1} (order among the two kept inputs changes)
    b[3], b[4] = 3.0, 3.0  # node 1: betas push inputs 1 and 2 above input 0
    with torch.no_grad():
        net.betas[0].copy_(b)
    g = net.genotype()
    assert g.normal[0] == ("sep_conv_3x3", 1)
    assert {idx for _, idx in g.normal[2:4]} == {1, 2}
    net.edge_normalization = False  # without betas the alpha ranking decides
    assert {idx for _, idx in net.genotype().normal[2:4]} == {0, 1}


@pytest.mark.parametrize("space", ["s1", "s2"])
def test_fixed_edge_genotype_is_argmax_per_edge(space: str) -> None:
    net = build_search_network(space, C=4, layers=3)
    ops = net.op_names
    values = []
    for _ in net.alphas:
        a = torch.randn(8, len(ops))
        values.append(a)
    _set_alphas(net, values)
    g = net.genotype()
    cells = list(g.cell_genotypes().values())
    assert len(cells) == (3 if space == "s2" else 2) and g.is_per_cell == (space == "s2")
    for cell, a in zip(cells, values, strict=True):
        expected = [
            (ops[int(a[e].argmax())], src) for e, (node, src) in enumerate(get_space(space).edges())
        ]
        assert list(cell.edges) == expected
        assert [src for _, src in cell.edges] == [0, 1, 0, 2, 0, 3, 0, 4]


def test_is_converged() -> None:
    net = build_search_network("s1", C=4, layers=3)
    assert not is_converged(net)  # near-uniform start: 1/7 each
    a = torch.zeros(8, 7)
    a[:, 3] = math.log(6.0)  # softmax weight 6 / (6 + 6) = 0.5 exactly
    _set_alphas(net, [a, a.clone()])
    assert is_converged(net, threshold=0.5)
    assert not is_converged(net, threshold=0.51)
    with torch.no_grad():
        net.alphas[1][5, 3] = 0.0
    assert not is_converged(net)
    assert net.kept_op_weights()["normal"] == pytest.approx([0.5] * 8)
    with pytest.raises(ValueError, match="threshold"):
        is_converged(net, threshold=0.0)
    wrapped = torch.nn.DataParallel(net)  # unwrapped via .module
    assert is_converged(wrapped) == is_converged(net) is False
    with pytest.raises(TypeError, match="SearchNetwork"):
        is_converged(torch.nn.Linear(2, 2))


def test_space_sizes_match_paper() -> None:
    assert space_size("s1") == 7**16
    assert f"{space_size('s1'):.1e}" == "3.3e+13"  # paper Sec. 4.1.3
    assert space_size("s2") == 2**160
    assert f"{space_size('s2'):.1e}" == "1.5e+48"
    assert f"{space_size('darts'):.1e}" == "1.1e+18"  # DARTS' space before fixing edges
    assert space_size("s2", layers=8) == 2**64
    assert space_size("s1", ops=["skip_connect", "sep_conv_3x3", "none"]) == 2**16


def test_space_size_equals_reachable_genotypes() -> None:
    """Enumerate every edge ranking and op choice of a tiny darts-style cell through the
    genotype rule: the number of distinct genotypes is the closed-form cell size."""
    space = get_space("darts", ops=["none", "skip_connect", "sep_conv_3x3"], steps=2)
    n_edges, n_ops = space.num_edges, len(space.ops)
    seen = set()
    for ranks in itertools.permutations(range(n_edges)):
        for choice in itertools.product([1, 2], repeat=n_edges):
            w = torch.full((n_edges, n_ops), 0.0)
            for e in range(n_edges):
                w[e, choice[e]] = 1.0 + ranks[e]
            cell = derive_cell(space, w)[0]
            # the genotype lists a node's kept inputs best first; compare them as sets
            seen.add(tuple(frozenset(cell.edges[i : i + 2]) for i in range(0, len(cell.edges), 2)))
    assert len(seen) == space.cell_size() == 48


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown search space"):
        build_search_network("s3")
    with pytest.raises(ValueError, match="unknown operations"):
        build_search_network("s1", ops=["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(ValueError, match="partial_channels"):
        build_search_network("darts", C=6, partial_channels=4)
    with pytest.raises(ValueError, match="partial_channels=0"):
        build_search_network("darts", C=6, partial_channels=0)
    with pytest.raises(ValueError, match="drop_path_prob"):
        build_search_network("darts", drop_path_prob=1.0)
    net = build_search_network("s1", C=4, layers=3, in_channels=1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8))


def test_op_subsets_and_cell_counts() -> None:
    net = build_search_network(
        "s2", C=4, layers=5, ops=["skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    )
    assert net.op_names == ["skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    assert len(net.alphas) == 5 and net.alphas[0].shape == (8, 3)
    assert net.genotype().num_cells == 5
    assert build_search_network("s2", C=4).layers == 20  # the space's own depth by default
