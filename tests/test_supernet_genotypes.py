"""Genotypes (JSON / upstream text round trips, validation, skip share) and genotype pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darts_amend.supernet import (
    DARTS_V1,
    DARTS_V2,
    CellGenotype,
    Genotype,
    build_search_network,
    genotype_to_dot,
    plot_genotype,
    plot_space,
)

UPSTREAM_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def _s2_genotype(cells: int = 20) -> Genotype:
    torch.manual_seed(0)
    return build_search_network("s2", C=4, layers=cells).genotype()


def test_shared_genotype_json_round_trip() -> None:
    for g in (DARTS_V1, DARTS_V2):
        text = g.to_json()
        assert Genotype.from_json(text) == g
        assert Genotype.parse(text) == g
        assert json.loads(text)["normal"][0] == list(g.normal[0])


def test_per_cell_genotype_json_round_trip() -> None:
    g = _s2_genotype()
    assert g.is_per_cell and g.num_cells == 20
    back = Genotype.from_json(g.to_json(indent=2))
    assert back == g and back.cells == g.cells
    assert set(json.loads(g.to_json())) == {"format", "cells"}


def test_upstream_text_round_trip() -> None:
    assert Genotype.parse(UPSTREAM_V2) == DARTS_V2
    assert Genotype.parse(DARTS_V1.to_upstream()) == DARTS_V1
    with pytest.raises(ValueError, match="no upstream DARTS text form"):
        _s2_genotype(3).to_upstream()


def test_text_form_is_readable() -> None:
    text = str(DARTS_V2)
    assert "normal: node0 = sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1})" in text
    assert "node3 = skip_connect(c_{k-2}) + dil_conv_3x3(node0)" in text
    assert "reduce:" in text and "out = concat(node0, node1, node2, node3)" in text
    s2 = str(_s2_genotype(3))
    assert "3 cells" in s2 and "cell_2:" in s2


def test_skip_share() -> None:
    # DARTS_V2: 2 of 8 normal ops and 3 of 8 reduction ops are skip_connect
    assert DARTS_V2.skip_share() == pytest.approx(5 / 16)
    assert DARTS_V1.skip_share() == pytest.approx(6 / 16)
    cells = [CellGenotype((("skip_connect", 0), ("sep_conv_3x3", 1)), (2,))] * 4
    assert Genotype.per_cell(cells).skip_share() == pytest.approx(0.5)


def test_cell_access() -> None:
    assert DARTS_V2.cell(5, reduction=True).edges == DARTS_V2.reduce
    assert DARTS_V2.cell(0, reduction=False).concat == (2, 3, 4, 5)
    g = _s2_genotype(4)
    assert g.cell(3, reduction=False) == g.cells[3]
    with pytest.raises(IndexError):
        g.cell(4, reduction=False)


@pytest.mark.parametrize(
    "bad,match",
    [
        ('{"normal": [["conv_9x9", 0], ["skip_connect", 1]], "reduce": []}', "unknown operation"),
        (
            '{"normal": [["skip_connect", 2], ["skip_connect", 1]], "reduce": []}',
            "cannot take state 2",
        ),
        (
            '{"normal": [["skip_connect", 0]], "reduce": [["skip_connect", 0]]}',
            "two inputs per node",
        ),
        ('{"cells": [], "normal": []}', "unknown keys"),
        ('{"format": "other/9", "cells": []}', "unsupported format"),
        ("{not json", "invalid JSON"),
        ("Genotype(normal=[('skip_connect', 0)", "cannot parse genotype text"),
        ("sep_conv_3x3 everywhere", "must be JSON"),
    ],
)
def test_invalid_genotypes_raise_clear_errors(bad: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Genotype.parse(bad)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_shared_genotype(tmp_path: Path) -> None:
    files = plot_genotype(DARTS_V2, tmp_path / "sub" / "darts_v2")
    names = sorted(p.name for p in files)
    assert names == [
        "darts_v2_normal.dot",
        "darts_v2_normal.png",
        "darts_v2_reduce.dot",
        "darts_v2_reduce.png",
    ]
    for p in files:
        assert p.exists() and p.stat().st_size > 200
    assert all(_is_png(p) for p in files if p.suffix == ".png")
    dot = (tmp_path / "sub" / "darts_v2_normal.dot").read_text()
    assert dot.startswith("digraph normal {") and dot.count("->") == 8 + 4
    assert '[label="dil_conv_3x3"' in dot


def test_plot_per_cell_network(tmp_path: Path) -> None:
    g = _s2_genotype()
    files = plot_genotype(g, tmp_path / "s2", title="S2")
    assert [p.name for p in files] == ["s2_network.png", "s2.dot"]
    assert _is_png(files[0]) and files[0].stat().st_size > 5000
    dot = files[1].read_text()
    assert dot.count("subgraph cluster_cell_") == 20 and dot.count("->") == 20 * (8 + 4)
    assert genotype_to_dot(g) == dot
    # skip_connect red and sep_conv_3x3 blue, as the paper's Figure 3
    assert 'color="#d62728"' in dot and 'color="#1f77b4"' in dot


def test_plot_rejects_non_genotype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Genotype"):
        plot_genotype("DARTS_V2", tmp_path / "x")


@pytest.mark.parametrize("space", ["darts", "s1", "s2"])
def test_plot_space(tmp_path: Path, space: str) -> None:
    path = plot_space(space, tmp_path / f"{space}.png")
    assert path.exists() and _is_png(path) and path.stat().st_size > 5000
