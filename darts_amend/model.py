"""The supernet protocol (docs/api.md): what darts-amend needs from a model.

* ``model.arch_parameters()`` returns the alphas; the weights are every other trainable
  parameter (:func:`split_parameters`); DataParallel / DDP wrappers are looked through
  (:func:`unwrap_model`).
* The loss is ``loss_fn(model, inputs, targets)``, by default ``model._loss(x, y)`` or the
  cross-entropy of ``model(x)`` (:func:`resolve_loss`), evaluated by :func:`evaluate_loss`.
* A batch is ``(inputs, targets)`` on the model's device and dtype (:func:`check_batch`).
* Work on a model leaves its parameters and buffers as found (:func:`preserve_state`).

:func:`prepare` does all the checks of one call in one place and returns a :class:`Prepared`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import randomness
from ._types import Batch, LossFn, TensorList
from .batches import iter_tensors
from .tensorlist import bits_equal

__all__ = [
    "NonFiniteLossError",
    "Prepared",
    "check_batch",
    "check_finite",
    "evaluate_loss",
    "prepare",
    "preserve_state",
    "resolve_loss",
    "split_parameters",
    "unwrap_model",
]


class NonFiniteLossError(ValueError):
    """A loss evaluated by an estimator or product was nan or inf."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module behind ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers) or (
        not hasattr(model, "arch_parameters")
        and isinstance(getattr(model, "module", None), nn.Module)
    ):
        model = model.module
    return model


def split_parameters(model: nn.Module) -> tuple[TensorList, TensorList]:
    """Split a supernet into ``(alphas, weights)``.

    ``alphas = list(model.arch_parameters())`` (validated: non-empty, tensors, leaves that require
    grad, no duplicates); ``weights`` are the trainable ``model.parameters()`` that are not alphas,
    compared by identity, so alphas registered as module parameters (P-DARTS) are excluded, not
    rejected. DataParallel / DDP wrappers are unwrapped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    net = unwrap_model(model)
    arch = getattr(net, "arch_parameters", None)
    if arch is None:
        raise TypeError(
            f"{type(net).__name__} has no arch_parameters(): a supernet must expose its "
            "architecture parameters (alphas) through a method arch_parameters()"
        )
    if not callable(arch):
        raise TypeError(
            f"{type(net).__name__}.arch_parameters must be a method, got {type(arch).__name__}"
        )
    alphas = list(arch())
    if not alphas:
        raise ValueError(f"{type(net).__name__}.arch_parameters() returned no tensors")
    seen: set[int] = set()
    for i, a in enumerate(alphas):
        if not isinstance(a, Tensor):
            raise TypeError(f"arch_parameters()[{i}] is a {type(a).__name__}, not a torch.Tensor")
        if not a.is_floating_point():
            raise TypeError(
                f"arch_parameters()[{i}] has dtype {a.dtype}; alphas must be floating point"
            )
        if not a.requires_grad:
            raise ValueError(
                f"arch_parameters()[{i}] does not require grad (call .requires_grad_())"
            )
        if not a.is_leaf:
            raise ValueError(
                f"arch_parameters()[{i}] is not a leaf tensor (it was computed from other "
                "tensors); "
                "register alphas as nn.Parameter"
            )
        if id(a) in seen:
            raise ValueError(f"arch_parameters()[{i}] appears more than once")
        seen.add(id(a))
    weights = [p for p in net.parameters() if p.requires_grad and id(p) not in seen]
    if not weights:
        raise ValueError(f"{type(net).__name__} has no trainable weights besides arch_parameters()")
    return alphas, weights


def _default_loss(model: nn.Module, inputs: Any, targets: Any) -> Tensor:
    loss_method = getattr(model, "_loss", None)
    if callable(loss_method):
        return loss_method(inputs, targets)
    out = model(inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return F.cross_entropy(out, targets)


def resolve_loss(loss_fn: LossFn | None = None) -> LossFn:
    """``loss_fn`` itself, or the default: ``model._loss(x, y)`` if the model has one, else the
    cross-entropy of ``model(x)`` (first element when the model returns a tuple)."""
    if loss_fn is None:
        return _default_loss
    if not callable(loss_fn):
        raise TypeError(
            "loss_fn must be callable (model, inputs, targets) -> Tensor, "
            f"got {type(loss_fn).__name__}"
        )
    return loss_fn


def check_batch(
    batch: Any, name: str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Batch:
    """Validate an ``(inputs, targets)`` pair: its tensors live on ``device``, floating-point
    inputs have the model's floating ``dtype``, and tensor inputs and targets agree on the
    (non-zero) batch size. Raises TypeError / ValueError naming the problem."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"{name} must be an (inputs, targets) pair, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    if device is not None:
        for part, obj in zip(("inputs", "targets"), batch, strict=True):
            for t in iter_tensors(obj):
                if t.device != device:
                    raise ValueError(
                        f"{name} {part} are on {t.device} but the model's arch_parameters() are on "
                        f"{device}; move the batch to the model's device"
                    )
    inputs, targets = batch
    if dtype is not None and dtype.is_floating_point:
        for t in iter_tensors(inputs):
            if t.dtype == torch.uint8:  # raw image bytes reach no float layer
                raise ValueError(
                    f"{name} inputs are torch.uint8 (raw image bytes?) but the model's parameters "
                    f"are {dtype}; convert them first, e.g. inputs.to({dtype}) / 255, normalised "
                    f"as in training"
                )
            if t.is_floating_point() and t.dtype != dtype:
                raise ValueError(
                    f"{name} inputs are {t.dtype} but the model's parameters are {dtype}; "
                    f"convert the batch (inputs.to({dtype})) or the model"
                )
    if isinstance(inputs, Tensor) and isinstance(targets, Tensor) and inputs.dim() > 0:
        n = inputs.shape[0]
        if n == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        # an empty targets tensor is a placeholder (losses that read only the inputs)
        if targets.dim() > 0 and targets.shape[0] not in (n, 0):
            raise ValueError(
                f"{name} has {n} inputs but {targets.shape[0]} targets (first dimensions differ)"
            )
    return batch[0], batch[1]


