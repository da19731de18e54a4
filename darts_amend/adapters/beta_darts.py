"""Drop-in ``Architect`` for Sunshine-Ye/Beta-DARTS (``optimizers/darts/architect.py``).

beta-DARTS adds the beta-decay regulariser to the upper-level loss of its first-order step::

    L_beta(alpha) = L_val(w, alpha) + lambda(epoch) * R(alpha),
    R(A) = mean over the rows (edges) of logsumexp(A_row),   lambda(epoch) = 50 * epoch / 100

and its architect's step therefore takes the epoch:
``step(input_train, target_train, input_valid, target_valid, eta, network_optimizer, epoch,
unrolled)``. This class accepts the calls the fork's scripts make:

* ``nasbench201/train_search.py``: ``step(..., lr, optimizer, epoch, unrolled=args.unrolled)``;
* ``sota/cnn/train_search.py`` (DARTS space): ``step(..., lr, optimizer, unrolled=args.unrolled)``
  -- no epoch, so the regulariser cannot be scheduled: the loop must pass it (add ``epoch`` to
  ``train()``'s arguments and to this call) or call ``architect.set_epoch(epoch)`` once per
  epoch; without either the step is refused (never beta-DARTS minus its method);
* ``optimizers/darts/train_search.py``: ``step(..., lr, optimizer, args.unrolled)`` (a bool in the
  epoch position is the unrolled flag; the epoch then comes from ``set_epoch``).

How the terms combine: the regulariser is added to the loss of every pass of the estimator. It
depends on alpha only, so grad_w, H and B are unchanged and the hypergradient is

    g = g1 + lambda(epoch) * grad_alpha R + g2,   grad_alpha R(A) = softmax(A) / rows(A)

(``g2`` the amending term, or second-order DARTS' term with ``--unrolled``; the fork adds the
regulariser to its first-order step only, here it is part of the upper-level objective whatever
the estimator). Then Adam with ``args.arch_weight_decay``, as the fork. With several arch tensors
(the DARTS space: normal and reduce) R is summed over them; with NAS-Bench-201's single tensor it
is the fork's term. The reported ``val_loss`` and ``g1`` include the regulariser, as the fork's
loss does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..model import resolve_loss
from ._upstream import UpstreamArchitect

__all__ = ["Architect", "beta_decay", "beta_lambda"]


def beta_lambda(epoch: float) -> float:
    """The fork's schedule: ``lambda(epoch) = 50 * epoch / 100``."""
    return 50 * epoch / 100


def beta_decay(alphas: list[Tensor]) -> Tensor:
    """``R = sum over arch tensors of mean over rows of logsumexp(row)`` (the fork's mlc_loss)."""
    return sum(torch.logsumexp(a, dim=-1).mean() for a in alphas)


class Architect(UpstreamArchitect):
    """beta-DARTS interface: ``step(..., eta, network_optimizer, epoch, unrolled)`` plus the
    beta-decay regulariser on the alphas."""

    flavor = "beta-DARTS"

    def __init__(self, model: Any, args: Any) -> None:
        self._epoch: float | None = None
        self._lambda = 0.0
        super().__init__(model, args)

    def _loss_fn(self) -> Any:
        base = resolve_loss(None)

        def loss(model: Any, inputs: Any, targets: Any) -> Tensor:
            value = base(model, inputs, targets)
            if self._lambda == 0.0:
                return value
            # + lambda(epoch) * R(alpha): alpha-only, so H and B are unchanged
            return value + self._lambda * beta_decay(list(self._alphas))

        return loss

    def set_epoch(self, epoch: float) -> None:
        """The epoch for steps whose call passes none (the DARTS-space script)."""
        self._epoch = self._valid_epoch(epoch)

    @staticmethod
    def _valid_epoch(epoch: Any) -> float:
        ok = not isinstance(epoch, bool) and isinstance(epoch, (int, float))
        if not ok or not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"invalid epoch: {epoch!r} (must be a number >= 0)")
        return float(epoch)

    def step(  # type: ignore[override]
        self,
        input_train: Tensor,
        target_train: Tensor,
        input_valid: Tensor,
        target_valid: Tensor,
        eta: float,
        network_optimizer: torch.optim.Optimizer | None,
        epoch: float | bool | None = None,
        unrolled: bool | None = None,
    ) -> Any:
        """One alpha update; ``epoch`` schedules the beta-decay weight (module docstring)."""
        if isinstance(epoch, bool):  # step(..., optimizer, args.unrolled): the flag, not an epoch
            if unrolled is not None:
                raise TypeError("step() got a bool epoch and unrolled: pass epoch as a number")
            epoch, unrolled = None, epoch
        if epoch is None:
            if self._epoch is None:
                raise ValueError(
                    "beta-DARTS' beta-decay weight grows with the epoch and this call passes none: "
                    "call architect.step(..., network_optimizer, epoch, unrolled=...) as the "
                    "fork's NAS-Bench-201 script does, or architect.set_epoch(epoch) once per epoch"
                )
            epoch = self._epoch
        self._lambda = beta_lambda(self._valid_epoch(epoch))
        return super().step(
            input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled
        )
