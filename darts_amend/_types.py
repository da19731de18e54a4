"""Type aliases shared by the core modules (one place, imported, never re-defined)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor, nn

__all__ = ["TensorList", "Batch", "LossFn", "Matvec", "Mode", "MODES"]

#: A list of tensors aligned with a list of parameters (weights or alphas).
TensorList = list[Tensor]
#: One batch: ``(inputs, targets)``.
Batch = tuple[Any, Any]
#: ``loss_fn(model, inputs, targets) -> scalar tensor``.
LossFn = Callable[[nn.Module, Any, Any], Tensor]
#: A matrix-vector product on tensor lists, ``u -> M u``.
Matvec = Callable[[TensorList], TensorList]
#: How second-order products are computed.
Mode = Literal["exact", "finite_difference", "forward_difference"]
#: The valid values of :data:`Mode`.
MODES: tuple[str, ...] = ("exact", "finite_difference", "forward_difference")
