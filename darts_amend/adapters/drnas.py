"""Drop-in ``Architect`` for xiangning-chen/DrNAS (``architect.py`` at the repository root).

DrNAS' loops (``DARTS-space/train_search.py``, ``201-space/train_search.py`` and
``train_search_progressive.py``) call::

    architect = Architect(model, args)
    architect.step(input, target, input_search, target_search, lr, optimizer,
                   unrolled=args.unrolled)
    architect.optimizer.zero_grad()

and this class accepts exactly that. What differs from the DARTS adapter:

* the alphas' Adam weight decay comes from ``args.reg_type`` / ``args.reg_scale``, as DrNAS'
  architect sets it: ``l2`` -> weight decay ``reg_scale``; ``kl`` -> no weight decay (the KL term
  to a uniform Dirichlet is part of ``model._loss``, so it enters every pass of the estimator: it
  depends on alpha only, adds ``reg_scale * grad_alpha KL`` to g1 and nothing to H or B).
  ``args.arch_weight_decay``, which the 201-space parser also defines, is ignored, as DrNAS'
  architect ignores it;
* the weights are re-read at every step: DrNAS prunes (``model.pruning``, a mask on the same
  alpha tensors) and widens (``model.wider``, new op modules, i.e. new weight tensors, and a new
  weight optimizer) between stages, and a list stored at construction would be stale;
* every forward draws a new Dirichlet sample of the op weights; common random numbers (on by
  detection) make all passes of one estimate use one sample (:mod:`darts_amend.randomness`).

Amended (default), ``--amend_estimator unrolled --unrolled`` (second-order, xi = ``lr``) and
``--amend_eta 0`` (first-order, DrNAS' default) are all usable.
"""

from __future__ import annotations

from typing import Any

from ..options import check_number
from ._upstream import UpstreamArchitect, required_arg

__all__ = ["Architect"]

REG_TYPES = ("l2", "kl")


class Architect(UpstreamArchitect):
    """DrNAS interface: ``Architect(model, args)`` with ``args.reg_type`` / ``args.reg_scale``;
    ``step(..., eta, network_optimizer, unrolled)``."""

    flavor = "DrNAS"

    def _arch_weight_decay(self, args: Any) -> float:
        reg_type = required_arg(args, "reg_type")
        if reg_type not in REG_TYPES:
            raise ValueError(f"invalid args.reg_type {reg_type!r}; DrNAS defines 'l2' and 'kl'")
        scale = check_number("args.reg_scale", required_arg(args, "reg_scale"))
        # l2: Adam's weight decay; kl: the regulariser is inside model._loss
        return scale if reg_type == "l2" else 0.0
