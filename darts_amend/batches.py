"""Batches: sample counts, sub-batches and micro-batches, and the BatchNorm caveat.

A batch is ``(inputs, targets)``; its tensors (also inside tuples, lists and dicts) share their
first, sample dimension. For a loss that is the mean over independent samples,

    L = sum_k (n_k / n) L_k      over micro-batches of n_k samples,

which is what lets products be accumulated over micro-batches (``chunks``). BatchNorm in
training mode breaks the independence: :func:`warn_if_coupled` says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from ._types import Batch

__all__ = [
    "batch_size",
    "coupled_batchnorm",
    "iter_tensors",
    "split_batch",
    "take_batch",
    "warn_if_coupled",
]


def iter_tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor in ``obj`` (a tensor, or tuples / lists / dicts of them, nested)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)


def batch_size(batch: Batch) -> int:
    """The number of samples of a batch: the shared first dimension of its tensors."""
    sizes = {t.shape[0] for t in iter_tensors(batch) if t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            "cannot split the batch into samples: its tensors must share their first "
            f"(sample) dimension, got sizes {sorted(sizes) or 'none'}"
        )
    return sizes.pop()


def _slice(obj: Any, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[start:stop] if obj.dim() > 0 else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice(item, start, stop) for item in obj)
    if isinstance(obj, dict):
        return {k: _slice(v, start, stop) for k, v in obj.items()}
    return obj


def take_batch(batch: Batch, samples: int) -> Batch:
    """The first ``samples`` samples of a batch (all of it when it is not larger)."""
    n = batch_size(batch)
    return batch if samples >= n else (_slice(batch[0], 0, samples), _slice(batch[1], 0, samples))


def split_batch(batch: Batch, chunks: int) -> list[tuple[Batch, float]]:
    """``chunks`` consecutive micro-batches of near-equal size (at most one per sample), each
    with its share ``n_k / n`` of the samples: for a loss that is the mean over samples,
    ``L = sum_k share_k * L_k``."""
    if chunks <= 1:
        return [(batch, 1.0)]
    n = batch_size(batch)
    chunks = min(chunks, n)
    parts, start = [], 0
    for k in range(chunks):
        stop = start + n // chunks + (1 if k < n % chunks else 0)
        part = (_slice(batch[0], start, stop), _slice(batch[1], start, stop))
        parts.append((part, (stop - start) / n))
        start = stop
    return parts


def coupled_batchnorm(net: nn.Module) -> list[str]:
    """Names of BatchNorm modules in training mode (their batch statistics couple samples)."""
    return [
        name or type(net).__name__
        for name, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def warn_if_coupled(net: nn.Module, what: str) -> None:
    """Warn that micro-batches change the loss when BatchNorm normalises with batch statistics."""
    coupled = coupled_batchnorm(net)
    if coupled:
        warnings.warn(
            f"{what}: {len(coupled)} BatchNorm module(s) in training mode (e.g. {coupled[0]!r}) "
            "normalise each micro-batch with its own statistics, so the products are those of "
            "a ghost-batch-norm loss, not the full-batch products (a different estimator; "
            "exact only for losses that are a mean over independent samples, e.g. BatchNorm "
            "in eval mode or no BatchNorm)",
            UserWarning,
            stacklevel=3,
        )
