"""RobustDARTS' reduced spaces s1r-s4r, the noise op and the NAS-Bench-201 cell: structure,
genotype rules (none / noise), round trips, re-training network, tiny searches."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

from darts_amend import AmendedArchitect
from darts_amend.supernet import (
    NB201_DARTS,
    SPACES,
    Genotype,
    NB201Genotype,
    NB201Network,
    build_search_network,
    count_parameters,
    get_space,
    parameter_free_share,
    plot_genotype,
    space_size,
)
from darts_amend.supernet.operations import Noise, make_op

NEW = ["s1r", "s2r", "s3r", "s4r", "nb201"]
SHAPES = {"s1r": (14, 2), "s2r": (14, 2), "s3r": (14, 3), "s4r": (14, 2), "nb201": (6, 5)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _net(space: str, C: int = 4):
    return build_search_network(space, C=C, num_classes=5, layers=1 if space == "nb201" else 3,
                                in_channels=1)


@pytest.mark.parametrize("space", NEW)
@pytest.mark.parametrize("size", [8, 9])
def test_build_forward_backward(space: str, size: int) -> None:
    net = _net(space)
    assert [tuple(a.shape) for a in net.arch_parameters()] == [SHAPES[space]] * (
        1 if space == "nb201" else 2)
    x, y = torch.randn(3, 1, size, size), torch.tensor([0, 2, 4])
    assert net(x).shape == (3, 5)
    net._loss(x, y).backward()
    for a in net.arch_parameters():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    arch = {id(p) for p in net.arch_parameters()}
    assert all(id(p) not in arch for p in net.weight_parameters())
    assert len(net.weight_parameters()) + len(arch) == len(list(net.parameters()))


def test_s1r_edges_carry_robustdarts_pairs() -> None:
    # facts from automl/RobustDARTS src/spaces.py (S1): a few edges of each cell type
    spec = get_space("s1r")
    normal, reduce = spec.edge_op_names(False), spec.edge_op_names(True)
    assert normal[0] == ("skip_connect", "dil_conv_3x3")
    assert normal[5] == normal[10] == ("max_pool_3x3", "skip_connect")
    assert normal[12] == normal[13] == ("dil_conv_3x3", "dil_conv_5x5")
    assert reduce[0] == ("max_pool_3x3", "avg_pool_3x3") and reduce[6] == (
        "max_pool_3x3", "sep_conv_3x3")
    net = _net("s1r")
    cell_normal, cell_reduce = net.cells[0], net.cells[1]
    assert not cell_normal.reduction and cell_reduce.reduction
    # normal edge 5 mixes max pool (+ BN) and identity; reduce edge 4 (node 1 <- node 0, stride
    # 1) identity and dil_conv_5x5; reduce edge 1 (node 0 <- c_{k-1}, stride 2) pool and dil3
    first = cell_normal.ops[5].ops[0]
    assert isinstance(first, torch.nn.Sequential) and isinstance(first[0], torch.nn.MaxPool2d)
    assert type(cell_normal.ops[5].ops[1]).__name__ == "Identity"
    assert [type(m).__name__ for m in cell_reduce.ops[4].ops] == ["Identity", "DilConv"]
    pool, dil = cell_reduce.ops[1].ops
    assert pool[0].stride == 2 and dil[1].stride == (2, 2) and dil[1].dilation == (2, 2)


def test_space_sizes_closed_form() -> None:
    # DARTS cell, 2 keepable ops per edge: node i picks 2 of its i+2 inputs and one of 2 ops each
    per_cell = math.prod(math.comb(i + 2, 2) * 2**2 for i in range(4))
    assert per_cell == 46080
    for name in ("s1r", "s2r", "s3r", "s4r"):  # s3r: 'none' is never kept
        assert space_size(name) == per_cell**2
    assert space_size("nb201") == 15625  # NAS-Bench-201's number of cells
    assert space_size("s3r", ops=["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]) == (
        math.prod(math.comb(i + 2, 2) * 3**2 for i in range(4)) ** 2)


def test_noise_op() -> None:
    op = make_op("noise", 4, 2, affine=False)
    assert isinstance(op, Noise) and len(list(op.parameters())) == 0
    assert len(list(op.buffers())) == 0
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    a = op(x)
    assert a.shape == (2, 4, 4, 4) and a.dtype == torch.float64 and a.device == x.device
    assert not a.requires_grad  # no path back to the input
    torch.manual_seed(5)
    b = op(torch.zeros_like(x))  # independent of the input's values
    assert torch.equal(a, b)
    assert not torch.equal(op(x), a)  # a fresh draw on every call
    assert make_op("noise", 4, 1, affine=False)(x).shape == x.shape
    big = make_op("noise", 8, 1, affine=False)(torch.empty(64, 8, 32, 32))
    # 524,288 standard normals: mean within 5 standard errors of 0, std within 1%
    assert abs(float(big.mean())) < 5 / math.sqrt(big.numel())
    assert abs(float(big.std()) - 1.0) < 0.01


def _set_alphas(net, column: str) -> None:
    """Make ``column`` the top op on every edge (other columns ordered by index)."""
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(torch.arange(a.shape[1], dtype=a.dtype).expand_as(a) * 0.1)
            a[:, net.op_names.index(column)] = 3.0


def test_s3r_none_dominates_alphas_but_never_the_genotype() -> None:
    net = _net("s3r")
    _set_alphas(net, "none")  # none > sep_conv_3x3 > skip_connect everywhere
    g = net.genotype()
    ops = [op for c in g.cell_genotypes().values() for op in c.ops]
    assert "none" not in ops and set(ops) == {"sep_conv_3x3"}
    pf = net.parameter_free_share()
    assert pf == {"pf_share": 1.0, "pf_share_genotype": 0.0}
    assert all(w < 0.5 for ws in net.kept_op_weights().values() for w in ws)


def test_parameter_free_share_keeps_the_genotypes_edges_under_edge_normalization() -> None:
    from darts_amend.supernet.operations import PARAMETER_FREE

    torch.manual_seed(4)  # a draw where the betas change the kept edges' share
    net = build_search_network("darts", C=4, num_classes=5, layers=3, in_channels=1,
                               edge_normalization=True)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0.0, 2.0)  # random alphas and betas: the betas move the kept edges
    ops = [op for c in net.genotype().cell_genotypes().values() for op in c.ops]
    share = sum(op in PARAMETER_FREE for op in ops) / len(ops)
    assert net.parameter_free_share()["pf_share_genotype"] == pytest.approx(share)
    without = parameter_free_share(net.space, net.edge_weights())  # betas ignored: other edges
    assert without["pf_share_genotype"] != pytest.approx(share)


def test_s4r_keeps_noise_and_nb201_keeps_none() -> None:
    net = _net("s4r")
    _set_alphas(net, "noise")
    g = net.genotype()
    assert {op for c in g.cell_genotypes().values() for op in c.ops} == {"noise"}
    assert net.parameter_free_share()["pf_share_genotype"] == 1.0
    nb = _net("nb201")
    _set_alphas(nb, "none")
    assert str(nb.genotype()) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    _set_alphas(nb, "nor_conv_3x3")
    g = nb.genotype()
    assert g.ops == ("nor_conv_3x3",) * 6 and g.parameter_free_share() == 0.0
    assert nb.kept_op_weights()["cell"] == pytest.approx([float(nb.edge_weights()["cell"][0, 3])]
                                                         * 6)


def test_parameter_free_share_from_stored_lists() -> None:
    spec = get_space("s2r")
    skip_top = [[0.7, 0.3]] * 14
    sep_top = [[0.2, 0.8]] * 14
    assert parameter_free_share(spec, {"normal": skip_top, "reduce": sep_top}) == {
        "pf_share": 0.5, "pf_share_genotype": 0.5}


@pytest.mark.parametrize("space", NEW)
def test_genotypes_round_trip(space: str, tmp_path) -> None:
    g = _net(space).genotype()
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.parse(g.to_json(indent=2)) == g
    assert Genotype.from_dict(g.to_dict()) == g
    files = plot_genotype(g, tmp_path / "g")
    assert all(p.stat().st_size > 0 for p in files)


def test_nb201_string() -> None:
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|" \
           "skip_connect~2|"
    g = NB201Genotype.from_string(text)
    assert str(g) == text and Genotype.parse(text) == g
    assert g.nodes[2] == (("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2))
    assert g.skip_share() == pytest.approx(2 / 6)
    assert g.parameter_free_share() == pytest.approx(3 / 6)
    assert str(NB201_DARTS) == ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
                                "|skip_connect~0|skip_connect~1|skip_connect~2|")
    for bad in ("", "|nor_conv_3x3~1|", "|nor_conv_3x3~0|+|x~0|none~1|", "nor_conv_3x3~0",
                "|nor_conv_3x3~0|+|none~1|none~0|", "|conv~0|"):
        with pytest.raises(ValueError):
            NB201Genotype.from_string(bad)


def test_nb201_network_parameter_counts() -> None:
    # closed forms for C=16, N=5, 3 input channels, 10 classes. Without cell weights (all-skip):
    # stem 3*16*9 + BN 2*16; residual blocks 16->32 and 32->64 (two 3x3 ReLU-conv-BN, 1x1 conv
    # shortcut); last BN; linear.
    def block(ci, co):
        return ci * co * 9 + 2 * co + co * co * 9 + 2 * co + ci * co

    base = 3 * 16 * 9 + 32 + block(16, 32) + block(32, 64) + 2 * 64 + 64 * 10 + 10
    net = NB201Network(16, 10, 5, NB201_DARTS)
    assert count_parameters(net) == base == 73306  # NAS-Bench-201's smallest net: 0.07M
    conv3 = NB201Genotype(tuple(tuple(("nor_conv_3x3", j) for j in range(i + 1))
                                for i in range(3)))
    cells = sum(5 * 6 * (9 * c * c + 2 * c) for c in (16, 32, 64))
    assert count_parameters(NB201Network(16, 10, 5, conv3)) == base + cells
    assert round((base + cells) / 1e6, 2) == 1.53  # its largest net: 1.53M
    net.train()
    x = torch.randn(2, 3, 9, 9)
    assert net(x).shape == (2, 10)
    with pytest.raises(TypeError):
        NB201Network(16, 10, 5, Genotype.parse(_net("s2r").genotype().to_json()))


@pytest.mark.parametrize("space,estimator", [("s1r", "first_order"), ("s2r", "amended"),
                                             ("s3r", "first_order"), ("s4r", "amended"),
                                             ("nb201", "amended")])
def test_tiny_search_steps(space: str, estimator: str) -> None:
    net = _net(space, C=2)
    arch = AmendedArchitect(net, estimator=estimator, lr=0.05)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.05)
    before = [a.detach().clone() for a in net.arch_parameters()]
    for _ in range(2):
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
        xv, yv = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
        info = arch.step((x, y), (xv, yv))
        assert info.finite
        opt.zero_grad()
        net._loss(x, y).backward()
        opt.step()
    for a, b in zip(net.arch_parameters(), before, strict=True):
        assert torch.isfinite(a).all() and not torch.equal(a.detach(), b)
    assert type(net.genotype()).__name__ == ("NB201Genotype" if space == "nb201" else "Genotype")


def test_nb201_supernet_refuses_darts_only_options() -> None:
    with pytest.raises(ValueError, match="partial_channels"):
        build_search_network("nb201", C=4, partial_channels=2)
    with pytest.raises(ValueError, match="auxiliary"):
        build_search_network("nb201", C=4, auxiliary=True)
    assert set(SPACES) >= set(NEW)


def test_nb201_connected_and_a_cut_cell_ignores_its_input(tmp_path, caplog) -> None:
    connected = [str(NB201_DARTS),
                 # a chain: input -> node 1 -> node 2 -> node 3
                 "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_1x1~2|",
                 "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"]
    cut = ["|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_1x1~2|",
           "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
           "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|none~2|"]
    assert [NB201Genotype.from_string(t).connected() for t in connected] == [True] * 3
    assert [NB201Genotype.from_string(t).connected() for t in cut] == [False] * 3
    # ground truth: the network of a cut cell gives every input the same logits
    torch.manual_seed(0)
    net = NB201Network(4, 10, 1, NB201Genotype.from_string(cut[0]), in_channels=1).eval()
    x = torch.randn(3, 1, 8, 8)
    out = net(x)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6)
    # ... and `darts-amend train` says so before it trains
    from darts_amend.cli import main

    with caplog.at_level("WARNING", logger="darts_amend.cli.train"):
        assert main(["train", "--genotype", _nb201_file(tmp_path, cut[0]), "--dataset", "digits",
                     "--layers", "1", "--init_channels", "2", "--epochs", "1", "--batch_size",
                     "64", "--steps_per_epoch", "1", "--threads", "1", "--no-progress",
                     "--no-plots", "-q", "--output", str(tmp_path / "train")]) == 0
    assert any("cannot learn" in r.getMessage() for r in caplog.records)


def _nb201_file(tmp_path, text: str) -> str:
    path = tmp_path / "genotype.json"
    path.write_text(NB201Genotype.from_string(text).to_json())
    return str(path)
