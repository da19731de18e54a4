"""Check a hypergradient estimator against the exact answer on toy bilevel problems.

Public testing kit (no pytest needed; the pytest fixtures live in
:mod:`darts_amend.testing.plugin`)::

    from darts_amend.testing import all_problems, assert_hypergradient_close

    def my_estimator(model, train_batch, valid_batch, *, loss_fn=None):
        ...                          # returns grads aligned with model.arch_parameters()

    for problem in all_problems():   # darts_1d, ridge, softmax_mixture, angle_counterexample
        assert_hypergradient_close(my_estimator, problem, rtol=1e-6, atol=1e-9)

Problems (:data:`PROBLEMS`) sit at their inner optimum ``w*(alpha)`` and carry the exact
``g = g1 - B H^-1 v`` (closed form, or the dense reference after Newton). For your own small
model: :func:`solve_inner_` (Newton on the weights), then :func:`exact_hypergradient`;
:func:`dense_derivatives` gives the gradient and full dense Hessian of any loss. See
docs/testing.md.
"""

from __future__ import annotations

from .assertions import Estimator, assert_hypergradient_close
from .dense import (
    MAX_DENSE_WEIGHTS,
    DenseDerivatives,
    dense_derivatives,
    exact_hypergradient,
    solve_inner_,
)
from .models import DartsToy, MixedMLP, QuadraticBilevel, RidgeRegression
from .problems import (
    PROBLEMS,
    BilevelProblem,
    all_problems,
    angle_counterexample,
    darts_1d,
    make_problem,
    ridge,
    softmax_mixture,
)

__all__ = [
    "MAX_DENSE_WEIGHTS",
    "PROBLEMS",
    "BilevelProblem",
    "DartsToy",
    "DenseDerivatives",
    "Estimator",
    "MixedMLP",
    "QuadraticBilevel",
    "RidgeRegression",
    "all_problems",
    "angle_counterexample",
    "assert_hypergradient_close",
    "darts_1d",
    "dense_derivatives",
    "exact_hypergradient",
    "make_problem",
    "ridge",
    "softmax_mixture",
    "solve_inner_",
]
