"""Small supernets with the interface quirks of the upstream DARTS-family repos, and replays of
their loops.

Written for this project (no upstream code): each class reproduces only what an adapter can observe.

* ``DartsLikeNet``   -- quark0/darts ``cnn/model_search.py``: alphas are plain leaf tensors kept in
a Python
  list (not ``nn.Parameter``, so absent from ``parameters()`` / ``state_dict()`` / ``.to()``),
  ``_loss(x, y)``
  through a stored criterion, ``new()`` (counted, so tests can prove it is never called),
  ``genotype()``,
  ``alphas_normal`` / ``alphas_reduce``, ReLU + BatchNorm ops.
* ``PCDartsLikeNet`` -- yuhuixu1993/PC-DARTS: the same plus partial channels (1/K of the channels go
  through the mixed op, the rest bypass it, then a channel shuffle) and edge normalisation
  ``betas_normal``
  / ``betas_reduce``: ``arch_parameters()`` returns four tensors.
* ``PDartsLikeNet``  -- chenxin061/pdarts: alphas registered as ``nn.Parameter`` (inside
``parameters()``),
  per-edge op switches, dropout after skip-connect (``p`` + ``update_p()``), no ``new()``, no
  ``genotype()``;
  the loop wraps it in ``nn.DataParallel``.

The ``*_replay`` functions re-state, in our own words, what the upstream architect / inline update
compute,
so the adapters can be compared against an independent reference (``upstream_second_order_grads`` is
also
the baseline of ``bench/adapter_cost.py``).  The tests at the bottom check that the fixtures really
have the
quirks they claim: a fixture without its quirk would make the adapter tests meaningless.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import one_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)

__all__ = [
    "OPS",
    "DartsLikeNet",
    "PCDartsLikeNet",
    "PDartsLikeNet",
    "device",
    "build",
    "make_batches",
    "darts_args",
    "upstream_first_order_grads",
    "upstream_second_order_grads",
    "pdarts_inline_alpha_step",
]

OPS = ("none", "skip_connect", "conv_3x3", "avg_pool_3x3")


def device() -> torch.device:
    """Test device from ``TORCH_DEVICE`` (default cpu), as the rest of the test-suite."""
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


# -----------------------------------------------------------------------------------------------
# ops
class _Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, affine=False),
    )


def _make_op(name: str, channels: int, stride: int) -> nn.Module:
    if name == "none":
        return _Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else _relu_conv_bn(channels, channels, 1, stride)
    if name == "conv_3x3":
        return _relu_conv_bn(channels, channels, 3, stride)
    if name == "avg_pool_3x3":
        return nn.Sequential(
            nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
            nn.BatchNorm2d(channels, affine=False),
        )
    raise ValueError(f"unknown op {name!r}")


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _MixedOp(nn.Module):
    """Weighted sum of ops; ``partial`` > 1 sends only 1/partial of the channels through them
    (PC-DARTS)."""

    def __init__(
        self,
        channels: int,
        stride: int,
        ops: Sequence[str],
        partial: int = 1,
        skip_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.partial = partial
        self.stride = stride
        self.ops = nn.ModuleList()
        for name in ops:
            op = _make_op(name, channels // partial, stride)
            if name == "skip_connect" and stride == 1 and skip_dropout > 0:
                op = nn.Sequential(op, nn.Dropout(skip_dropout))  # P-DARTS: dropout after skip
            self.ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))
        k = x.shape[1] // self.partial
        head, rest = x[:, :k], x[:, k:]
        mixed = sum(w * op(head) for w, op in zip(weights, self.ops, strict=True))
        if self.stride > 1:
            rest = F.max_pool2d(rest, 2, 2)
        return _channel_shuffle(torch.cat([mixed, rest], dim=1), self.partial)


class _Cell(nn.Module):
    """``steps`` nodes; node i sums one mixed op per earlier state (2 + i inputs): 2 + 3 = 5 edges
    for 2 steps."""

    def __init__(
        self,
        steps: int,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        op_lists: Sequence[Sequence[str]],
        partial: int,
        skip_dropout: float,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.pre0 = _relu_conv_bn(c_pp, c, 1, 2 if reduction_prev else 1)
        self.pre1 = _relu_conv_bn(c_p, c, 1, 1)
        self.edges = nn.ModuleList()
        edge = 0
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(_MixedOp(c, stride, op_lists[edge], partial, skip_dropout))
                edge += 1

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        edge_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            terms = []
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j])
                if edge_weights is not None:
                    out = edge_weights[offset + j] * out
                terms.append(out)
            offset += len(states)
            states.append(sum(terms))
        return torch.cat(states[2:], dim=1)


def _num_edges(steps: int) -> int:
    return sum(2 + i for i in range(steps))


class _TinySearchNet(nn.Module):
    """Shared body: stem (conv + affine BN), ``layers`` cells (reduction at layers//3 and
    2*layers//3)."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        criterion: nn.Module,
        *,
        steps: int = 2,
        in_channels: int = 3,
        partial: int = 1,
        skip_dropout: float = 0.0,
        switches: Sequence[Sequence[bool]] | None = None,
    ) -> None:
        super().__init__()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._criterion = criterion
        self._steps = steps
        self._in_channels = in_channels
        k = _num_edges(steps)
        switches = switches if switches is not None else [[True] * len(OPS)] * k
        self._op_lists = [[name for name, on in zip(OPS, sw, strict=True) if on] for sw in switches]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 2 * C, 3, padding=1, bias=False), nn.BatchNorm2d(2 * C)
        )
        c_pp, c_p, c = 2 * C, 2 * C, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            self.cells.append(
                _Cell(
                    steps,
                    c_pp,
                    c_p,
                    c,
                    reduction,
                    reduction_prev,
                    self._op_lists,
                    partial,
                    skip_dropout,
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, steps * c
        self.classifier = nn.Linear(c_p, num_classes)

    def _cell_weights(self, reduction: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights, edge_weights = self._cell_weights(cell.reduction)
            s0, s1 = s1, cell(s0, s1, weights, edge_weights)
        return self.classifier(s1.mean(dim=(2, 3)))

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._criterion(self(x), y)


class DartsLikeNet(_TinySearchNet):
    """quark0/darts interface: leaf-tensor alphas in a plain list, ``_loss``, ``new()``,
    ``genotype()``."""

    def __init__(
        self,
        C: int = 4,
        num_classes: int = 3,
        layers: int = 3,
        criterion: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(C, num_classes, layers, criterion or nn.CrossEntropyLoss(), **kwargs)
        self._kwargs = kwargs
        self.new_calls = 0
        self._initialize_alphas()

    def _initialize_alphas(self) -> None:
        k, n_ops = _num_edges(self._steps), len(OPS)
        ref = self.stem[0].weight
        # Not nn.Parameter: invisible to parameters(), state_dict(), .to() and DDP -- exactly the
        # upstream quirk.
        self.alphas_normal = (
            1e-3 * torch.randn(k, n_ops, dtype=ref.dtype, device=ref.device)
        ).requires_grad_()
        self.alphas_reduce = (
            1e-3 * torch.randn(k, n_ops, dtype=ref.dtype, device=ref.device)
        ).requires_grad_()
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def _cell_weights(self, reduction):
        alphas = self.alphas_reduce if reduction else self.alphas_normal
        return F.softmax(alphas, dim=-1), None

    def arch_parameters(self) -> list[torch.Tensor]:
        return self._arch_parameters

    def new(self) -> DartsLikeNet:
        """Upstream's fresh copy with the same alphas (weights re-initialised). Counted: adapters
        must not call it."""
        self.new_calls += 1
        ref = self.stem[0].weight
        twin = type(self)(self._C, self._num_classes, self._layers, self._criterion, **self._kwargs)
        twin = twin.to(device=ref.device, dtype=ref.dtype)
        # re-create the leaf alphas on the right device/dtype, as upstream's .cuda() does
        twin._initialize_alphas()
        for mine, theirs in zip(twin.arch_parameters(), self.arch_parameters(), strict=True):
            mine.data.copy_(theirs.data)
        return twin

    def genotype(self) -> list[tuple[str, int]]:
        weights = F.softmax(self.alphas_normal.detach(), dim=-1)
        weights[:, OPS.index("none")] = -1.0
        return [(OPS[int(row.argmax())], i) for i, row in enumerate(weights)]


class PCDartsLikeNet(DartsLikeNet):
    """PC-DARTS interface: partial channels + edge normalisation betas -> four arch tensors."""

    def __init__(
        self,
        C: int = 4,
        num_classes: int = 3,
        layers: int = 3,
        criterion: nn.Module | None = None,
        partial: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(C, num_classes, layers, criterion, partial=partial, **kwargs)

    def _initialize_alphas(self) -> None:
        super()._initialize_alphas()
        k, ref = _num_edges(self._steps), self.stem[0].weight
        self.betas_normal = (
            1e-3 * torch.randn(k, dtype=ref.dtype, device=ref.device)
        ).requires_grad_()
        self.betas_reduce = (
            1e-3 * torch.randn(k, dtype=ref.dtype, device=ref.device)
        ).requires_grad_()
        self._arch_parameters = [
            self.alphas_normal,
            self.alphas_reduce,
            self.betas_normal,
            self.betas_reduce,
        ]

    def new(self) -> PCDartsLikeNet:
        self.new_calls += 1
        ref = self.stem[0].weight
        kwargs = dict(self._kwargs)
        kwargs.pop("partial", None)
        twin = type(self)(
            self._C,
            self._num_classes,
            self._layers,
            self._criterion,
            partial=self._kwargs.get("partial", 2),
            **kwargs,
        ).to(device=ref.device, dtype=ref.dtype)
        twin._initialize_alphas()
        for mine, theirs in zip(twin.arch_parameters(), self.arch_parameters(), strict=True):
            mine.data.copy_(theirs.data)
        return twin

    def _edge_softmax(self, betas: torch.Tensor) -> torch.Tensor:
        # softmax over the inputs of each node: [0:2], [2:5], ...
        chunks, start = [], 0
        for i in range(self._steps):
            chunks.append(F.softmax(betas[start : start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(chunks)

    def _cell_weights(self, reduction):
        alphas = self.alphas_reduce if reduction else self.alphas_normal
        betas = self.betas_reduce if reduction else self.betas_normal
        return F.softmax(alphas, dim=-1), self._edge_softmax(betas)


class PDartsLikeNet(_TinySearchNet):
    """P-DARTS interface: nn.Parameter alphas (inside parameters()), op switches, dropout after
    skip."""

    def __init__(
        self,
        C: int = 4,
        num_classes: int = 3,
        layers: int = 3,
        criterion: nn.Module | None = None,
        switches: Sequence[Sequence[bool]] | None = None,
        p: float = 0.0,
        steps: int = 2,
    ) -> None:
        switches = switches if switches is not None else [[True] * len(OPS)] * _num_edges(steps)
        n_on = {sum(sw) for sw in switches}
        if len(n_on) != 1:
            raise ValueError("every edge must keep the same number of ops")
        super().__init__(
            C,
            num_classes,
            layers,
            criterion or nn.CrossEntropyLoss(),
            steps=steps,
            switches=switches,
            skip_dropout=p,
        )
        self.p = p
        self.update_p()
        k = _num_edges(steps)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n_on.pop()))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn_like(self.alphas_normal))
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def update_p(self) -> None:
        """Push ``self.p`` into every dropout-after-skip (P-DARTS decays it during a stage)."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.p

    def _cell_weights(self, reduction):
        alphas = self.alphas_reduce if reduction else self.alphas_normal
        return F.softmax(alphas, dim=-1), None

    def arch_parameters(self) -> list[nn.Parameter]:
        return self._arch_parameters


# ------------------------------------------------------------------------------------ data and args
def build(cls, *, seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs) -> nn.Module:
    """A seeded fixture net on the test device in ``dtype``.

    Leaf-tensor alphas do not follow ``.to()`` (the upstream quirk), so DARTS-like nets re-create
    them on the
    right device/dtype afterwards, as upstream creates them directly with ``.cuda()``.
    """
    torch.manual_seed(seed)
    net = cls(**kwargs).to(device=device(), dtype=dtype)
    if isinstance(net, DartsLikeNet):
        net._initialize_alphas()
    return net


def make_batches(
    n_batches: int,
    batch: int = 8,
    *,
    size: int = 8,
    num_classes: int = 3,
    in_channels: int = 3,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic (inputs, targets) batches on the test device; targets depend on the inputs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, in_channels, size, size, generator=gen, dtype=dtype)
        y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, 1].mean(dim=(1, 2)) > 0).long()
        out.append((x.to(device()), y.clamp_max(num_classes - 1).to(device())))
    return out


def darts_args(**overrides) -> SimpleNamespace:
    """The fields the upstream DARTS train_search.py parser defines (and the Architect reads)."""
    fields = dict(
        momentum=0.9,
        weight_decay=3e-4,
        arch_learning_rate=3e-4,
        arch_weight_decay=1e-3,
        learning_rate=0.025,
        grad_clip=5.0,
        unrolled=False,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


# ----------------------------------------------------------------------------------------- replays
def upstream_first_order_grads(
    model: nn.Module, x_valid: torch.Tensor, y_valid: torch.Tensor
) -> list[torch.Tensor]:
    """What upstream ``_backward_step`` leaves in the alphas' ``.grad``: d L_val / d alpha at the
    current w."""
    loss = model._loss(x_valid, y_valid)
    return [g.detach() for g in torch.autograd.grad(loss, model.arch_parameters())]


def upstream_second_order_grads(
    model: DartsLikeNet,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor,
    y_valid: torch.Tensor,
    eta: float,
    network_optimizer: torch.optim.Optimizer,
    momentum: float,
    weight_decay: float,
    r: float = 1e-2,
) -> list[torch.Tensor]:
    """Independent re-statement of upstream's second-order DARTS step (the algorithm, not its code).

    Flattens the weights, builds the unrolled w' = w - eta (momentum * buf + dL_train/dw + wd w) in
    a model made
    by ``new()``, takes d L_val(w') / d(alpha, w'), then the mixed product by central differences at
    w +- R v, R = r / ||v||, on the original model, moving the weights through ``.data`` and back as
    upstream
    does (so w drifts by rounding and BN running stats move: run it on a copy).
    Returns the hypergradient dL_val(w')/dalpha - eta * B v.
    """
    weights = list(model.parameters())
    loss = model._loss(x_train, y_train)
    grads = torch.autograd.grad(loss, weights)
    theta = torch.cat([w.detach().reshape(-1) for w in weights])
    buffers = [network_optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
    if all(b is not None for b in buffers):  # upstream: any missing buffer -> no momentum at all
        moment = torch.cat([b.reshape(-1) for b in buffers]) * momentum
    else:
        moment = torch.zeros_like(theta)
    dtheta = torch.cat([g.reshape(-1) for g in grads]) + weight_decay * theta
    new_theta = theta - eta * (moment + dtheta)
    unrolled = model.new()
    state = model.state_dict()
    offset = 0
    for name, w in model.named_parameters():
        state[name] = new_theta[offset : offset + w.numel()].view_as(w)
        offset += w.numel()
    unrolled.load_state_dict(state)
    unrolled.train(model.training)
    val_loss = unrolled._loss(x_valid, y_valid)
    u_weights = list(unrolled.parameters())
    out = torch.autograd.grad(val_loss, list(unrolled.arch_parameters()) + u_weights)
    dalpha, vector = out[: len(unrolled.arch_parameters())], out[len(unrolled.arch_parameters()) :]
    radius = r / torch.cat([v.reshape(-1) for v in vector]).norm()
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.add_(v, alpha=float(radius))
    g_plus = torch.autograd.grad(model._loss(x_train, y_train), model.arch_parameters())
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.sub_(v, alpha=2 * float(radius))
    g_minus = torch.autograd.grad(model._loss(x_train, y_train), model.arch_parameters())
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.add_(v, alpha=float(radius))
    return [
        (da - eta * (gp - gm) / (2 * radius)).detach()
        for da, gp, gm in zip(dalpha, g_plus, g_minus, strict=True)
    ]


def pdarts_inline_alpha_step(
    model: nn.Module,
    optimizer_a: torch.optim.Optimizer,
    criterion: nn.Module,
    x_search: torch.Tensor,
    y_search: torch.Tensor,
    grad_clip: float,
) -> None:
    """P-DARTS' inline alpha update: first-order backward through the wrapper, clip, Adam."""
    optimizer_a.zero_grad()
    loss_a = criterion(model(x_search), y_search)
    loss_a.backward()
    module = model.module if hasattr(model, "module") else model
    nn.utils.clip_grad_norm_(module.arch_parameters(), grad_clip)
    optimizer_a.step()


# -------------------------------------------------------------------- the fixtures have their
# quirks
def test_darts_like_alphas_are_unregistered_leaf_tensors():
    net = build(DartsLikeNet)
    alphas = net.arch_parameters()
    assert len(alphas) == 2 and all(a.is_leaf and a.requires_grad for a in alphas)
    assert not any(isinstance(a, nn.Parameter) for a in alphas)
    ids = {id(p) for p in net.parameters()}
    assert not any(id(a) in ids for a in alphas)
    assert not any("alpha" in k for k in net.state_dict())
    x, y = make_batches(1)[0]
    assert net._loss(x, y).ndim == 0 and net.genotype()


def test_darts_like_new_copies_alphas_and_counts():
    net = build(DartsLikeNet)
    twin = net.new()
    assert net.new_calls == 1
    for a, b in zip(net.arch_parameters(), twin.arch_parameters(), strict=True):
        assert torch.equal(a, b) and a is not b


def test_pc_darts_like_has_four_arch_tensors_that_all_matter():
    net = build(PCDartsLikeNet)
    arch = net.arch_parameters()
    assert len(arch) == 4 and arch[2] is net.betas_normal and arch[3] is net.betas_reduce
    x, y = make_batches(1)[0]
    grads = torch.autograd.grad(net._loss(x, y), arch)
    assert all(g.abs().sum() > 0 for g in grads)
    assert net.cells[0].edges[0].partial == 2


def test_p_darts_like_alphas_are_parameters_and_dropout_after_skip_is_live():
    net = build(PDartsLikeNet, p=0.5)
    ids = {id(p) for p in net.parameters()}
    assert all(id(a) in ids for a in net.arch_parameters())
    assert not hasattr(net, "new") and not hasattr(net, "genotype")
    x, _ = make_batches(1)[0]
    net.train()
    assert not torch.equal(net(x), net(x))  # repeated forward passes differ
    net.p = 0.0
    net.update_p()
    assert torch.equal(net(x), net(x))


def test_p_darts_like_switches_shrink_the_alphas():
    switches = [[False, True, True, False]] * _num_edges(2)
    net = PDartsLikeNet(switches=switches)
    assert net.alphas_normal.shape == (5, 2)
    assert all(len(e.ops) == 2 for e in net.cells[0].edges)


def test_upstream_second_order_replay_reduces_to_first_order_at_eta_zero():
    net = build(DartsLikeNet)
    (xt, yt), (xv, yv) = make_batches(2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    eta = 0.1
    g = upstream_second_order_grads(copy.deepcopy(net), xt, yt, xv, yv, eta, opt, 0.9, 0.0)
    # eta -> 0 limit: the replay must reduce to the first-order gradient.
    g0 = upstream_second_order_grads(copy.deepcopy(net), xt, yt, xv, yv, 0.0, opt, 0.9, 0.0)
    ref0 = upstream_first_order_grads(copy.deepcopy(net), xv, yv)
    for a, b in zip(g0, ref0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(g, g0, strict=True))
    assert net.new_calls == 0  # the replay ran on copies


@pytest.mark.parametrize("cls", [DartsLikeNet, PCDartsLikeNet, PDartsLikeNet])
def test_fixtures_run_in_float64_on_the_test_device(cls):
    net = build(cls)
    x, y = make_batches(1)[0]
    assert net(x).dtype == torch.float64 and net(x).shape == (8, 3)
