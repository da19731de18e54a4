"""Shared test helpers: seeding, device, state snapshots; toy supernets and dense ground truth
re-exported from the public testing kit (darts_amend.testing)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from darts_amend.hvp import split_parameters
from darts_amend.testing import MixedMLP, QuadraticBilevel, dense_derivatives

__all__ = [
    "load_bench",
    "DEVICE",
    "ArchNet",
    "NoArchNet",
    "assert_same_state",
    "MixedMLP",
    "QuadraticBilevel",
    "assert_close",
    "dense_blocks",
    "dense_grad",
    "flat",
    "make_batch",
    "one_thread",
    "seed_all",
    "snapshot",
    "unflat",
]

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread spin on the shared 2-core machine
    (measured: a float64 amended step 0.25 s on 1 thread, ~30 s on 2 busy threads; a tiny
    supernet step 0.26 s vs 3-60 s).

    Import it into a test module to make it autouse there; restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assert_close(
    actual, expected, *, rtol: float = 1e-10, atol: float = 1e-12, msg: str = ""
) -> None:
    """``torch.testing.assert_close`` on tensors or lists of tensors (compared as one vector)."""
    if isinstance(actual, (list, tuple)):
        actual = flat(actual)
    if isinstance(expected, (list, tuple)):
        expected = flat(expected)
    torch.testing.assert_close(
        actual, expected.to(actual.dtype), rtol=rtol, atol=atol, msg=msg or None
    )


def flat(ts) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def unflat(vec: Tensor, like) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Parameters, buffers and .grad of a model, cloned (for 'left exactly as found' checks)."""
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers()})
    state.update(
        {
            f"g:{n}": p.grad.detach().clone()
            for n, p in model.named_parameters()
            if p.grad is not None
        }
    )
    for i, a in enumerate(model.arch_parameters()):
        state[f"a:{i}"] = a.detach().clone()
        if a.grad is not None:
            state[f"ag:{i}"] = a.grad.detach().clone()
    return state


def assert_same_state(before: dict[str, Tensor], after: dict[str, Tensor]) -> None:
    assert before.keys() == after.keys(), set(before) ^ set(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(
            before[k].view(-1).view(torch.uint8), after[k].view(-1).view(torch.uint8)
        ), f"{k} changed"


# --------------------------------------------------------------------------- toy supernets
#
# The toy supernets and the dense ground truth come from the public testing kit
# (darts_amend.testing): MixedMLP, QuadraticBilevel, dense_derivatives. Only the bad-input
# models below are test-suite specific.


class NoArchNet(nn.Module):
    """A module without ``arch_parameters()``: not a supernet (bad-input tests)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


class ArchNet(NoArchNet):
    """``arch_parameters()`` returns the given list as is, valid or not (bad-input tests)."""

    def __init__(self, alphas):
        super().__init__()
        self._a = alphas

    def arch_parameters(self):
        return self._a


@contextlib.contextmanager
def _at(model: nn.Module, theta: Tensor | None):
    """Temporarily put the flat point theta = (alphas, weights) into the model (then restore)."""
    if theta is None:
        yield
        return
    params = [*split_parameters(model)[0], *split_parameters(model)[1]]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, t in zip(params, unflat(theta, params), strict=True):
            p.copy_(t)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, t in zip(params, saved, strict=True):
                p.copy_(t)


def dense_blocks(model: nn.Module, batch, theta: Tensor | None = None):
    """Dense Hessian of the loss over (alphas, weights) at theta (default: current point).

    Returns (A, B, H): A = d2L/dalpha2, B = d2L/(dalpha dw) (rows: alpha), H = d2L/dw2
    (from :func:`darts_amend.testing.dense_derivatives`).
    """
    with _at(model, theta):
        d = dense_derivatives(model, batch)
    return d.alpha_alpha, d.alpha_weight, d.weight_weight


def dense_grad(model: nn.Module, batch, theta: Tensor | None = None):
    """(grad_alpha, grad_w) of the loss as flat vectors at theta (default: current point)."""
    with _at(model, theta):
        d = dense_derivatives(model, batch)
    return d.grad_alphas, d.grad_weights


def make_batch(
    n: int = 6, d_in: int = 4, classes: int = 3, *, dtype=torch.float64, seed: int | None = None
):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = torch.randn(n, d_in, dtype=dtype, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x.to(DEVICE), y.to(DEVICE)


def load_bench(name: str):
    """The script ``bench/<name>.py`` imported as a module (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
