"""AmendedArchitect: the alpha optimizer of a DARTS search, as a thin stateful wrapper.

It owns an Adam optimizer over ``model.arch_parameters()`` (the paper's lr 3e-4, betas
(0.5, 0.999), weight decay 1e-3 by default) and an estimator name with its options. ``step``
computes the hypergradient with a pure estimator function, averages it over ranks when
torch.distributed is initialised, writes it into ``alpha.grad`` and steps Adam. A non-finite
loss or hypergradient leaves the alphas (and the Adam state) untouched, warns, and the returned
:class:`StepInfo` says so.

Typical loop (the weight step follows the alpha step, as in DARTS)::

    architect = AmendedArchitect(model)                  # amended, eta = 0.1
    for (x, y), (xv, yv) in zip(train_loader, valid_loader):
        info = architect.step((x, y), (xv, yv))
        w_optimizer.zero_grad()
        model._loss(x, y).backward()
        w_optimizer.step()
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._types import Batch, LossFn
from .estimators import Hypergradient, get_estimator, write_grads_
from .model import NonFiniteLossError, resolve_loss, split_parameters, unwrap_model
from .options import check_number, validate_options
from .tensorlist import list_norm

__all__ = ["AmendedArchitect", "StepInfo"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1


@dataclass(frozen=True)
class StepInfo:
    """What one architect step did.

    ``val_loss``: validation loss at which g1 was taken (nan if it could not be evaluated);
    ``g1_norm`` / ``g2_norm``: norms of grad_alpha L_val and of the second (amending) term
    (0 for ``first_order``); ``cosine``: cos(g1, g2), nan when undefined; ``grad_norm``: norm of
    the applied hypergradient (after averaging over ranks); ``finite``: False when the step was
    skipped because a loss or the hypergradient was not finite (alphas untouched); ``solver``:
    the estimator's :attr:`Hypergradient.info <darts_amend.Hypergradient>` (this rank's;
    ``implicit_cg``: ``cg_iterations``, ``cg_stop``), empty otherwise.
    """

    val_loss: float
    g1_norm: float
    g2_norm: float
    cosine: float
    grad_norm: float
    finite: bool
    solver: dict[str, Any] = field(default_factory=dict)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class AmendedArchitect:
    """Optimizer of the architecture parameters with a pluggable hypergradient estimator.

    Args:
        model: a supernet with ``arch_parameters()`` (DataParallel / DDP wrappers are unwrapped;
            the hypergradient is computed on the underlying module).
        estimator: ``"amended"`` (default), ``"first_order"``, ``"unrolled"``, ``"implicit_cg"`` or
            ``"implicit_neumann"``.
        lr, betas, weight_decay: the Adam optimizer of the alphas. (``unrolled`` has an option
            of the same name, the *weight* optimizer's decay: pass it per step,
            ``step(..., xi=lr_w, weight_decay=wd_w)``.)
        loss_fn: ``loss_fn(model, inputs, targets)``; default ``model._loss`` or cross-entropy.
        eta: the amending coefficient (``amended`` only; 0.1 when not given). Passing it with
            another estimator is an error.
        **estimator_options: options of the estimator (e.g. ``mode="finite_difference"``,
            ``iterations=20``); ``step`` accepts per-step overrides (e.g. ``xi=lr`` for
            ``unrolled``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        estimator: str = "amended",
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 1e-3,
        loss_fn: LossFn | None = None,
        eta: float | None = None,
        **estimator_options: Any,
    ) -> None:
        alphas, _ = split_parameters(model)
        self._fn = get_estimator(estimator)
        lr = check_number("lr", lr, strict=True)
        weight_decay = check_number("weight_decay", weight_decay)
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"invalid betas: {betas!r} (two numbers in [0, 1))")
        options = dict(estimator_options)
        if "eta" in options:
            raise TypeError("pass eta as the keyword argument eta=, not inside estimator options")
        if estimator == "amended":
            options["eta"] = 0.1 if eta is None else eta
        elif eta is not None:
            raise ValueError(f"eta={eta!r} is only used by estimator 'amended', not {estimator!r}")
        self._options = validate_options(estimator, options)
        self.model = model
        self.estimator = estimator
        self.loss_fn = resolve_loss(loss_fn)
        self._alphas = alphas
        self.optimizer = torch.optim.Adam(
            alphas, lr=lr, betas=tuple(betas), weight_decay=weight_decay
        )
        #: The Hypergradient of the last step (None before the first, or after a skipped step).
        self.last_hypergradient: Hypergradient | None = None

    # ------------------------------------------------------------------ properties
    @property
    def alphas(self) -> list[Tensor]:
        """The architecture parameters this architect optimizes."""
        return list(self._alphas)

    @property
    def options(self) -> dict[str, Any]:
        """The estimator options (a copy)."""
        return dict(self._options)

    @property
    def eta(self) -> float | None:
        """The amending coefficient (``None`` for estimators other than ``amended``)."""
        return self._options.get("eta")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options.items() if k != "momentum_buffers")
        group = self.optimizer.param_groups[0]
        return (
            f"AmendedArchitect(estimator={self.estimator!r}{', ' + opts if opts else ''}, "
            f"lr={group['lr']}, betas={group['betas']}, weight_decay={group['weight_decay']})"
        )

    # ------------------------------------------------------------------ stepping
    def hypergradient(
        self, train_batch: Batch, valid_batch: Batch, **per_step_options: Any
    ) -> Hypergradient:
        """The estimator's hypergradient for these batches (no all-reduce, nothing written)."""
        options = {**self._options, **validate_options(self.estimator, per_step_options)}
        return self._fn(self.model, train_batch, valid_batch, loss_fn=self.loss_fn, **options)

    def step(self, train_batch: Batch, valid_batch: Batch, **per_step_options: Any) -> StepInfo:
        """One alpha update; returns :class:`StepInfo`.

        ``per_step_options`` override the estimator options for this step only (``unrolled``
        needs ``xi``, the current weight learning rate, and may take ``momentum_buffers``).
        """
        self._check_alphas()
        reason = "hypergradient"
        try:
            result: Hypergradient | None = self.hypergradient(
                train_batch, valid_batch, **per_step_options
            )
            grads = result.grads
        except NonFiniteLossError as exc:
            # other ranks still take part in the all-reduce below; nan makes them skip too
            result, reason = None, str(exc).replace("the ", "", 1)
            grads = tuple(torch.full_like(a, math.nan) for a in self._alphas)
        grads = self._all_reduce(grads)
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if result is not None and not bool(torch.isfinite(result.val_loss)):
            finite, reason = False, f"validation loss {float(result.val_loss)}"
        info = self._info(result, grads, finite)
        if not finite:
            warnings.warn(
                f"AmendedArchitect: non-finite {reason}; alphas left unchanged this step",
                RuntimeWarning,
                stacklevel=2,
            )
            self.last_hypergradient = None
            return info
        write_grads_(self._alphas, grads)
        self.optimizer.step()
        self.last_hypergradient = result
        return info

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``alpha.grad`` (as ``torch.optim.Optimizer.zero_grad``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _check_alphas(self) -> None:
        current = list(unwrap_model(self.model).arch_parameters())
        if len(current) != len(self._alphas) or any(
            a is not b for a, b in zip(current, self._alphas, strict=True)
        ):
            raise ValueError(
                "model.arch_parameters() are no longer the tensors this architect was "
                "created with (was the network rebuilt?); create a new AmendedArchitect"
            )

    @staticmethod
    def _all_reduce(grads: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Average the hypergradient over ranks (identity without torch.distributed)."""
        if not _distributed():
            return tuple(grads)
        flat = torch.cat([g.detach().reshape(-1).to(grads[0].dtype) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= torch.distributed.get_world_size()
        out, i = [], 0
        for g in grads:
            out.append(flat[i : i + g.numel()].view_as(g).to(g.dtype))
            i += g.numel()
        return tuple(out)

    @staticmethod
    def _info(result: Hypergradient | None, grads: Sequence[Tensor], finite: bool) -> StepInfo:
        if result is None:
            nan = math.nan
            return StepInfo(
                val_loss=nan, g1_norm=nan, g2_norm=nan, cosine=nan, grad_norm=nan, finite=False
            )
        has_g2 = "g2" in result.terms
        return StepInfo(
            val_loss=float(result.val_loss),
            g1_norm=result.norm("g1"),
            g2_norm=result.norm("g2") if has_g2 else 0.0,
            cosine=result.cosine("g1", "g2"),  # nan without g2
            grad_norm=float(list_norm(grads)),  # the applied (all-reduced) hypergradient
            finite=finite,
            solver=dict(result.info),
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: Adam state, alphas, estimator name and options."""
        return {
            "format": _STATE_FORMAT,
            "estimator": self.estimator,
            "options": dict(self._options),
            "alphas": [a.detach().clone() for a in self._alphas],
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ValueError (nothing changed) when it does not fit."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"format", "estimator", "options", "alphas", "optimizer"} - set(state_dict)
        if missing:
            raise ValueError(
                f"not an AmendedArchitect state_dict: missing {', '.join(sorted(missing))}"
            )
        if state_dict["format"] != _STATE_FORMAT:
            raise ValueError(f"unsupported state_dict format {state_dict['format']!r}")
        if state_dict["estimator"] != self.estimator:
            raise ValueError(
                f"state_dict is for estimator {state_dict['estimator']!r}, "
                f"this architect uses {self.estimator!r}"
            )
        saved = state_dict["alphas"]
        if len(saved) != len(self._alphas):
            raise ValueError(f"state_dict has {len(saved)} alphas, the model {len(self._alphas)}")
        for i, (s, a) in enumerate(zip(saved, self._alphas, strict=True)):
            if tuple(s.shape) != tuple(a.shape):
                raise ValueError(
                    f"state_dict alpha {i} has shape {tuple(s.shape)}, the model {tuple(a.shape)}"
                )
        options = validate_options(self.estimator, dict(state_dict["options"]))
        self.optimizer.load_state_dict(state_dict["optimizer"])  # validates before changing
        with torch.no_grad():
            for s, a in zip(saved, self._alphas, strict=True):
                a.copy_(s)
        logger.debug(
            "AmendedArchitect: estimator options restored from state_dict: %s", sorted(options)
        )
        self._options = options
