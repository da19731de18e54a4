"""Live-path metric (darts_amend.diagnostics.paths) against hand-built cells and an exhaustive
brute-force path enumeration; the NB201 canonical form against node relabelling."""

from __future__ import annotations

import itertools
import random

import pytest

from darts_amend.diagnostics.paths import genotype_paths, live_paths, nb201_canonical
from darts_amend.supernet import CellGenotype, Genotype, NB201Genotype
from darts_amend.supernet.operations import PARAMETER_FREE

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def nb(text: str) -> NB201Genotype:
    return NB201Genotype.from_string(text)


def _brute_force(edges: list[tuple[int, int, str]], inputs: set[int],
                 outputs: set[int]) -> tuple[int, int]:
    """(live edges, live parametric edges) by enumerating every directed path of non-none edges
    from an input to an output."""
    real = [(s, d, op) for s, d, op in edges if op != "none"]
    on_path: set[int] = set()

    def walk(state: int, used: list[int]) -> None:
        if state in outputs and used:
            on_path.update(used)
        for k, (s, d, _) in enumerate(real):
            if s == state:
                walk(d, used + [k])

    for i in inputs:
        walk(i, [])
    return len(on_path), sum(real[k][2] not in PARAMETER_FREE for k in on_path)


def test_hand_built_nb201_cells() -> None:
    full = live_paths(nb("|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+"
                         "|nor_conv_3x3~0|avg_pool_3x3~1|skip_connect~2|"))
    assert (full.edges, full.live_edges, full.live_parametric) == (6, 6, 4)
    assert not full.disconnected and not full.degenerate
    # `none` on every edge leaving the input: nothing reaches the output
    cut = live_paths(nb("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|"
                        "nor_conv_1x1~2|"))
    assert cut.disconnected and cut.degenerate and cut.live_edges == cut.live_parametric == 0
    # pooling / skip only on the live paths; the conv into node 2 is dead (2 -> 3 is none)
    pool = live_paths(nb("|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+"
                         "|skip_connect~0|avg_pool_3x3~1|none~2|"))
    assert (pool.live_edges, pool.live_parametric) == (3, 0)
    assert not pool.disconnected and pool.degenerate
    # a conv whose input is cut (node 1 is zero) is not on a live path either
    dead = live_paths(nb("|none~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|"
                         "nor_conv_3x3~2|"))
    assert (dead.live_edges, dead.live_parametric, dead.disconnected) == (1, 0, False)
    assert dead.to_dict()["degenerate"] is True


def test_nb201_all_cells_match_brute_force_and_connected() -> None:
    for ops in itertools.product(NB201_OPS, repeat=6):
        it = iter(ops)
        g = NB201Genotype(tuple(tuple((next(it), j) for j in range(i + 1)) for i in range(3)))
        p = live_paths(g)
        edges = [(j, i, op) for i, j, op in g.edges]
        assert (p.live_edges, p.live_parametric) == _brute_force(edges, {0}, {3}), g
        assert p.disconnected == (not g.connected()), g


