"""Drop-in ``Architect`` classes for existing DARTS-family checkouts, and ``patch-repo``.

* :mod:`darts_amend.adapters.darts`    -- quark0/darts (``cnn/architect.py``)
* :mod:`darts_amend.adapters.pc_darts` -- yuhuixu1993/PC-DARTS (same architect interface, four
  arch tensors)
* :mod:`darts_amend.adapters.p_darts`  -- chenxin061/pdarts (no upstream architect: replaces its
  inline first-order alpha update, clipping the alpha gradient as it did)
* :mod:`darts_amend.adapters.drnas`    -- xiangning-chen/DrNAS (Dirichlet sampling; weight decay
  from ``reg_type`` / ``reg_scale``; weights re-read after prune / widen)
* :mod:`darts_amend.adapters.beta_darts` -- Sunshine-Ye/Beta-DARTS (``step(..., epoch, unrolled)``
  and the beta-decay regulariser)
* :mod:`darts_amend.adapters.darts_pt` -- ruocwang/darts-pt (optional ``eta`` /
  ``network_optimizer``, keyword calls of the projection phase)
* SmoothDARTS, DARTS- and RobustDARTS ship DARTS' architect interface: use
  :mod:`darts_amend.adapters.darts`
* :mod:`darts_amend.adapters.flavors` -- the flavour table of ``darts-amend patch-repo``: each
  fork's layout and markers, the drop-in text, the ``--amend_*`` flags block
* :mod:`darts_amend.adapters.patch_repo` -- the checks and edits behind ``darts-amend patch-repo``
  (the sub-command itself, which prints, is :mod:`darts_amend.cli.patch_repo`)

Every ``Architect`` keeps the upstream constructor ``Architect(model, args)`` and
``step(input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled)``,
and reads ``args.amend_eta`` / ``args.amend_estimator`` / ``args.amend_mode`` when present (see
docs/integrations.md). Nothing is imported eagerly: ``import darts_amend.adapters`` is cheap.
"""

from __future__ import annotations

__all__ = [
    "beta_darts",
    "darts",
    "darts_pt",
    "drnas",
    "flavors",
    "p_darts",
    "patch_repo",
    "pc_darts",
]
