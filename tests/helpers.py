"""Shared test helpers: seeding, device, tiny supernets and dense (ground-truth) references."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEVICE",
    "ArchNet",
    "NoArchNet",
    "assert_same_state",
    "DenseModel",
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
# Every toy model has ``pure_loss(alphas, weights, x, y)``: its loss as a pure function of
# explicit tensors (weights in the order of ``split_parameters``), so dense references can
# differentiate it with torch.autograd.functional on a flat vector.


class MixedMLP(nn.Module):
    """A smooth two-op mixed layer: x -> sum_k softmax(alpha)_k tanh(W_k x) -> (BN) -> linear.

    ``register_alphas=True`` registers alphas as module parameters (P-DARTS style);
    otherwise they are kept as in upstream DARTS, outside ``parameters()``.
    """

    def __init__(
        self,
        d_in: int = 4,
        hidden: int = 3,
        classes: int = 3,
        ops: int = 2,
        *,
        batchnorm: bool = False,
        register_alphas: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        alpha = 0.3 * torch.randn(ops, dtype=dtype)
        if register_alphas:
            self.alpha = nn.Parameter(alpha)
            self._alphas = [self.alpha]
        else:
            self._alphas = [alpha.requires_grad_()]
        self.ops = nn.ModuleList(nn.Linear(d_in, hidden, dtype=dtype) for _ in range(ops))
        self.bn = nn.BatchNorm1d(hidden, dtype=dtype) if batchnorm else None
        self.head = nn.Linear(hidden, classes, dtype=dtype)

    def arch_parameters(self) -> list[Tensor]:
        return self._alphas

    def weight_names(self) -> list[str]:
        ids = {id(a) for a in self._alphas}
        return [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in ids]

    def _logits(self, alpha: Tensor, p: dict, x: Tensor, stats=None) -> Tensor:
        w = F.softmax(alpha, dim=0)
        h = sum(
            w[k] * torch.tanh(F.linear(x, p[f"ops.{k}.weight"], p[f"ops.{k}.bias"]))
            for k in range(len(self.ops))
        )
        if self.bn is not None:
            mean, var = stats or (self.bn.running_mean, self.bn.running_var)
            # train mode: running statistics updated as real BN does, output uses batch stats
            h = F.batch_norm(
                h,
                mean,
                var,
                p["bn.weight"],
                p["bn.bias"],
                self.training,
                self.bn.momentum,
                self.bn.eps,
            )
        return F.linear(h, p["head.weight"], p["head.bias"])

    def forward(self, x: Tensor) -> Tensor:
        return self._logits(self._alphas[0], dict(self.named_parameters()), x)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self(x), y)

    def pure_loss(self, alphas, weights, x, y) -> Tensor:
        """The loss as a pure function (running statistics untouched: it updates copies)."""
        p = dict(zip(self.weight_names(), weights, strict=True))
        stats = None
        if self.bn is not None:
            stats = (self.bn.running_mean.clone(), self.bn.running_var.clone())
        return F.cross_entropy(self._logits(alphas[0], p, x, stats), y)


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


class QuadraticBilevel(nn.Module):
    """Closed-form bilevel toy. On a batch (M, b): L = 1/2 w^T M w + alpha^T C w - b^T w.

    So grad_w L = M w + C^T alpha - b, H = M, B = C (B u = C u), grad_alpha L = C w.
    """

    def __init__(self, C: Tensor, w0: Tensor, alpha0: Tensor | None = None) -> None:
        super().__init__()
        self.C = nn.Parameter(C.clone(), requires_grad=False)  # frozen: not a weight
        self.w = nn.Parameter(w0.clone())
        a = torch.zeros(C.shape[0], dtype=C.dtype) if alpha0 is None else alpha0.clone()
        self._alphas = [a.requires_grad_()]

    def arch_parameters(self) -> list[Tensor]:
        return self._alphas

    def pure_loss(self, alphas, weights, M: Tensor, b: Tensor) -> Tensor:
        w, a = weights[0], alphas[0]
        return 0.5 * w @ M @ w + a @ self.C @ w - b @ w

    def _loss(self, M: Tensor, b: Tensor) -> Tensor:
        return self.pure_loss(self._alphas, [self.w], M, b)


class DenseModel:
    """The loss as a scalar function of the flat vector theta = (alphas, weights)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.alphas = list(model.arch_parameters())
        ids = {id(a) for a in self.alphas}
        self.weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        self.n_alpha = sum(a.numel() for a in self.alphas)

    def theta(self) -> Tensor:
        return flat([t.detach() for t in self.alphas + self.weights]).clone()

    def __call__(self, theta: Tensor, batch) -> Tensor:
        pieces = unflat(theta, self.alphas + self.weights)
        k = len(self.alphas)
        return self.model.pure_loss(pieces[:k], pieces[k:], *batch)


def dense_blocks(model: nn.Module, batch, theta: Tensor | None = None):
    """Dense Hessian of the loss over (alphas, weights) at theta (default: current point).

    Returns (A, B, H): A = d2L/dalpha2, B = d2L/(dalpha dw) (rows: alpha), H = d2L/dw2.
    """
    dm = DenseModel(model)
    th = dm.theta() if theta is None else theta
    full = torch.autograd.functional.hessian(lambda t: dm(t, batch), th, vectorize=True)
    k = dm.n_alpha
    return full[:k, :k], full[:k, k:], full[k:, k:]


def dense_grad(model: nn.Module, batch, theta: Tensor | None = None):
    """(grad_alpha, grad_w) of the loss as flat vectors at theta (default: current point)."""
    dm = DenseModel(model)
    th = dm.theta() if theta is None else theta
    g = torch.autograd.functional.jacobian(lambda t: dm(t, batch), th)
    return g[: dm.n_alpha], g[dm.n_alpha :]


def make_batch(
    n: int = 6, d_in: int = 4, classes: int = 3, *, dtype=torch.float64, seed: int | None = None
):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = torch.randn(n, d_in, dtype=dtype, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x.to(DEVICE), y.to(DEVICE)
