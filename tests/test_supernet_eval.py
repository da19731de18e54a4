"""Evaluation networks: published parameter / multiply-add counts of DARTS_V2, an independent
closed-form multiply-add count, per-cell (S2) genotypes, auxiliary head, drop-path."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

from darts_amend.supernet import (
    DARTS_V1,
    DARTS_V2,
    CellGenotype,
    EvalCell,
    Genotype,
    NetworkCIFAR,
    NetworkImageNet,
    build_search_network,
    count_multiply_adds,
    count_parameters,
)
from darts_amend.supernet.operations import Identity


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_darts_v2_cifar_parameters_match_darts_paper() -> None:
    net = NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    n = count_parameters(net)
    assert n == pytest.approx(3.3e6, rel=0.03)  # DARTS paper, Table 1: 3.3M
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    assert count_parameters(net, include_auxiliary=True) == n + aux
    assert n == sum(p.numel() for p in net.parameters()) - aux


def _closed_form_macs(genotype: Genotype, C: int, layers: int, num_classes: int, size: int) -> int:
    """Multiply-adds of the DARTS ImageNet network, from the architecture alone (no hooks).
    Convs: H_out * W_out * C_out * (C_in / groups) * k * k; linear: in * out."""
    half = math.ceil
    h = half(size / 2)
    macs = h * h * (C // 2) * 3 * 9  # stem0 conv 1 (stride 2)
    h_s0 = half(h / 2)
    macs += h_s0 * h_s0 * C * (C // 2) * 9  # stem0 conv 2 (stride 2)
    h_s1 = half(h_s0 / 2)
    macs += h_s1 * h_s1 * C * C * 9  # stem1 (stride 2)
    c_pp, c_p, c_cur = C, C, C
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        if red:
            c_cur *= 2
        cell = genotype.cell(i, red)
        h_in = h_s1
        # preprocess0 (FactorizedReduce: two 1x1 stride-2 convs to C/2, or a 1x1 conv) and
        # preprocess1 (1x1 conv): both produce C channels at the cell's input resolution
        macs += h_in * h_in * c_cur * (c_pp + c_p)
        h_out = half(h_in / 2) if red else h_in
        area = h_out * h_out  # every op outputs the cell's output resolution
        for op, idx in cell.edges:
            if op.startswith("sep_conv"):  # 2 x (depthwise k x k + pointwise)
                ks = int(op[-1])
                macs += 2 * (area * c_cur * ks * ks + area * c_cur * c_cur)
            elif op.startswith("dil_conv"):  # depthwise k x k (dilated) + pointwise
                ks = int(op[-1])
                macs += area * c_cur * ks * ks + area * c_cur * c_cur
            elif op == "skip_connect" and red and idx < 2:  # FactorizedReduce: 2 x (C/2 x C)
                macs += area * c_cur * c_cur
            # pooling and identity: no multiply-adds
        c_pp, c_p = c_p, len(cell.concat) * c_cur
        h_s1 = h_out
    return macs + c_p * num_classes


def test_darts_v2_imagenet_parameters_and_multiply_adds() -> None:
    net = NetworkImageNet(48, 1000, 14, True, DARTS_V2)
    params = count_parameters(net)
    assert params == pytest.approx(4.7e6, rel=0.03)  # Amended-DARTS Table 2 / DARTS: 4.7M
    macs = count_multiply_adds(net, (224, 224))
    # ground truth: the closed-form count from the architecture
    assert macs == _closed_form_macs(DARTS_V2, 48, 14, 1000, 224)
    # Published: 574M (DARTS; Amended-DARTS Table 2). Counting convolutions and the classifier
    # (the mobile-setting convention) gives 530M; the gap is known since DARTS' release
    # (quark0/darts issue #46: 523M and 545M with other counters; DARTS never published its
    # counter). So: within 8% of the published figure, and inside the < 600M mobile setting.
    assert macs == pytest.approx(574e6, rel=0.08)
    assert macs < 600e6
    assert net.training  # restored


def test_multiply_adds_hooks_match_closed_form_other_settings() -> None:
    for genotype, C, size in ((DARTS_V1, 16, 64), (DARTS_V2, 8, 65)):
        net = NetworkImageNet(C, 10, 5, False, genotype)
        assert count_multiply_adds(net, (3, size, size)) == _closed_form_macs(
            genotype, C, 5, 10, size
        )


def test_multiply_adds_of_single_conv_and_linear() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1),
        torch.nn.Conv2d(8, 8, 5, padding=2, groups=8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16 * 16, 7),
    )
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 1 * 25 + 8 * 16 * 16 * 7
    assert count_multiply_adds(model, (3, 32, 32)) == expected


@pytest.mark.parametrize("network", [NetworkCIFAR, NetworkImageNet])
@pytest.mark.parametrize("size,channels", [(8, 1), (32, 3), (64, 1)])
def test_eval_networks_forward_backward(network, size: int, channels: int) -> None:
    net = network(8, 4, 5, True, DARTS_V2, in_channels=channels, drop_path_prob=0.2)
    x = torch.randn(2, channels, size, size)
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 4)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    out = net(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, net(x))


@pytest.mark.parametrize("op,random", [("skip_connect", False), ("max_pool_3x3", True)])
def test_drop_path_spares_identity_edges(op: str, random: bool) -> None:
    cell = EvalCell(CellGenotype(((op, 0), (op, 1)), (2,)), 4, 4, 4, False, False).train()
    s = torch.randn(8, 4, 4, 4)
    torch.manual_seed(1)
    a = cell(s, s, 0.5)
    torch.manual_seed(2)
    b = cell(s, s, 0.5)
    assert torch.equal(a, b) != random
    assert torch.equal(cell(s, s, 0.0), cell(s, s, 0.0))


def test_per_cell_genotype_builds_every_cell_from_its_own() -> None:
    search = build_search_network("s2", C=4, layers=20)
    with torch.no_grad():  # cell i: sep_conv_3x3 everywhere iff i is even
        for i, a in enumerate(search.alphas):
            a.zero_()
            a[:, 1 if i % 2 == 0 else 0] = 1.0
    genotype = search.genotype()
    assert genotype.num_cells == 20
    net = NetworkCIFAR(8, 10, 20, False, genotype)
    for i, cell in enumerate(net.cells):
        skips = sum(isinstance(op, Identity) for op in cell.ops)
        if i % 2 == 0:
            assert skips == 0
        else:
            assert skips == (3 if cell.reduction else 8)  # 5 stride-2 skips: FactorizedReduce
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="20 cells but layers=8"):
        NetworkCIFAR(8, 10, 8, False, genotype)
    with pytest.raises(TypeError, match="Genotype"):
        NetworkCIFAR(8, 10, 8, False, "DARTS_V2")


def test_count_parameters_excludes_architecture_parameters() -> None:
    net = build_search_network("s1", C=4, layers=3, auxiliary=True)
    alphas = sum(a.numel() for a in net.arch_parameters())
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert count_parameters(net) == total - alphas - aux
