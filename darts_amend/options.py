"""Estimator options: their checks, the product options bundle, and the one registry.

* :class:`ProductOptions` bundles how the second-order products are computed (``mode``, ``r``,
  ``chunks``, ``second_order_batch``, ``fast_depthwise``), checked once.
* :data:`OPTIONS` holds one :class:`OptionSpec` per option name (kind, valid range, default,
  doc); :data:`ESTIMATOR_OPTIONS` lists the options each estimator accepts, in signature order.
  :func:`validate_options` and :func:`estimator_options` read them, and so can a command line
  or an adapter (names, ranges, defaults, help text) without importing the estimators.

Adding an option: an :class:`OptionSpec` in :data:`OPTIONS`, its name in the estimator's entry
of :data:`ESTIMATOR_OPTIONS`, and the keyword in the estimator's signature (a test checks that
registry and signatures agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._types import MODES

__all__ = [
    "ESTIMATOR_OPTIONS",
    "OPTIONS",
    "PRODUCT_OPTIONS",
    "SAMPLE_OPTIONS",
    "OptionSpec",
    "ProductOptions",
    "check_count",
    "check_flag",
    "check_mode",
    "check_number",
    "check_option",
    "check_sub_batch",
    "estimator_options",
    "validate_options",
]


# --------------------------------------------------------------------------- value checks


def check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a float: finite, ``>= low`` (``> low`` when ``strict``); else ValueError."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.dtype.is_complex \
            and value.dtype != torch.bool:  # a 0-d tensor such as torch.tensor(0.1)
        value = value.item()
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"invalid {name}: {value!r} (must be a finite number {bound})")
    return float(value)


def check_count(name: str, value: Any) -> int:
    """``value`` as an integer >= 1; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid {name}: {value!r} (must be an integer >= 1)")
    return value


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool (True / False only); else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}: {value!r} (must be True or False)")
    return value


