"""Toy supernets whose bilevel problem has a known answer (float64 by default).

Each is an ``nn.Module`` with ``arch_parameters()`` and a ``_loss(inputs, targets)`` (the
library's default loss), so every estimator runs on it unchanged. What a *batch* means differs:
for the quadratic toys it carries the coefficients of the loss, which is how one model expresses
two different functions L_train and L_val.

* :class:`DartsToy`: the scalar example of the DARTS paper (any quadratic in (w, alpha)).
* :class:`QuadraticBilevel`: ``1/2 w^T M w + alpha^T C w - b^T w`` (H = M, B = C).
* :class:`RidgeRegression`: least squares with one log-penalty per feature as the alphas.
* :class:`MixedMLP`: a smooth softmax mixture of candidate ops on one edge, then a linear head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DartsToy", "MixedMLP", "QuadraticBilevel", "RidgeRegression"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid, "softplus": F.softplus
}


class DartsToy(nn.Module):
    """One weight ``w`` and one alpha; the loss is a quadratic whose coefficients are the batch.

    A batch is ``(c, unused)`` with ``c = (c_ww, c_aw, c_aa, c_w, c_a, c_0)`` and
    ``L = c_ww w^2 + c_aw alpha w + c_aa alpha^2 + c_w w + c_a alpha + c_0``. The DARTS paper's
    example is ``L_train = w^2 - 2 alpha w + alpha^2`` (c = (1, -2, 1, 0, 0, 0)) and
    ``L_val = alpha w - 2 alpha + 1`` (c = (0, 1, 0, 0, -2, 1)). The alpha is kept outside
    ``parameters()``, as upstream DARTS keeps its alphas.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        w: float = 0.0,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=dtype, device=device))
        self._alphas = [torch.tensor([alpha], dtype=dtype, device=device).requires_grad_()]

    def arch_parameters(self) -> list[Tensor]:
        return self._alphas

    def _loss(self, coefficients: Tensor, targets: object = None) -> Tensor:
        w, a = self.w[0], self._alphas[0][0]
        c = coefficients.to(self.w.dtype)
        return c[0] * w * w + c[1] * a * w + c[2] * a * a + c[3] * w + c[4] * a + c[5]


class QuadraticBilevel(nn.Module):
    """Closed-form bilevel toy. On a batch ``(M, b)``: ``L = 1/2 w^T M w + alpha^T C w - b^T w``.

    So ``grad_w L = M w + C^T alpha - b``, ``H = M``, ``B = C`` (``B u = C u``) and
    ``grad_alpha L = C w``. ``C`` is a frozen parameter (not a weight); the alphas are kept
    outside ``parameters()``.
    """

    def __init__(self, C: Tensor, w0: Tensor, alpha0: Tensor | None = None) -> None:
        super().__init__()
        self.C = nn.Parameter(C.clone(), requires_grad=False)  # frozen: not a weight
        self.w = nn.Parameter(w0.clone())
        a = (
            torch.zeros(C.shape[0], dtype=C.dtype, device=C.device)
            if alpha0 is None
            else alpha0.clone()
        )
        self._alphas = [a.requires_grad_()]

    def arch_parameters(self) -> list[Tensor]:
        return self._alphas

    def _loss(self, M: Tensor, b: Tensor) -> Tensor:
        w, a = self.w, self._alphas[0]
        return 0.5 * w @ M @ w + a @ self.C @ w - b @ w


class RidgeRegression(nn.Module):
    """Linear least squares with a penalty ``exp(alpha_j)`` per feature; alphas are registered.

    A batch is ``((X, rho), y)``: ``L = 1/2 mean((X w - y)^2) + rho/2 sum_j exp(alpha_j) w_j^2``,
    with ``rho = 1`` on the training batch and ``rho = 0`` on the validation batch (the classic
    hyper-parameter problem: the penalty shapes ``w*(alpha)``, the validation loss judges it).
    """

    def __init__(
        self,
        features: int,
        *,
        log_penalty: Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(features, dtype=dtype, device=device))
        a = torch.zeros(features, dtype=dtype, device=device) if log_penalty is None else (
            log_penalty.detach().to(dtype=dtype, device=device).clone()
        )
        self.alpha = nn.Parameter(a)  # registered (P-DARTS style): excluded from the weights

    def arch_parameters(self) -> list[Tensor]:
        return [self.alpha]

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w

    def _loss(self, inputs: tuple[Tensor, Tensor], y: Tensor) -> Tensor:
        x, rho = inputs
        fit = 0.5 * (self(x) - y).square().mean()
        return fit + 0.5 * rho * (self.alpha.exp() * self.w.square()).sum()


class MixedMLP(nn.Module):
    """A smooth mixed edge: ``x -> sum_k softmax(alpha)_k act_k(W_k x + b_k) -> (BN) -> linear``.

    ``activation``: one name for every op or one per op (``"tanh"``, ``"gelu"``, ``"sigmoid"``,
    ``"softplus"``), all smooth so that Hessians exist everywhere. The loss is the cross-entropy
    of the logits plus ``weight_decay / 2 * ||weights||^2`` (which makes the inner problem
    well-posed for Newton). ``register_alphas=True`` registers the alphas as module parameters
    (P-DARTS style); otherwise they are kept outside ``parameters()``, as in upstream DARTS.
    """

    def __init__(
        self,
        d_in: int = 4,
        hidden: int = 3,
        classes: int = 3,
        ops: int = 2,
        *,
        activation: str | Sequence[str] = "tanh",
        batchnorm: bool = False,
        register_alphas: bool = False,
        weight_decay: float = 0.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        names = [activation] * ops if isinstance(activation, str) else list(activation)
        if len(names) != ops or any(n not in _ACTIVATIONS for n in names):
            raise ValueError(
                f"invalid activation: {activation!r} (one of {', '.join(_ACTIVATIONS)}, "
                f"or a sequence of {ops} of them)"
            )
        self.activations = tuple(names)
        self.weight_decay = float(weight_decay)
        alpha = 0.3 * torch.randn(ops, dtype=dtype).to(device)
        self._alphas: list[Tensor]
        if register_alphas:
            self.alpha = nn.Parameter(alpha)
            self._alphas = [self.alpha]
        else:
            self._alphas = [alpha.requires_grad_()]
        self.ops = nn.ModuleList(
            nn.Linear(d_in, hidden, dtype=dtype, device=device) for _ in range(ops)
        )
        self.bn = nn.BatchNorm1d(hidden, dtype=dtype, device=device) if batchnorm else None
        self.head = nn.Linear(hidden, classes, dtype=dtype, device=device)

    def arch_parameters(self) -> list[Tensor]:
        return self._alphas

    def forward(self, x: Tensor) -> Tensor:
        # the attribute when registered, so torch.func.functional_call can substitute it
        alpha = self.alpha if isinstance(getattr(self, "alpha", None), Tensor) else self._alphas[0]
        mix = F.softmax(alpha, dim=0)
        h = sum(
            mix[k] * _ACTIVATIONS[name](op(x))
            for k, (name, op) in enumerate(zip(self.activations, self.ops, strict=True))
        )
        if self.bn is not None:
            h = self.bn(h)
        return self.head(h)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(self(x), y)
        if self.weight_decay:
            ids = {id(a) for a in self._alphas}
            sq = sum(p.square().sum() for p in self.parameters() if id(p) not in ids)
            loss = loss + 0.5 * self.weight_decay * sq
        return loss
