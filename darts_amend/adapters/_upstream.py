"""The upstream ``Architect`` interface (quark0/darts, PC-DARTS, P-DARTS) on top of
:class:`AmendedArchitect`.

Upstream's contract, kept exactly::

    architect = Architect(model, args)
    architect.step(input_train, target_train, input_valid, target_valid, eta, network_optimizer,
                   unrolled)

``args`` fields read (as upstream): ``momentum`` and ``weight_decay`` (of the weight SGD, used by
the unrolled step), ``arch_learning_rate`` and ``arch_weight_decay`` (Adam on the alphas, betas
fixed at (0.5, 0.999)). Added, all optional (absent or ``None`` = default):

* ``amend_estimator``: ``amended`` (default), ``first_order``, ``unrolled``, ``implicit_cg``,
  ``implicit_neumann``;
* ``amend_eta``: the amending coefficient of ``amended`` (default 0.1; 0 = first-order DARTS);
* ``amend_mode``: ``exact`` (default), ``finite_difference`` (central, upstream's) or
  ``forward_difference`` (one-sided, one pass fewer) for the Hessian products;
* ``amend_chunks``: accumulate the Hessian products over this many micro-batches (less memory;
  the same numbers only without train-mode BatchNorm, see ``amended``);
* ``amend_second_order_batch``: compute the Hessian products on this many training samples
  (cheaper, a different and noisier estimator);
* ``amend_common_random_numbers``: ``auto`` (default: on when the supernet draws random numbers in
  forward, e.g. DrNAS' Dirichlet sampling), ``on`` or ``off`` (also True / False): every pass of one
  estimate replays the same random numbers (:mod:`darts_amend.randomness`);
* ``amend_<option>`` for any other option of the chosen estimator in
  :data:`darts_amend.options.OPTIONS` (``amend_r``, ``amend_fast_depthwise``,
  ``amend_iterations`` / ``amend_damping`` / ``amend_tol`` for ``implicit_cg``, ``amend_terms`` /
  ``amend_gamma`` for ``implicit_neumann``), checked by the registry; an option the chosen
  estimator does not take is an error, never ignored.

``unrolled`` (the loop's flag) must agree with the estimator: ``unrolled=True`` means
second-order DARTS, which is ``amend_estimator=unrolled``; then ``eta`` is its xi (the weight
learning rate) and the momentum buffers are read from ``network_optimizer.state`` (per weight; a
weight without a buffer contributes no momentum -- upstream drops momentum for every weight in
that case, inside a bare ``except``). Contradictions are errors, raised before anything changes,
so no flag is silently ignored.

Differences from upstream, all deliberate: the hypergradient is computed on the unwrapped module
(DataParallel / DDP) and all-reduced by :class:`AmendedArchitect` under torch.distributed;
weights and BatchNorm running statistics are left bit-exactly as found (upstream's first-order
backward and its finite-difference step move the running statistics, and its ``.data``
perturbation drifts the weights by rounding); ``model.new()`` is never called; nothing is moved
with ``.cuda`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._types import MODES
from ..architect import AmendedArchitect
from ..estimators import ESTIMATORS
from ..model import split_parameters, unwrap_model
from ..options import ESTIMATOR_OPTIONS, OPTIONS, PRODUCT_OPTIONS, check_number

__all__ = ["UpstreamArchitect", "read_amend_options", "required_arg"]

logger = logging.getLogger(__name__)

_ADAM_BETAS = (0.5, 0.999)  # fixed in every upstream architect
# options of the unrolled weight step that the loop and its weight optimizer supply
_FROM_LOOP = ("xi", "momentum", "momentum_buffers", "weight_decay")


def required_arg(args: Any, name: str) -> Any:
    if not hasattr(args, name):
        raise ValueError(
            f"args has no {name!r}: the upstream Architect reads args.{name} (add it to the "
            "train_search.py parser or to the namespace you pass)"
        )
    return getattr(args, name)


def read_amend_options(args: Any) -> tuple[str, dict[str, Any]]:
    """``(estimator, estimator_options)`` from ``args.amend_*``; ValueError for a flag that would do
    nothing."""
    estimator = getattr(args, "amend_estimator", None)
    estimator = "amended" if estimator is None else estimator
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"invalid amend_estimator {estimator!r}; valid names: {', '.join(ESTIMATORS)}"
        )
    options: dict[str, Any] = {}
    eta = getattr(args, "amend_eta", None)
    if estimator == "amended":
        options["eta"] = 0.1 if eta is None else check_number("amend_eta", eta)
    elif eta is not None:
        raise ValueError(
            f"amend_eta={eta!r} is only used by amend_estimator 'amended', not {estimator!r}"
        )
    mode = getattr(args, "amend_mode", None)
    if mode is not None and mode not in MODES:
        raise ValueError(f"invalid amend_mode {mode!r}; expected one of {', '.join(MODES)}")
    # every other estimator option as ``args.amend_<option>`` (checked by the registry); the
    # unrolled weight step's xi / momentum / weight decay come from the loop and its optimizer
    accepted = ESTIMATOR_OPTIONS[estimator]
    for option in OPTIONS:
        if option in _FROM_LOOP or option in ("eta", "common_random_numbers"):
            continue
        flag = f"amend_{option}"
        value = getattr(args, flag, None)
        if value is None:
            continue
        if option in PRODUCT_OPTIONS and estimator == "first_order":
            raise ValueError(
                f"{flag} does nothing for amend_estimator 'first_order' (no Hessian products)"
            )
        if option not in accepted:
            users = [name for name, names in ESTIMATOR_OPTIONS.items() if option in names]
            raise ValueError(
                f"{flag} does nothing for amend_estimator {estimator!r} (it is an option of "
                f"{', '.join(users)})"
            )
        if option in PRODUCT_OPTIONS and estimator == "amended" and options["eta"] == 0.0:
            raise ValueError(
                f"{flag} does nothing with amend_eta=0 (first-order DARTS: no Hessian products)"
            )
        options[option] = OPTIONS[option].check(flag, value)  # the registry's check
    crn = getattr(args, "amend_common_random_numbers", None)
    if crn is not None:
        choices = {"auto": None, "on": True, "off": False, True: True, False: False}
        if not isinstance(crn, (str, bool)) or crn not in choices:
            raise ValueError(
                f"invalid amend_common_random_numbers {crn!r}; expected auto, on or off"
            )
        if choices[crn] is not None:
            options["common_random_numbers"] = choices[crn]
    return estimator, options


class UpstreamArchitect:
    """Shared implementation of the upstream-compatible architects (see the module docstring)."""

    #: Name used in messages.
    flavor: ClassVar[str] = "DARTS"
    #: Clip the alpha hypergradient to ``args.grad_clip`` before the Adam step (as P-DARTS'
    #: inline update does).
    clips_alpha_gradient: ClassVar[bool] = False

    def __init__(self, model: nn.Module, args: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.network_momentum = check_number("args.momentum", required_arg(args, "momentum"))
        self.network_weight_decay = check_number(
            "args.weight_decay", required_arg(args, "weight_decay")
        )
        arch_lr = check_number(
            "args.arch_learning_rate", required_arg(args, "arch_learning_rate"), strict=True
        )
        arch_wd = self._arch_weight_decay(args)
        self.grad_clip: float | None = None
        if self.clips_alpha_gradient:
            self.grad_clip = check_number(
                "args.grad_clip", required_arg(args, "grad_clip"), strict=True
            )
        self.estimator, options = read_amend_options(args)
        self.amend_eta: float | None = options.get("eta")
        self.amend_mode: str | None = options.get("mode")
        if (
            getattr(args, "unrolled", None) is not None
        ):  # DARTS / PC-DARTS parsers define --unrolled
            self._check_unrolled(bool(args.unrolled), where="args.unrolled")
        self._net = unwrap_model(model)
        self._alphas, self._weights = split_parameters(self._net)
        self._architect = AmendedArchitect(
            self._net,
            estimator=self.estimator,
            lr=arch_lr,
            betas=_ADAM_BETAS,
            weight_decay=arch_wd,
            loss_fn=self._loss_fn(),
            **options,
        )
        #: The alpha optimizer (Adam), as upstream's ``architect.optimizer``.
        self.optimizer = self._architect.optimizer
        if self.grad_clip is not None:
            self.optimizer.register_step_pre_hook(self._clip_pre_hook)
        self._known_optimizer: torch.optim.Optimizer | None = None
        #: StepInfo of the last step (losses, term norms, cosine), or None before the first step.
        self.last_info: Any = None
        logger.info(
            "%s architect: estimator=%s %s (Adam lr=%g, wd=%g)",
            self.flavor,
            self.estimator,
            options or "",
            arch_lr,
            arch_wd,
        )

    # ------------------------------------------------------------------------------ fork hooks
    def _arch_weight_decay(self, args: Any) -> float:
        """The Adam weight decay of the alphas (upstream: ``args.arch_weight_decay``)."""
        return check_number("args.arch_weight_decay", required_arg(args, "arch_weight_decay"))

    def _loss_fn(self) -> Any:
        """The loss of every pass (``None``: ``model._loss`` / cross-entropy)."""
        return None

    def _refresh_weights(self) -> None:
        """Re-read the weights: a fork may rebuild ops between stages (DrNAS widens them), which
        leaves a stored list stale. The alphas must stay the same tensors (checked by the core)."""
        self._alphas, self._weights = split_parameters(self._net)

    # ------------------------------------------------------------------------------ validation
    def _check_unrolled(self, unrolled: bool, *, where: str = "unrolled") -> None:
        if unrolled and self.estimator != "unrolled":
            raise ValueError(
                f"{where}=True asks for second-order DARTS, but amend_estimator is "
                f"{self.estimator!r}: drop --unrolled, or pass --amend_estimator unrolled"
            )
        if not unrolled and self.estimator == "unrolled":
            raise ValueError(
                f"amend_estimator 'unrolled' is second-order DARTS and needs {where}=True "
                "(pass --unrolled)"
            )

    def _check_optimizer(self, optimizer: Any) -> None:
        if optimizer is None or optimizer is self._known_optimizer:
            return
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"network_optimizer must be a torch.optim.Optimizer (or None), "
                f"got {type(optimizer).__name__}"
            )
        ours = {id(w) for w in self._weights}
        if not any(id(p) in ours for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "network_optimizer optimizes none of this model's weights: was the Architect "
                "created for an earlier network (P-DARTS rebuilds it at every stage)? "
                "Create Architect(model, args) after building the new network"
            )
        self._known_optimizer = optimizer

    def _momentum_buffers(
        self, optimizer: torch.optim.Optimizer | None
    ) -> list[Tensor | None] | None:
        """The weight optimizer's momentum buffers, aligned with the weights, from its public
        per-parameter state."""
        if optimizer is None or self.network_momentum == 0.0:
            return None
        buffers: list[Tensor | None] = []
        for w in self._weights:
            state = optimizer.state.get(
                w
            )  # .get: never creates an entry in the optimizer's defaultdict
            buffers.append(None if state is None else state.get("momentum_buffer"))
        return buffers

    def _clip_pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        nn.utils.clip_grad_norm_(self._alphas, self.grad_clip)

    # ------------------------------------------------------------------------------ upstream API
    def step(
        self,
        input_train: Tensor,
        target_train: Tensor,
        input_valid: Tensor,
        target_valid: Tensor,
        eta: float,
        network_optimizer: torch.optim.Optimizer | None,
        unrolled: bool | None = None,
    ) -> Any:
        """One alpha update, with upstream's arguments.

        ``eta`` is the current weight learning rate (the xi of the unrolled step; unused
        otherwise), ``network_optimizer`` the weight optimizer (its momentum buffers feed the
        unrolled step), ``unrolled`` upstream's flag (``None``: follow ``amend_estimator``).
        Returns the core ``StepInfo`` (upstream returns nothing; the value is also kept in
        ``last_info``).
        """
        if unrolled is not None:
            self._check_unrolled(bool(unrolled))
        self._refresh_weights()
        self._check_optimizer(network_optimizer)
        options: dict[str, Any] = {}
        if self.estimator == "unrolled":
            xi = float(eta.item() if isinstance(eta, Tensor) else eta)
            options = dict(
                xi=check_number("eta (the weight learning rate)", xi, strict=True),
                momentum=self.network_momentum,
                momentum_buffers=self._momentum_buffers(network_optimizer),
                weight_decay=self.network_weight_decay,
            )
        self.last_info = self._architect.step(
            (input_train, target_train), (input_valid, target_valid), **options
        )
        return self.last_info

    # ------------------------------------------------------------------------------ extras
    @property
    def alphas(self) -> Sequence[Tensor]:
        return self._alphas

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._architect.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The alpha optimizer's state (and estimator settings) for checkpoints."""
        return self._architect.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._architect.load_state_dict(state)