class Prepared(NamedTuple):
    """A checked call: the unwrapped module, its alphas and weights, and the loss to use."""

    net: nn.Module
    alphas: TensorList
    weights: TensorList
    loss_fn: LossFn


def prepare(model: nn.Module, loss_fn: LossFn | None = None, **batches: Any) -> Prepared:
    """Check a supernet, its loss and batches once (the set-up of every estimator, product and
    dense reference): :func:`split_parameters`, then each batch, by name and in order, with
    :func:`check_batch` against the alphas' device and the weights' dtype, then
    :func:`resolve_loss`. Returns a :class:`Prepared`."""
    alphas, weights = split_parameters(model)
    device, dtype = alphas[0].device, weights[0].dtype
    for name, batch in batches.items():
        check_batch(batch, name, device, dtype)
    return Prepared(unwrap_model(model), alphas, weights, resolve_loss(loss_fn))


def evaluate_loss(loss_fn: LossFn, net: nn.Module, batch: Batch, what: str = "loss") -> Tensor:
    """``loss_fn(net, *batch)`` checked to be a scalar that depends on a parameter (0-d)."""
    with randomness.evaluation(batch):  # common random numbers within one estimate
        loss = loss_fn(net, batch[0], batch[1])
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if not loss.requires_grad:
        raise ValueError(f"the {what} does not depend on any parameter that requires grad")
    return loss.reshape(())


def check_finite(loss: Tensor, what: str) -> None:
    """:class:`NonFiniteLossError` when ``loss`` is nan or inf."""
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteLossError(f"the {what} is {loss.item()}")


@contextlib.contextmanager
def preserve_state(
    model: nn.Module, *, parameters: bool = True, buffers: bool = True
) -> Iterator[Callable[[], None]]:
    """Snapshot parameters and buffers; restore them bit-exactly on exit, also on exception.

    Yields a ``restore()`` function that puts the snapshot back early (and may be called again).
    Tensors that are bit-identical to the snapshot are not written, so their autograd version
    counters do not change.
    """
    net = unwrap_model(model)
    saved: list[tuple[Tensor, Tensor]] = []
    if parameters:
        saved += [(p, p.detach().clone()) for p in net.parameters()]
    if buffers:
        saved += [(b, b.detach().clone()) for b in net.buffers()]

    def restore() -> None:
        with torch.no_grad():
            for t, s in saved:
                if not bits_equal(t.detach(), s):
                    t.copy_(s)

    try:
        yield restore
    finally:
        restore()
