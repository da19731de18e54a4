"""``Architect`` for chenxin061/pdarts, which has none: it replaces the inline alpha update
of train_search.py.

Upstream P-DARTS updates the alphas inside ``train()`` with a first-order step: backward of the
search-batch loss through the ``nn.DataParallel`` model,
``clip_grad_norm_(model.module.arch_parameters(), args.grad_clip)``, then Adam. With this class
the six lines become::

    architect.step(input, target, input_search, target_search, lr, optimizer, unrolled=False)

and ``architect = Architect(model, args)`` is created at every stage, right after the stage's
network and optimizers (P-DARTS rebuilds them per stage; an Architect of an earlier stage is
refused at its next step). The hypergradient is clipped to ``args.grad_clip`` before the Adam
step, as upstream clips its gradient. P-DARTS registers the alphas as ``nn.Parameter`` (so they
are in ``model.parameters()``); they are excluded from the weights by identity. Its dropout after
skip-connect stays active: every forward draws a new mask.
"""

from __future__ import annotations

from ._upstream import UpstreamArchitect

__all__ = ["Architect"]


class Architect(UpstreamArchitect):
    """P-DARTS: the upstream DARTS interface plus clipping of the alpha gradient to
    ``args.grad_clip``."""

    flavor = "P-DARTS"
    clips_alpha_gradient = True
