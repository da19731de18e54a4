"""darts-amend: Amended-DARTS hypergradient estimation for PyTorch.

Public API (no side effects at import time)::

    from darts_amend import AmendedArchitect
    from darts_amend import first_order, unrolled, amended, implicit_cg, implicit_neumann
"""

from __future__ import annotations

from .architect import AmendedArchitect, StepInfo
from .estimators import (
    ESTIMATORS,
    Hypergradient,
    amended,
    first_order,
    get_estimator,
    implicit_cg,
    implicit_neumann,
    unrolled,
)
from .hvp import (
    NonFiniteLossError,
    hessian_matvec,
    hessian_vector_product,
    mixed_vector_product,
    preserve_state,
    resolve_loss,
    split_parameters,
)

__version__ = "0.1.0"

__all__ = [
    "AmendedArchitect",
    "StepInfo",
    "ESTIMATORS",
    "Hypergradient",
    "amended",
    "first_order",
    "get_estimator",
    "implicit_cg",
    "implicit_neumann",
    "unrolled",
    "NonFiniteLossError",
    "__version__",
    "hessian_matvec",
    "hessian_vector_product",
    "mixed_vector_product",
    "preserve_state",
    "resolve_loss",
    "split_parameters",
]
