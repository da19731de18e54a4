"""Check a new hypergradient estimator against the exact answer (CPU, a few seconds).

A methods researcher's estimator, written from the library's Hessian-vector products: the
implicit-function gradient g = g1 - B H^-1 v with H^-1 v by a few steps of Richardson iteration.
``darts_amend.testing`` runs it on four toy bilevel problems whose exact hypergradient is known
and reports, entry by entry, where it is off. A copy with a deliberate bug (the sign of the
second term) shows what a failure looks like.

    python examples/check_estimator.py
    python examples/check_estimator.py --steps 5     # too few steps: see which problems fail
"""

from __future__ import annotations

import argparse

import torch

from darts_amend import hessian_vector_product, mixed_vector_product, split_parameters
from darts_amend.testing import all_problems, assert_hypergradient_close


def _top_eigenvalue(model, batch, start, iterations: int = 50) -> float:
    """lambda_max(H) by power iteration on Hessian-vector products (H positive definite)."""
    u, lam = [t.clone() for t in start], 0.0
    for _ in range(iterations):
        hu = hessian_vector_product(model, batch, u)
        norm = float(torch.sqrt(sum((t * t).sum() for t in hu)))
        lam, u = norm / float(torch.sqrt(sum((t * t).sum() for t in u))), [t / norm for t in hu]
    return 1.05 * lam  # a little margin: power iteration approaches lambda_max from below


def richardson_implicit(model, train_batch, valid_batch, *, steps: int = 500, sign: float = -1.0):
    """g = g1 + sign * B x with x ~ H^-1 v from x <- x + gamma (v - H x); sign = -1 is correct."""
    alphas, weights = split_parameters(model)
    loss = model._loss(*valid_batch)
    grads = torch.autograd.grad(loss, alphas + weights)
    g1, v = list(grads[: len(alphas)]), list(grads[len(alphas) :])
    gamma = 1.0 / _top_eigenvalue(model, train_batch, v)  # a safe step: 1 / lambda_max(H)
    x = [torch.zeros_like(t) for t in v]
    for _ in range(steps):
        hx = hessian_vector_product(model, train_batch, x)
        x = [xi + gamma * (vi - hi) for xi, vi, hi in zip(x, v, hx, strict=True)]
    bx = mixed_vector_product(model, train_batch, x)
    return [a + sign * b for a, b in zip(g1, bx, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="Richardson steps (default 500)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors

    failures = 0
    for problem in all_problems():  # darts_1d, ridge, softmax_mixture, angle_counterexample
        try:
            assert_hypergradient_close(
                richardson_implicit, problem, rtol=1e-6, atol=1e-9, options={"steps": args.steps}
            )
            print(f"PASS  {problem.name:<22} {problem.description}")
        except AssertionError as err:
            failures += 1
            print(f"FAIL  {problem.name}\n{err}\n")

    print("\nThe same estimator with the sign of B H^-1 v flipped:")
    try:
        assert_hypergradient_close(richardson_implicit, "ridge", options={"sign": +1.0})
    except AssertionError as err:
        print(err)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
