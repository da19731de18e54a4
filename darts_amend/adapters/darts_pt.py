"""Drop-in ``Architect`` for ruocwang/darts-pt (``nasbench201/architect_ig.py``).

DARTS-PT's architect takes ``step(input_train, target_train, input_valid, target_valid, *args,
**kwargs)`` and its scripts call it three ways::

    architect.step(input, target, input_search, target_search, lr, optimizer)        # sota search
    architect.step(input, target, input_search, target_search,
                   eta=lr, network_optimizer=optimizer)                              # NB201 search
    architect.step(input, target, input_search, target_search, return_logits=True)  # projection

and passes the return value to ``model.step(..., shared=shared)``, which asserts it is ``None``.
This class accepts exactly these (``eta`` / ``network_optimizer`` optional, ``return_logits``
accepted and, as in the fork, without effect on the update) and returns ``None``; the core
``StepInfo`` is kept in ``last_info``. Unknown keywords are a TypeError.

``args.method`` as the fork reads it: ``darts``, ``darts-proj``, ``sdarts``, ``sdarts-proj``
update the alphas (with our estimator: amended by default, ``--amend_eta 0`` is the fork's
first-order update); ``blank`` / ``blank-proj`` never update them (a step does nothing); other
values are refused (the fork exits). ``reset_arch_parameters()`` puts the alphas back to their
values at construction, as the fork's does. Second-order (``--amend_estimator unrolled``) needs
``eta``, which the projection phase does not pass: such a call is refused with a clear error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._upstream import UpstreamArchitect

__all__ = ["Architect", "METHODS"]

#: args.method values of DARTS-PT's architect: whether the alphas are updated.
METHODS = {
    "darts": True,
    "darts-proj": True,
    "sdarts": True,
    "sdarts-proj": True,
    "blank": False,
    "blank-proj": False,
}


class Architect(UpstreamArchitect):
    """DARTS-PT interface: optional ``eta`` / ``network_optimizer``, keyword calls, returns None."""

    flavor = "DARTS-PT"

    def __init__(self, model: Any, args: Any) -> None:
        method = getattr(args, "method", None)
        if method is not None and method not in METHODS:
            raise ValueError(
                f"invalid args.method {method!r} for DARTS-PT's architect; expected one of "
                f"{', '.join(METHODS)} (second-order: --amend_estimator unrolled --unrolled)"
            )
        self.updates_alphas = True if method is None else METHODS[method]
        super().__init__(model, args)
        self._init_arch_parameters = [a.detach().clone() for a in self._alphas]

    def reset_arch_parameters(self) -> None:
        """Alphas back to their values when the architect was created (the fork's method)."""
        with torch.no_grad():
            for a, a0 in zip(self._alphas, self._init_arch_parameters, strict=True):
                a.copy_(a0)

    def step(  # type: ignore[override]
        self,
        input_train: Tensor,
        target_train: Tensor,
        input_valid: Tensor,
        target_valid: Tensor,
        eta: float | None = None,
        network_optimizer: torch.optim.Optimizer | None = None,
        unrolled: bool | None = None,
        *,
        return_logits: bool = False,
    ) -> None:
        """One alpha update (none for the ``blank`` methods); returns None, the fork's
        ``shared``."""
        if not isinstance(return_logits, bool):
            raise TypeError(f"return_logits must be a bool, got {type(return_logits).__name__}")
        if not self.updates_alphas:
            return None
        if self.estimator == "unrolled" and eta is None:
            raise ValueError(
                "amend_estimator 'unrolled' (second-order DARTS) needs eta, the weight learning "
                "rate, and this call passes none (DARTS-PT's projection phase): use amended or "
                "first-order there"
            )
        super().step(
            input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled
        )
        return None
