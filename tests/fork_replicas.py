"""Small supernets and loops with the interface quirks of the DARTS forks (our own code, no fork's).

* ``DirichletNet`` -- DrNAS (xiangning-chen/DrNAS, DARTS-space ``model_search.py``): every forward
  draws the operation weights from Dirichlet(elu(alpha) + 1) (a reparameterised ``rsample``);
  alphas are plain leaf tensors outside ``parameters()``; ``_loss`` adds a KL term to a uniform
  Dirichlet when ``reg_type == "kl"``; partial channels (1/k of the features go through the
  mixed op); ``pruning(num_keep)`` masks the weakest ops per edge and ``wider(k)`` rebuilds the ops
  with more channels (new weight tensors: an architect holding the old list is stale).
* ``NB201Net`` -- beta-DARTS' NAS-Bench-201 model: ONE ``nn.Parameter`` alpha tensor
  ``_arch_parameters`` (inside ``parameters()``), ``arch_parameters()`` returns ``[it]``.
* ``ProjNet`` -- DARTS-PT: ``_loss(x, y, return_logits=False)``, ``get_weights()`` and a ``step``
  that asserts the architect returned ``shared is None``.

Edges are small tanh MLPs (smooth, so finite differences and exact products agree).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Dirichlet, kl_divergence

__all__ = [
    "DirichletNet",
    "NB201Net",
    "ProjNet",
    "beta_decay_closed_form",
    "drnas_args",
    "fork_args",
    "vector_batches",
]

FEATURES = 8
CLASSES = 3


def vector_batches(n: int, batch: int = 8, *, seed: int = 0, dtype=torch.float64):
    """Deterministic (inputs, targets) batches of FEATURES-dim vectors; targets depend on inputs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, FEATURES, generator=gen, dtype=dtype)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        out.append((x, y))
    return out


class _Edge(nn.Module):
    """A mixed op on the first ``FEATURES // k`` features; the rest bypass it."""

    def __init__(self, n_ops: int, k: int) -> None:
        super().__init__()
        self.k = k
        width = FEATURES // k
        self.ops = nn.ModuleList(nn.Linear(width, width) for _ in range(n_ops))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        width = FEATURES // self.k
        part, rest = x[:, :width], x[:, width:]
        mixed = sum(w * torch.tanh(op(part)) for w, op in zip(weights, self.ops, strict=True))
        return torch.cat([mixed, rest], dim=1)

    def wider(self, k: int) -> None:
        """Rebuild the ops for 1/k of the features, copying the overlapping weights (net2wider)."""
        old, self.k = self.ops, k
        width = FEATURES // k
        self.ops = nn.ModuleList(nn.Linear(width, width) for _ in old)
        with torch.no_grad():
            for new, o in zip(self.ops, old, strict=True):
                new.to(o.weight.dtype)
                w = o.weight.shape[0]
                new.weight[:w, :w].copy_(o.weight)
                new.bias[:w].copy_(o.bias)


class DirichletNet(nn.Module):
    """DrNAS-like supernet: Dirichlet-sampled op weights, KL regulariser, prune and widen."""

    def __init__(self, edges: int = 3, n_ops: int = 4, k: int = 2, reg_type: str = "l2",
                 reg_scale: float = 1e-3, sample: bool = True) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_Edge(n_ops, k) for _ in range(edges))
        self.classifier = nn.Linear(FEATURES, CLASSES)
        self.reg_type, self.reg_scale, self.sample = reg_type, reg_scale, sample
        self.mask: torch.Tensor | None = None
        self._initialize_alphas(edges, n_ops)

    def _initialize_alphas(self, edges: int, n_ops: int, dtype=torch.float64) -> None:
        # plain leaf tensors, as upstream (absent from parameters() and state_dict())
        self.alphas_normal = (1e-1 * torch.randn(edges, n_ops, dtype=dtype)).requires_grad_()
        self._arch_parameters = [self.alphas_normal]

    def arch_parameters(self) -> list[torch.Tensor]:
        return self._arch_parameters

    def concentration(self) -> torch.Tensor:
        return F.elu(self.alphas_normal) + 1

    def op_weights(self) -> torch.Tensor:
        if not self.sample:
            return F.softmax(self.alphas_normal, dim=-1)
        weights = Dirichlet(self.concentration()).rsample()  # a new sample on every forward
        if self.mask is not None:
            weights = weights * self.mask
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.op_weights()
        for edge, w in zip(self.edges, weights, strict=True):
            x = edge(x, w)
        return self.classifier(x)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self(x), y)
        if self.reg_type == "kl":
            anchor = Dirichlet(torch.ones_like(self.alphas_normal))
            loss = loss + self.reg_scale * kl_divergence(Dirichlet(self.concentration()),
                                                         anchor).sum()
        return loss

    def pruning(self, num_keep: int) -> None:
        with torch.no_grad():
            top = self.alphas_normal.topk(num_keep, dim=-1).indices
            mask = torch.zeros_like(self.alphas_normal).scatter_(1, top, 1.0)
            self.mask = mask if self.mask is None else mask * self.mask

    def wider(self, k: int) -> None:
        for edge in self.edges:
            edge.wider(k)


class NB201Net(nn.Module):
    """NB201-like supernet: one ``nn.Parameter`` alpha tensor of shape (edges, ops)."""

    def __init__(self, edges: int = 3, n_ops: int = 4) -> None:
        super().__init__()
        self.edges = nn.ModuleList(_Edge(n_ops, 1) for _ in range(edges))
        self.classifier = nn.Linear(FEATURES, CLASSES)
        self._arch_parameters = nn.Parameter(1e-1 * torch.randn(edges, n_ops))

    def arch_parameters(self) -> list[torch.Tensor]:
        return [self._arch_parameters]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self._arch_parameters, dim=-1)
        for edge, w in zip(self.edges, weights, strict=True):
            x = edge(x, w)
        return self.classifier(x)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


class ProjNet(NB201Net):
    """DARTS-PT-like: keyword ``return_logits`` on ``_loss``, ``get_weights()``, and a weight
    ``step`` that refuses a non-None ``shared`` from the architect."""

    def _loss(self, x, y, return_logits: bool = False):
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        return (loss, logits) if return_logits else loss

    def get_weights(self) -> list[torch.Tensor]:
        return [p for n, p in self.named_parameters() if n != "_arch_parameters"]

    def step(self, x, y, args, shared=None):
        assert shared is None, "gradient sharing disabled"
        loss, logits = self._loss(x, y, return_logits=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.get_weights(), args.grad_clip)
        self.optimizer.step()
        return logits, loss


def beta_decay_closed_form(alphas, epoch: int) -> list[torch.Tensor]:
    """The beta-decay gradient by hand: lambda(epoch) = 50 * epoch / 100, regulariser
    R(A) = mean over rows of logsumexp(A_row) per arch tensor, so dR/dA = softmax(A) / rows."""
    lam = 50 * epoch / 100
    return [lam * F.softmax(a.detach(), dim=-1) / a.shape[0] for a in alphas]


def fork_args(**overrides) -> SimpleNamespace:
    """The fields of the forks' DARTS-style parsers the architects read."""
    fields = dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-3, arch_weight_decay=1e-3,
                  learning_rate=0.025, grad_clip=5.0, unrolled=False)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def drnas_args(**overrides) -> SimpleNamespace:
    """DrNAS' DARTS-space parser: reg_type / reg_scale, no arch_weight_decay."""
    args = fork_args(reg_type="l2", reg_scale=1e-3, arch_learning_rate=6e-4)
    del args.arch_weight_decay
    for k, v in overrides.items():
        setattr(args, k, v)
    return args
