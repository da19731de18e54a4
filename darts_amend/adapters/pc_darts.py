"""Drop-in ``Architect`` for yuhuixu1993/PC-DARTS (``architect.py``).

PC-DARTS ships DARTS' architect unchanged and its loop calls it the same way (from epoch 15 on)::

    if epoch >= 15:
        architect.step(input, target, input_search, target_search, lr, optimizer,
                       unrolled=args.unrolled)

The difference is the supernet: ``arch_parameters()`` returns four tensors (``alphas_normal``,
``alphas_reduce`` and the edge-normalisation ``betas_normal``, ``betas_reduce``), all of which
receive the hypergradient and the Adam step; the partial-channel forward needs nothing special.
"""

from __future__ import annotations

from ._upstream import UpstreamArchitect

__all__ = ["Architect"]


class Architect(UpstreamArchitect):
    """PC-DARTS interface (identical to DARTS'); alphas and betas are all architecture tensors."""

    flavor = "PC-DARTS"