def check_sub_batch(name: str, value: Any) -> int | None:
    """``None`` (the whole batch) or a number of samples >= 1; else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"invalid {name}: {value!r} (must be None, the whole training batch, or an "
            "integer >= 1, the number of training samples the second-order products use)"
        )
    return value


def check_mode(mode: Any, r: Any) -> None:
    """``mode`` one of :data:`MODES`, ``r`` (the finite-difference scale) a positive number."""
    if mode not in MODES:
        raise ValueError(f"invalid mode: {mode!r}; valid modes: {', '.join(MODES)}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise ValueError(
            f"invalid r: {r!r} (the finite-difference scale must be a positive number)"
        )


# --------------------------------------------------------------------------- product options


@dataclass(frozen=True)
class ProductOptions:
    """How the second-order products H u and B u are computed (:mod:`darts_amend.hvp`).

    ``mode``: ``"exact"`` (double backward), ``"finite_difference"`` (central, R = r / ||u||) or
    ``"forward_difference"``; ``r``: the finite-difference scale; ``chunks``: micro-batches the
    products are accumulated over; ``second_order_batch``: the products use only the first that
    many training samples (``None``: all); ``fast_depthwise``: the cheaper double backward of
    grouped convolutions (exact mode).
    """

    mode: str = "exact"
    r: float = 0.01
    chunks: int = 1
    second_order_batch: int | None = None
    fast_depthwise: bool = True

    @classmethod
    def check(
        cls,
        mode: Any = "exact",
        r: Any = 0.01,
        chunks: Any = 1,
        second_order_batch: Any = None,
        fast_depthwise: Any = True,
    ) -> ProductOptions:
        """Validated options (ValueError naming the first bad one)."""
        check_mode(mode, r)
        return cls(
            mode,
            r,
            check_count("chunks", chunks),
            check_sub_batch("second_order_batch", second_order_batch),
            check_flag("fast_depthwise", fast_depthwise),
        )


#: The option names of :class:`ProductOptions`, shared by every estimator with products.
PRODUCT_OPTIONS: tuple[str, ...] = ("mode", "r", "chunks", "second_order_batch", "fast_depthwise")
#: Options of how an estimate samples a stochastic supernet (darts_amend.randomness); every
#: estimator takes them (added by ``randomness.with_common_random_numbers``).
SAMPLE_OPTIONS: tuple[str, ...] = ("common_random_numbers",)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class OptionSpec:
    """One estimator option.

    ``kind`` says what values are valid: ``"number"`` (finite, ``>= low``, or ``> low`` when
    ``strict``), ``"number_or_none"`` (the same, or None), ``"positive"`` (finite, > 0),
    ``"count"`` (integer >= 1),
    ``"sub_batch"`` (None or integer >= 1), ``"flag"`` (bool), ``"flag_or_none"`` (None, True or
    False), ``"choice"`` (one of
    ``choices``), ``"tensors"`` (checked against the model when the estimator runs).
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: float = 0.0
    strict: bool = False
    choices: tuple[str, ...] = ()

    @property
    def valid(self) -> str:
        """The valid values, in words (for help texts and messages)."""
        bound = f"{'>' if self.strict else '>='} {self.low:g}"
        return {
            "number": f"a finite number {bound}",
            "number_or_none": f"None or a finite number {bound}",
            "positive": "a finite number > 0",
            "count": "an integer >= 1",
            "sub_batch": "None (the whole batch) or an integer >= 1",
            "flag": "True or False",
            "flag_or_none": "None (detect), True or False",
            "choice": "one of " + ", ".join(self.choices),
            "tensors": "a list aligned with the weights (entries may be None)",
        }[self.kind]

    def check(self, name: str, value: Any) -> Any:
        """``value`` if valid for this option (messages name it ``name``); else ValueError."""
        if self.kind == "number":
            return check_number(name, value, low=self.low, strict=self.strict)
        if self.kind == "number_or_none":
            return value if value is None else check_number(name, value, low=self.low)
        if self.kind == "positive":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"invalid {name}: {value!r} (the {self.doc} must be a positive number)"
                )
            return value
        if self.kind == "count":
            return check_count(name, value)
        if self.kind == "sub_batch":
            return check_sub_batch(name, value)
        if self.kind == "flag":
            return check_flag(name, value)
        if self.kind == "flag_or_none":
            return value if value is None else check_flag(name, value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(
                    f"invalid {name}: {value!r}; valid {name}s: {', '.join(self.choices)}"
                )
            return value
        return value  # "tensors": checked against the model when the estimator runs


def _spec(name: str, kind: str, default: Any, doc: str, **kw: Any) -> tuple[str, OptionSpec]:
    return name, OptionSpec(name, kind, default, doc, **kw)


#: Every estimator option, by name.
OPTIONS: dict[str, OptionSpec] = dict(
    [
        _spec("eta", "number", 0.1, "amending coefficient of eq. 7 (0 = first-order DARTS)"),
        _spec("xi", "number_or_none", None, "learning rate of the unrolled weight step (required)"),
        _spec("momentum", "number", 0.0, "momentum of the unrolled weight step"),
        _spec("momentum_buffers", "tensors", None, "the weight optimizer's momentum buffers"),
        _spec("weight_decay", "number", 0.0, "weight decay of the unrolled weight step"),
        _spec("iterations", "count", 10, "conjugate-gradient iterations"),
        _spec("damping", "number", 0.0, "ridge damping: solve (H + damping I) x = v"),
        _spec("tol", "number", 1e-12, "CG stops when ||residual|| <= tol * ||v||"),
        _spec("terms", "count", 10, "Neumann series terms"),
        _spec("gamma", "number", 0.01, "Neumann step size (0 < gamma < 2 / lambda_max(H))",
              strict=True),
        _spec("mode", "choice", "exact", "how the Hessian products are computed", choices=MODES),
        _spec("r", "positive", 0.01, "finite-difference scale"),  # R = r / ||u||
        _spec("chunks", "count", 1, "micro-batches the Hessian products are accumulated over"),
        _spec("second_order_batch", "sub_batch", None,
              "training samples the Hessian products use (None: the whole batch)"),
        _spec("fast_depthwise", "flag", True,
              "cheaper double backward of grouped convolutions (exact mode)"),
        _spec("common_random_numbers", "flag_or_none", None,
              "replay one random sample in every pass of an estimate (None: when the model "
              "draws randomness in forward)"),
    ]
)

#: The options each estimator accepts, in the order of its signature.
ESTIMATOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "first_order": SAMPLE_OPTIONS,
    "unrolled": ("xi", "momentum", "momentum_buffers", "weight_decay") + PRODUCT_OPTIONS
    + SAMPLE_OPTIONS,
    "amended": ("eta",) + PRODUCT_OPTIONS + SAMPLE_OPTIONS,
    "implicit_cg": ("iterations", "damping", "tol") + PRODUCT_OPTIONS + SAMPLE_OPTIONS,
    "implicit_neumann": ("terms", "gamma") + PRODUCT_OPTIONS + SAMPLE_OPTIONS,
}


def check_option(name: str, value: Any) -> Any:
    """``value`` checked by the registry's rule for option ``name`` (ValueError naming it)."""
    return OPTIONS[name].check(name, value)


def _names(name: str) -> tuple[str, ...]:
    if not isinstance(name, str) or name not in ESTIMATOR_OPTIONS:
        raise ValueError(
            f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATOR_OPTIONS)}"
        )
    return ESTIMATOR_OPTIONS[name]


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check option names and values for estimator ``name`` without running it.

    Unknown names raise TypeError, bad values ValueError (the messages the estimator would give).
    """
    allowed = _names(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for estimator {name!r}; "
            f"it accepts: {', '.join(allowed) or 'no options'}"
        )
    out = dict(options)
    for key, value in options.items():
        checked = check_option(key, value)
        if isinstance(value, Tensor) and key != "momentum_buffers":
            out[key] = checked  # a 0-d tensor option is kept as the number it holds
    return out


def estimator_options(name: str) -> dict[str, Any]:
    """The options an estimator accepts, with their defaults (``None`` for ``xi``)."""
    return {key: OPTIONS[key].default for key in _names(name)}