def test_darts_cells_match_brute_force() -> None:
    rng = random.Random(0)
    ops = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3")
    for _ in range(500):
        edges = tuple((rng.choice(ops), rng.randrange(node + 2)) for node in range(4)
                      for _ in range(2))
        concat = tuple(sorted(rng.sample(range(2, 6), rng.randint(1, 4))))
        cell = CellGenotype(edges, concat)
        p = live_paths(cell)
        graph = [(j, pos // 2 + 2, op) for pos, (op, j) in enumerate(edges)]
        assert (p.live_edges, p.live_parametric) == _brute_force(graph, {0, 1}, set(concat))
        assert p.disconnected == (p.live_edges == 0)


def test_darts_cell_hand_built_and_genotype_sums() -> None:
    # only node 3 (state 5) is concatenated: node 0's edges feed nothing that reaches it
    cell = CellGenotype((("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                         ("skip_connect", 0), ("max_pool_3x3", 1),
                         ("sep_conv_3x3", 3), ("none", 1),
                         ("skip_connect", 4), ("none", 0)), concat=(5,))
    p = live_paths(cell)
    assert (p.live_edges, p.live_parametric, p.disconnected) == (4, 1, False)
    cut = CellGenotype((("none", 0), ("none", 1), ("sep_conv_3x3", 2), ("none", 1),
                        ("none", 0), ("none", 1), ("none", 0), ("none", 1)), concat=(3,))
    assert live_paths(cut).disconnected
    g = Genotype(normal=cell.edges, normal_concat=(5,), reduce=cut.edges, reduce_concat=(3,))
    total = genotype_paths(g)
    assert (total.edges, total.live_edges, total.live_parametric) == (16, 4, 1)
    assert total.disconnected and total.degenerate  # one cut cell is enough
    per_cell = genotype_paths(Genotype.per_cell([cell, cell]))
    assert (per_cell.live_parametric, per_cell.disconnected) == (2, False)
    assert genotype_paths(nb("|skip_connect~0|+|none~0|skip_connect~1|+"
                             "|none~0|none~1|skip_connect~2|")).live_edges == 3
    with pytest.raises(TypeError):
        live_paths("not a cell")


def _swap_nodes_1_2(g: NB201Genotype) -> NB201Genotype:
    """The relabelling that swaps intermediate nodes 1 and 2 (valid when edge 1 -> 2 is none)."""
    (a,), (b, _), (c, d, e) = [[op for op, _ in node] for node in g.nodes]
    return NB201Genotype((((b, 0),), ((a, 0), ("none", 1)), ((c, 0), (e, 1), (d, 2))))


def test_canonical_form_isomorphisms() -> None:
    n_swapped = 0
    for ops in itertools.product(NB201_OPS, repeat=6):
        if ops[2] != "none":
            continue
        it = iter(ops)
        g = NB201Genotype(tuple(tuple((next(it), j) for j in range(i + 1)) for i in range(3)))
        assert nb201_canonical(g) == nb201_canonical(_swap_nodes_1_2(g))
        n_swapped += 1
    assert n_swapped == 5 ** 5
    # a path routed through a skip node is the path itself
    assert nb201_canonical(nb("|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                              "|none~0|none~1|skip_connect~2|")) == nb201_canonical(
        nb("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")) == \
        "nor_conv_3x3#0(x)"
    # every cell whose output ignores the input is one class
    assert nb201_canonical(nb("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|"
                              "nor_conv_1x1~2|")) == "disconnected"


def test_canonical_form_separates_different_cells() -> None:
    forms = [
        "|skip_connect~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|skip_connect~2|",  # 2x
        "|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|",  # x
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",  # c(c(x))
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|",
        "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|",  # avg(c(x))
        "|avg_pool_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",  # c(avg(x))
        "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|",
    ]
    keys = [nb201_canonical(nb(f)) for f in forms]
    assert len(set(keys)) == len(keys), keys
    assert keys[0] == "x+x" and keys[3] == "nor_conv_3x3#0(x)+nor_conv_3x3#1(x)"
    # one conv shared by two paths is not two convs: c1(c3(x)) + c1'(c3(x)) with c3 shared
    # (node 1 feeds node 2 and node 3) against two separate c3 (nodes 1 and 2 both from x)
    shared = nb("|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|none~0|nor_conv_1x1~1|skip_connect~2|")
    separate = nb("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|nor_conv_1x1~1|"
                  "nor_conv_1x1~2|")
    assert nb201_canonical(shared) != nb201_canonical(separate)
    assert nb201_canonical(shared).count("nor_conv_3x3#") == 2  # one instance, written twice
    assert len({nb201_canonical(shared).split("nor_conv_3x3#")[i][0] for i in (1, 2)}) == 1
    with pytest.raises(TypeError):
        nb201_canonical(CellGenotype((("skip_connect", 0), ("skip_connect", 1)), (2,)))


def test_canonical_form_against_a_surrogate_computation() -> None:
    """Ground truth for the term algebra: compute every cell with a surrogate where each op kind
    is a fixed function (nor_conv: tanh(W v), zero at zero; avg pool: a fixed linear map;
    skip: identity; none: zero). Cells with one canonical form compute the same output, and the
    form names one instance per live parametric edge."""
    import re

    import numpy as np

    rng = np.random.default_rng(0)
    d = 6
    x = rng.normal(size=d)
    W = {"nor_conv_1x1": rng.normal(size=(d, d)), "nor_conv_3x3": rng.normal(size=(d, d))}
    P = rng.normal(size=(d, d)) / d

    def surrogate(g: NB201Genotype) -> np.ndarray:
        states = [x]
        for node in g.nodes:
            total = np.zeros(d)
            for op, j in node:
                v = states[j]
                if op == "skip_connect":
                    total = total + v
                elif op == "avg_pool_3x3":
                    total = total + P @ v
                elif op != "none":
                    total = total + np.tanh(W[op] @ v)
            states.append(total)
        return states[-1]

    outputs: dict[str, np.ndarray] = {}
    for ops in itertools.product(NB201_OPS, repeat=6):
        it = iter(ops)
        g = NB201Genotype(tuple(tuple((next(it), j) for j in range(i + 1)) for i in range(3)))
        key = nb201_canonical(g)
        y = surrogate(g)
        if key == "disconnected":
            assert np.abs(y).max() == 0.0, g
        ref = outputs.setdefault(key, y)
        assert np.allclose(ref, y, rtol=0, atol=1e-12), (g, key)
        assert len(set(re.findall(r"#\d+", key))) == live_paths(g).live_parametric, (g, key)
    assert 1000 < len(outputs) < 5 ** 6
