"""Drop-in ``Architect`` for quark0/darts (``cnn/architect.py``).

Upstream's loop (``cnn/train_search.py``) calls::

    architect = Architect(model, args)
    architect.step(input, target, input_search, target_search, lr, optimizer,
                   unrolled=args.unrolled)

and this class accepts exactly that. Without ``--unrolled`` the default estimator is
Amended-DARTS with ``args.amend_eta`` (0.1 when absent); ``--amend_estimator unrolled
--unrolled`` is second-order DARTS (xi = the weight lr ``lr``, momentum buffers of
``optimizer``, ``args.momentum`` and ``args.weight_decay``), computed without ``model.new()`` and
leaving weights and BatchNorm statistics untouched. The supernet's alphas may be plain leaf
tensors (upstream) or ``nn.Parameter``; see :mod:`darts_amend.adapters._upstream`.
"""

from __future__ import annotations

from ._upstream import UpstreamArchitect

__all__ = ["Architect"]


class Architect(UpstreamArchitect):
    """quark0/darts interface: ``Architect(model, args)``, ``step(..., eta, network_optimizer,
    unrolled)``."""

    flavor = "DARTS"
