"""Collapse and convergence signals on plain softmax tensors, op-name lists and histories.

These functions know nothing about a supernet class: they take the per-cell-kind softmax
weights ``(edges x ops)``, the names of the kept operators, or a history of eigenvalues, so
they can be unit-tested on hand-made numbers and reused by any search loop.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "edge_entropy",
    "skip_share",
    "kept_ops",
    "kept_weights",
    "convergence_rule",
    "EarlyStopDecision",
    "eigen_early_stop",
]

SKIP = "skip_connect"


def _check_softmax(weights: Tensor) -> None:
    if weights.dim() != 2 or weights.shape[0] < 1 or weights.shape[1] < 1:
        raise ValueError(f"weights must be a non-empty (edges x ops) matrix, "
                         f"got shape {tuple(weights.shape)}")
    w = weights.detach()
    if not torch.isfinite(w).all():
        raise ValueError("weights contain non-finite values")
    sums = w.sum(dim=1)
    if (w < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError("weights must be a softmax over ops: non-negative rows summing to 1")


def edge_entropy(weights: Tensor, *, normalized: bool = True) -> Tensor:
    """Entropy of each edge's operator distribution, ``H_e = -sum_o p_eo log p_eo``.

    With ``normalized=True`` it is divided by ``log(#ops)``: 1 is the uniform mixture at the
    start of a search, 0 a one-hot edge (a fully decided operator). Returns a tensor (edges,).
    """
    _check_softmax(weights)
    p = weights.detach()
    h = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=1)
    if normalized:
        n_ops = p.shape[1]
        h = h / math.log(n_ops) if n_ops > 1 else torch.zeros_like(h)
    return h


def skip_share(ops: Sequence[str], *, skip: str = SKIP) -> float:
    """Fraction of the kept operators that are ``skip`` (the DARTS collapse signature)."""
    if isinstance(ops, str) or len(ops) == 0:
        raise ValueError("ops must be a non-empty sequence of operator names")
    return sum(op == skip for op in ops) / len(ops)


def kept_ops(
    weights: Tensor,
    op_names: Sequence[str],
    *,
    steps: int | None = None,
    inputs_per_node: int = 2,
    exclude: Sequence[str] = ("none",),
) -> list[tuple[int, int]]:
    """The (edge, op) pairs a genotype derived from ``weights`` keeps.

    ``steps=None`` (fixed-edge spaces such as s1/s2): every edge keeps its argmax op among the
    ops not in ``exclude``. ``steps=k`` (the DARTS cell): the edges are ordered node by node,
    node ``i`` having ``2 + i`` inputs; each node keeps the ``inputs_per_node`` edges whose best
    non-excluded op weighs most, with that op. Ties go to the lower index.
    """
    _check_softmax(weights)
    if len(op_names) != weights.shape[1]:
        raise ValueError(f"{len(op_names)} op names for {weights.shape[1]} ops per edge")
    allowed = [i for i, name in enumerate(op_names) if name not in exclude]
    if not allowed:
        raise ValueError(f"every op is excluded ({list(exclude)})")
    w = weights.detach()[:, allowed]
    best_w, best_i = w.max(dim=1)
    best = [(e, allowed[int(best_i[e])]) for e in range(w.shape[0])]
    if steps is None:
        return best
    if steps < 1 or inputs_per_node < 1:
        raise ValueError(f"invalid steps / inputs_per_node: {steps} / {inputs_per_node}")
    n_edges = sum(2 + i for i in range(steps))
    if n_edges != w.shape[0]:
        raise ValueError(f"a cell with {steps} nodes has {n_edges} edges, weights has {w.shape[0]}")
    kept, start = [], 0
    for i in range(steps):
        n_in = 2 + i
        scores = [(-float(best_w[start + j]), start + j) for j in range(n_in)]
        for _, e in sorted(scores)[: min(inputs_per_node, n_in)]:
            kept.append(best[e])
        start += n_in
    return sorted(kept)


def kept_weights(weights: Tensor, kept: Sequence[tuple[int, int]]) -> Tensor:
    """Softmax weight of each kept (edge, op) pair, as a 1-D tensor."""
    if len(kept) == 0:
        raise ValueError("kept must name at least one (edge, op) pair")
    edges = torch.tensor([e for e, _ in kept], device=weights.device)
    ops = torch.tensor([o for _, o in kept], device=weights.device)
    return weights.detach()[edges, ops]


def convergence_rule(
    kept: Tensor | Sequence[float],
    genotypes: Sequence[str],
    *,
    threshold: float = 0.5,
    stable_for: int = 1,
) -> bool:
    """The paper's convergence rule (Sec. 4.1.1).

    True when every kept operator has softmax weight ``>= threshold`` and the genotype has not
    changed over the last ``stable_for`` epochs, i.e. the last ``stable_for + 1`` entries of
    ``genotypes`` (one serialised genotype per epoch, oldest first) are identical.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"invalid threshold: {threshold}")
    if stable_for < 0:
        raise ValueError(f"invalid stable_for: {stable_for}")
    values = torch.as_tensor(kept, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("kept must hold at least one weight")
    if not bool((values >= threshold).all()):
        return False
    recent = list(genotypes)[-(stable_for + 1):]
    return len(recent) == stable_for + 1 and all(g == recent[-1] for g in recent)


@dataclass(frozen=True)
class EarlyStopDecision:
    """Outcome of :func:`eigen_early_stop`.

    ``ratio``: current local average over the one ``lag`` windows before (nan when not yet
    defined); ``revert_epoch``: the epoch whose genotype to keep when ``stop`` (the centre of the
    earlier window), else None.
    """

    stop: bool
    ratio: float
    revert_epoch: int | None


def eigen_early_stop(
    epochs: Sequence[int],
    eigenvalues: Sequence[float],
    *,
    window: int = 5,
    lag: int = 4,
    factor: float = 1.3,
    start_epoch: int = 10,
) -> EarlyStopDecision:
    """RobustDARTS-style early stop (DARTS-ES) on the dominant alpha-Hessian eigenvalue.

    ``epochs[j]`` is when ``eigenvalues[j]`` was measured (oldest first; measurements may be
    every N epochs). The local average ``m_j`` is the mean of the ``window`` measurements ending
    at ``j``, attributed to the epoch at the centre of that window. Stop when the newest local
    average has grown by more than ``factor`` over the one ``lag`` measurements earlier,
    ``m_now / m_{now-lag} > factor``, provided that earlier window is centred at or after
    ``start_epoch``; the genotype to keep is the one of that centre epoch. (Zela et al. 2020
    stop at a ratio of 1/0.75 ~ 1.33 with window 5; their code uses 1.3 and a lag of 4.)
    """
    if len(epochs) != len(eigenvalues):
        raise ValueError(f"{len(epochs)} epochs for {len(eigenvalues)} eigenvalues")
    if window < 1 or lag < 1:
        raise ValueError(f"invalid window / lag: {window} / {lag}")
    if not factor > 1:
        raise ValueError(f"invalid factor: {factor} (must be > 1)")
    if any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
        raise ValueError("epochs must be strictly increasing")
    ev = [float(x) for x in eigenvalues]
    if not all(math.isfinite(x) for x in ev):
        raise ValueError("eigenvalues contain non-finite values")
    now = len(ev) - 1
    before = now - lag
    if before - window + 1 < 0:
        return EarlyStopDecision(False, math.nan, None)
    m_now = sum(ev[now - window + 1 : now + 1]) / window
    m_before = sum(ev[before - window + 1 : before + 1]) / window
    centre = int(epochs[before - window // 2])
    ratio = m_now / m_before if m_before > 0 else math.nan
    stop = centre >= start_epoch and math.isfinite(ratio) and ratio > factor
    return EarlyStopDecision(stop, ratio, centre if stop else None)
