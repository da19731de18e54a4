"""Common random numbers: every loss evaluation of one hypergradient estimate sees one sample.

A supernet that draws random numbers in its forward pass (DrNAS' Dirichlet sample of the
architecture weights, GDAS' Gumbel noise, drop-path, dropout after skip-connect) computes a
different function on every pass. An estimator evaluates the loss several times per estimate
(the validation pass for g1 and v, the training pass for H v and B u in exact mode, and two or
four perturbed passes in the finite-difference modes); with a fresh sample per pass, the
differences of finite-difference products are differences between two samples divided by a
tiny step, and g1 and g2 describe two different networks.

This module forks the random number generators per estimate. Inside :func:`shared_sample`
every evaluation (:func:`evaluation`, the one hook, in ``darts_amend.model.evaluate_loss``)
starts from the same generator state, so each pass draws the same numbers: the same Dirichlet
sample, the same Gumbel noise, the same dropout mask for tensors of the same shape (a dropout
mask follows the shape it is drawn for, so the validation and training batches share the
stream, not the mask, when their sizes differ).

Generators forked: the CPU generator and, for every CUDA device holding a parameter or a batch
tensor, that device's generator. Python's ``random`` and numpy's global generator are not forked
(a forward pass drawing from them is neither detected nor replayed).

Detection (``common_random_numbers=None``, the default): the first evaluation of an estimate
runs as usual; if it left any forked generator in a different state, the forward pass drew
random numbers, and every later evaluation is replayed from the state the first one started
from. A forward that draws nothing leaves the generators alone and nothing is ever reset (the
numbers are bit-identical to an estimator without this module). A model may also declare it:
a boolean attribute ``draws_randomness`` on the (unwrapped) module is taken as the answer
without looking at the generators. ``True`` replays every pass regardless; ``False`` never
replays (every pass draws afresh: the behaviour before this module).

The global generators after an estimate: with replay, they are left in the state the FIRST
evaluation left them in, i.e. advanced by exactly one forward pass, which is where
``first_order`` (one pass) leaves them. So the weight updates that follow see the same random
stream whichever estimator (and whichever mode) computed the alpha step. Without replay they are
advanced by every pass, as before.

Passes that cannot share randomness: with replay off (``False``, or a model declaring
``draws_randomness = False`` that does draw), the finite-difference modes are refused with a
ValueError as soon as the first pass shows that the forward draws random numbers (the difference
quotient would be dominated by the change of sample). With replay on, a pass over a batch that
ends in a different generator state than an earlier pass over the same batch drew a different
amount of random numbers (randomness that depends on the parameters, e.g. a sample size chosen
from alpha): that estimate warns (RuntimeWarning) that its passes did not share one sample.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "OPTION",
    "GeneratorState",
    "check_option",
    "draws_randomness",
    "evaluation",
    "shared_sample",
    "with_common_random_numbers",
]

#: The estimator option added by :func:`with_common_random_numbers`.
OPTION = "common_random_numbers"

_DIFFERENCE_MODES = ("finite_difference", "forward_difference")


class GeneratorState:
    """A snapshot of the CPU generator and of the CUDA generators of some devices."""

    def __init__(self, cuda_devices: tuple[int, ...] = ()) -> None:
        self.cuda_devices = cuda_devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]

    def restore(self) -> None:
        """Put every snapshotted generator back into this state."""
        torch.set_rng_state(self.cpu)
        for d, s in zip(self.cuda_devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(s, d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeneratorState) or other.cuda_devices != self.cuda_devices:
            return NotImplemented
        return torch.equal(self.cpu, other.cpu) and all(
            torch.equal(a, b) for a, b in zip(self.cuda, other.cuda, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


class _Stream:
    """The state of one estimate: its start state, whether to replay, what each batch drew."""

    def __init__(self, setting: bool | None, cuda_devices: tuple[int, ...], mode: str | None):
        self.setting = setting
        self.mode = mode
        self.start = GeneratorState(cuda_devices)
        self.after_first: GeneratorState | None = None
        self.replay = setting is True
        self.passes = 0
        # id(batch inputs) -> (inputs kept alive so the id is not reused, end state of a pass)
        self.ends: dict[int, tuple[Any, GeneratorState]] = {}
        self.warned = False

    def before(self) -> None:
        if self.passes > 0 and self.replay:
            self.start.restore()  # every pass draws the numbers the first one drew

    def after(self, inputs: Any) -> None:
        self.passes += 1
        end = GeneratorState(self.start.cuda_devices)
        if self.passes == 1:
            self.after_first = end
            drew = end != self.start
            if self.setting is None:
                self.replay = drew
            elif self.setting is False and drew and self.mode in _DIFFERENCE_MODES:
                raise ValueError(
                    f"the model draws random numbers in forward and common_random_numbers=False: "
                    f"mode={self.mode!r} would difference two different samples (the result "
                    "measures the change of sample, not curvature); use common_random_numbers="
                    "None/True or mode='exact'"
                )
        if not self.replay:
            return
        seen = self.ends.get(id(inputs))
        if seen is None:
            self.ends[id(inputs)] = (inputs, end)
        elif seen[1] != end and not self.warned:
            self.warned = True
            warnings.warn(
                "common random numbers: two passes over the same batch drew different amounts "
                "of random numbers (the forward's randomness depends on the parameters), so "
                "the passes of this estimate did not share one sample",
                RuntimeWarning,
                stacklevel=4,
            )

    def finish(self) -> None:
        if self.replay and self.after_first is not None:
            self.after_first.restore()  # advanced by one pass, as first_order leaves it


_ACTIVE: contextvars.ContextVar[_Stream | None] = contextvars.ContextVar(
    "darts_amend_common_random_numbers", default=None
)


def _cuda_devices(objs: Iterator[Tensor]) -> tuple[int, ...]:
    found = {t.device.index for t in objs if t.device.type == "cuda"}
    if not found:
        return ()
    current = torch.cuda.current_device()
    return tuple(sorted(current if i is None else i for i in found))


def _leaves(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _leaves(item)


def draws_randomness(model: nn.Module) -> bool | None:
    """The model's own declaration: its ``draws_randomness`` attribute when it is a bool (looked
    up on the module behind DataParallel / DDP wrappers), else ``None`` (detect)."""
    net = model
    while isinstance(getattr(net, "module", None), nn.Module) and not hasattr(
        net, "draws_randomness"
    ):
        net = net.module
    declared = getattr(net, "draws_randomness", None)
    return declared if isinstance(declared, bool) else None


@contextlib.contextmanager
def shared_sample(
    model: nn.Module,
    *batches: Any,
    common_random_numbers: bool | None = None,
    mode: str | None = None,
) -> Iterator[None]:
    """Run the loss evaluations inside under common random numbers (see the module docstring).

    ``common_random_numbers``: ``None`` detect (the model's ``draws_randomness`` attribute, else
    whether the first pass moved a generator), ``True`` always replay, ``False`` never (then
    ``mode`` in the difference modes is refused when the forward draws random numbers).
    """
    setting = common_random_numbers
    if setting is None:
        setting = draws_randomness(model)
    tensors = list(model.parameters()) + [t for b in batches for t in _leaves(b)]
    stream = _Stream(setting, _cuda_devices(iter(tensors)), mode)
    token = _ACTIVE.set(stream)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        stream.finish()


@contextlib.contextmanager
def evaluation(batch: Any) -> Iterator[None]:
    """Wraps one loss evaluation (``darts_amend.model.evaluate_loss``): outside
    :func:`shared_sample` it does nothing; inside, it replays the estimate's random numbers."""
    stream = _ACTIVE.get()
    if stream is None:
        yield
        return
    stream.before()
    yield
    stream.after(batch[0] if isinstance(batch, (tuple, list)) and batch else batch)


def check_option(name: str, value: Any) -> bool | None:
    """Validate a ``common_random_numbers`` value: None, True or False."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"invalid {name}: {value!r} (must be None = detect, True or False)")
    return value


def with_common_random_numbers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give an estimator ``f(model, train_batch, valid_batch, *, ...)`` the keyword option
    ``common_random_numbers=None`` and run it inside :func:`shared_sample`."""
    sig = inspect.signature(fn)
    extra = inspect.Parameter(OPTION, inspect.Parameter.KEYWORD_ONLY, default=None)
    params = list(sig.parameters.values())
    params.append(extra)

    @functools.wraps(fn)
    def wrapper(model: nn.Module, train_batch: Any, valid_batch: Any, *args: Any, **kw: Any):
        setting = check_option(OPTION, kw.pop(OPTION, None))
        mode = kw.get("mode", sig.parameters["mode"].default if "mode" in sig.parameters else None)
        if not isinstance(model, nn.Module):
            return fn(model, train_batch, valid_batch, *args, **kw)  # fn raises the TypeError
        with shared_sample(
            model, train_batch, valid_batch, common_random_numbers=setting, mode=mode
        ):
            return fn(model, train_batch, valid_batch, *args, **kw)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper
