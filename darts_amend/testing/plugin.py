"""pytest plugin: the toy bilevel problems of :mod:`darts_amend.testing` as fixtures.

Registered through the ``pytest11`` entry point ``darts_amend.testing.plugin``, so it loads by
itself wherever darts-amend is installed; elsewhere add ``-p darts_amend.testing.plugin`` (or
``pytest_plugins = ["darts_amend.testing.plugin"]`` in your root conftest.py). Disable with
``-p no:darts_amend.testing.plugin``. Fixtures (function scope, a fresh problem each time)::

    bilevel_problem               parametrized over every problem in PROBLEMS (ids: the names)
    darts_1d_problem  ridge_problem  softmax_mixture_problem  angle_counterexample_problem

    def test_my_estimator(bilevel_problem):
        assert_hypergradient_close(my_estimator, bilevel_problem, rtol=1e-6, atol=1e-9)

This is the only module of darts-amend that imports pytest.
"""

from __future__ import annotations

import pytest

from darts_amend.testing import PROBLEMS, BilevelProblem, make_problem

__all__ = [
    "angle_counterexample_problem",
    "bilevel_problem",
    "darts_1d_problem",
    "ridge_problem",
    "softmax_mixture_problem",
]


@pytest.fixture(params=list(PROBLEMS))
def bilevel_problem(request: pytest.FixtureRequest) -> BilevelProblem:
    """Every toy problem in turn."""
    return make_problem(request.param)


@pytest.fixture
def darts_1d_problem() -> BilevelProblem:
    """The DARTS paper's 1-D example (:func:`darts_amend.testing.darts_1d`)."""
    return make_problem("darts_1d")


@pytest.fixture
def ridge_problem() -> BilevelProblem:
    """Ridge regression with per-feature log-penalties as alphas (:func:`~.ridge`)."""
    return make_problem("ridge")


@pytest.fixture
def softmax_mixture_problem() -> BilevelProblem:
    """The two-op softmax-mixture supernet, Newton-solved (:func:`~.softmax_mixture`)."""
    return make_problem("softmax_mixture")


@pytest.fixture
def angle_counterexample_problem() -> BilevelProblem:
    """The docs/math.md counterexample to the angle claim (:func:`~.angle_counterexample`)."""
    return make_problem("angle_counterexample")
