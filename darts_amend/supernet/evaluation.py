"""Evaluation (re-training) networks built from a genotype, and their cost counters.

``NetworkCIFAR`` and ``NetworkImageNet`` follow the DARTS evaluation networks: cells with
reductions at 1/3 and 2/3 of the depth, an auxiliary head after the cell at 2/3 depth, drop-path
on every non-identity edge during training. A per-cell genotype (S2) gives every cell its own
architecture. ``forward`` returns logits, or ``(logits, aux_logits)`` in training mode when the
network has an auxiliary head (the same convention as the search network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .genotypes import CellGenotype, Genotype
from .operations import (
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    drop_path,
    make_head,
    make_op,
    make_stem,
)

__all__ = ["EvalCell", "NetworkCIFAR", "NetworkImageNet", "count_parameters", "count_multiply_adds"]


class EvalCell(nn.Module):
    """A discrete cell: every node sums two operations applied to earlier states."""

    def __init__(
        self,
        genotype: CellGenotype,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.inputs = [idx for _, idx in genotype.edges]
        self.concat = list(genotype.concat)
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and idx < 2 else 1, affine=True)
            for name, idx in genotype.edges
        )

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            total = None
            for j in (2 * node, 2 * node + 1):
                op = self.ops[j]
                h = op(states[self.inputs[j]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _EvalNetwork(nn.Module):
    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        in_channels: int,
        drop_path_prob: float,
        dropout: float,
        stem: str,
    ) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise TypeError(
                f"genotype must be a Genotype, got {type(genotype).__name__} "
                "(use Genotype.parse / Genotype.from_json)"
            )
        for name, value in (
            ("C", C),
            ("num_classes", num_classes),
            ("layers", layers),
            ("in_channels", in_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"invalid {name}: {value}")
        if genotype.num_cells is not None and genotype.num_cells != layers:
            raise ValueError(
                f"per-cell genotype has {genotype.num_cells} cells but layers={layers}"
            )
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"invalid drop_path_prob: {drop_path_prob}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"invalid dropout: {dropout}")
        self.genotype = genotype
        self.in_channels = in_channels
        self.drop_path_prob = float(drop_path_prob)
        self.layers = layers
        if stem == "cifar":
            C_curr = 3 * C  # stem multiplier 3, as DARTS
            self.stem0, self.stem1 = make_stem("cifar", in_channels, C_curr)
            reduction_prev = False
        else:
            C_curr = C
            self.stem0, self.stem1 = make_stem("imagenet", in_channels, C_curr)
            reduction_prev = True
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.reduction_layers = sorted({layers // 3, 2 * layers // 3})
        self.aux_layer = 2 * layers // 3
        self.cells = nn.ModuleList()
        C_aux = C_prev
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            cell = EvalCell(
                genotype.cell(i, reduction), C_prev_prev, C_prev, C_curr, reduction, reduction_prev
            )
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_layer:
                C_aux = C_prev
        self.auxiliary_head, self.global_pooling, self.dropout, self.classifier = make_head(
            C_prev, C_aux, num_classes, auxiliary=auxiliary, stem=stem, dropout=dropout
        )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_layer and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.dropout(self.global_pooling(s1).flatten(1)))
        return (logits, aux) if aux is not None else logits


class NetworkCIFAR(_EvalNetwork):
    """DARTS' CIFAR evaluation network (3x3 conv stem with 3C channels, stride 1)."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        in_channels: int = 3,
        drop_path_prob: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            C,
            num_classes,
            layers,
            auxiliary,
            genotype,
            in_channels,
            drop_path_prob,
            dropout,
            stem="cifar",
        )


class NetworkImageNet(_EvalNetwork):
    """DARTS' ImageNet evaluation network (two-stage stem, stride 8; 224x224 -> 28x28 cells)."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        in_channels: int = 3,
        drop_path_prob: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            C,
            num_classes,
            layers,
            auxiliary,
            genotype,
            in_channels,
            drop_path_prob,
            dropout,
            stem="imagenet",
        )


def count_parameters(model: nn.Module, *, include_auxiliary: bool = False) -> int:
    """Trainable parameters, without the auxiliary head (as DARTS reports) and without
    architecture parameters (alphas / betas) when the model has them."""
    arch = {id(p) for p in model.arch_parameters()} if hasattr(model, "arch_parameters") else set()
    total = 0
    for name, p in model.named_parameters():
        if id(p) in arch or not p.requires_grad:
            continue
        if not include_auxiliary and (
            name.startswith("auxiliary_head.") or ".auxiliary_head." in name
        ):
            continue
        total += p.numel()
    return total


def count_multiply_adds(
    model: nn.Module, input_size: Sequence[int] = (224, 224), in_channels: int | None = None
) -> int:
    """Multiply-adds of one forward pass on one image (eval mode, so no auxiliary head).

    Counts convolutions (output elements x input channels per group x kernel area) and linear
    layers (in x out), via forward hooks; pooling, BN, ReLU and additions are not counted (the
    usual convention of the "mobile setting" < 600M). ``input_size`` is ``(H, W)`` or
    ``(C, H, W)``; the channel count defaults to the model's ``in_channels`` (else 3).
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        in_channels, size = size[0], size[1:]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be (H, W) or (C, H, W), got {tuple(input_size)}")
    if in_channels is None:
        in_channels = int(getattr(model, "in_channels", 3))
    total = 0

    def conv_hook(module: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        ref = next(model.parameters())
    except StopIteration:
        ref = torch.empty(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *size, device=ref.device, dtype=ref.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
