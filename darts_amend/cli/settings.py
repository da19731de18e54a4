"""What a setting is: the run configurations' declarations, defaults, valid ranges and presets.

:class:`SearchConfig` (``darts-amend search``) and :class:`TrainConfig` (``darts-amend train``)
are dataclasses with the paper's defaults; each field declares its help, its valid range
(:class:`ValidRange`), its choices and an old spelling (``alias``). Every field is a flag, a
YAML key and a ``config.json`` key; reading, writing and checking them is
:mod:`darts_amend.cli.config`. Flag names keep upstream DARTS' spelling where one exists
(``--arch_learning_rate``, ``--init_channels``, ``--layers``, ``--batch_size``, ...).

The choices of ``--dataset``, ``--space``, ``--estimator`` and ``--hvp_mode`` are the library's
registries (``data.DATASETS``, ``supernet.SPACES``, ``options.ESTIMATOR_OPTIONS``,
``options.OPTIONS["mode"]``). A search setting that is an estimator option is declared with
:func:`_option`: its default, valid range and choices come from ``options.OPTIONS``, and the
field records the option's name, the one mapping from setting to option
(:data:`SETTING_OPTIONS`) that :func:`estimator_options`, the error messages
(:data:`OPTION_FLAGS`) and the ``applies to ... only`` checks read. ``--second_order_batch 0``
is the library's ``second_order_batch=None`` (the whole batch).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from darts_amend.data import DATASETS
from darts_amend.options import ESTIMATOR_OPTIONS, OPTIONS
from darts_amend.supernet.spaces import SPACES

__all__ = [
    "ValidRange",
    "SearchConfig",
    "TrainConfig",
    "train_family_defaults",
    "SEARCH_PRESETS",
    "TRAIN_PRESETS",
    "RUN_KEYS",
    "OPTION_FLAGS",
    "OPTIONS_NOT_SETTINGS",
    "SETTING_OPTIONS",
    "estimator_options",
    "option_value",
]


@dataclass(frozen=True)
class ValidRange:
    """A numeric setting's declared valid range, written as an interval: ``"[0, 1)"``,
    ``"(0, inf)"``, ``"[1, inf)"``; one declaration per setting (``_f(..., valid=...)``), checked
    for flags, YAML files and stored configs alike."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> ValidRange:
        text = text.strip()
        low, high = (float(x) for x in text[1:-1].split(","))
        return cls(low, high, text[0] == "[", text[-1] == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else repr(x)

        if math.isinf(self.high):
            return f"{'>=' if self.low_closed else '>'} {num(self.low)}"
        return (f"in {'[' if self.low_closed else '('}{num(self.low)}, {num(self.high)}"
                f"{']' if self.high_closed else ')'}")


def _f(default: Any, help: str, *, choices: tuple | None = None, alias: str | None = None,
       valid: str | None = None, option: str | None = None):
    return field(default=default, metadata={
        "help": help, "choices": choices, "alias": alias,
        "valid": ValidRange.parse(valid) if valid else None, "option": option})


def _option(option: str, help: str, *, alias: str | None = None):
    """A search setting that is the estimator option ``option``: default, valid range and
    choices from its :class:`~darts_amend.options.OptionSpec`. A ``sub_batch`` option (None or
    an integer >= 1) is an integer >= 0 on the command line, 0 standing for None."""
    spec = OPTIONS[option]
    default, valid, choices = spec.default, None, None
    if spec.kind == "number":
        valid = f"{'(' if spec.strict else '['}{spec.low:g}, inf)"
    elif spec.kind == "positive":
        valid = "(0, inf)"
    elif spec.kind == "count":
        valid = "[1, inf)"
    elif spec.kind == "sub_batch":
        default, valid = 0, "[0, inf)"
    elif spec.kind == "choice":
        choices = spec.choices
    elif spec.kind != "flag":
        raise TypeError(f"option {option!r} of kind {spec.kind!r} has no command-line form")
    return _f(default, help, choices=choices, alias=alias, valid=valid, option=option)


@dataclass
class SearchConfig:
    """``darts-amend search``: the paper's defaults (Sec. 4.1; docs/usage.md)."""

    dataset: str = _f("digits", "data set", choices=DATASETS)
    data: str | None = _f(None, "data folder (cifar*/imagenet/folder)")
    download: bool = _f(False, "download CIFAR with torchvision (needs internet)")
    subset: float = _f(1.0, "class-stratified fraction of the training set to use", valid="(0, 1]")
    image_size: int | None = _f(None, "image size for imagenet/folder/fake", valid="[1, inf)")
    fake_size: int = _f(256, "number of images of the fake data set", valid="[2, inf)")
    train_portion: float = _f(0.5, "fraction of the training set that trains weights; the rest "
                                   "trains alphas", valid="(0, 1)")
    space: str = _f("darts", "search space (s1r-s4r: RobustDARTS' reduced spaces; nb201: the "
                             "NAS-Bench-201 cell)",
                    choices=tuple(SPACES))
    layers: int | None = _f(None, "cells in the search network (default: 8, or 20 for s2; "
                                  "nb201: cells per stage, default 5)", valid="[1, inf)")
    init_channels: int = _f(16, "base channel number C", valid="[1, inf)")
    partial_channels: int = _f(1, "PC-DARTS partial-channel factor K (1 = off)", valid="[1, inf)")
    edge_normalization: bool = _f(False, "PC-DARTS edge normalisation (betas)")
    drop_path_prob: float = _f(0.0, "drop-path probability in the search network", valid="[0, 1)")
    dropout: float = _f(0.0, "dropout before the classifier of the search network", valid="[0, 1)")
    auxiliary: bool = _f(False, "auxiliary tower during search")
    auxiliary_weight: float = _f(0.4, "weight of the auxiliary loss", valid="[0, inf)")
    cutout: bool = _f(False, "cutout augmentation on the training data")
    cutout_length: int = _f(16, "cutout square side (pixels)", valid="[1, inf)")
    epochs: int = _f(100, "search epochs (the maximum, with --until-converged)", valid="[1, inf)")
    batch_size: int = _f(96, "global batch size (split over torchrun processes)", valid="[1, inf)")
    learning_rate: float = _f(0.025, "weight learning rate (SGD, cosine schedule)",
                              valid="(0, inf)")
    learning_rate_min: float = _f(0.001, "final weight learning rate", valid="[0, inf)")
    momentum: float = _f(0.9, "SGD momentum", valid="[0, 1)")
    weight_decay: float = _f(3e-4, "weight decay of the weights", valid="[0, inf)")
    grad_clip: float = _f(5.0, "gradient norm clip of the weights (0 = off)", valid="[0, inf)")
    estimator: str = _f("amended", "hypergradient estimator", choices=tuple(ESTIMATOR_OPTIONS))
    # the estimator options (darts_amend.options.OPTIONS: default, range, choices)
    eta: float = _option("eta", "amending coefficient (estimator amended)", alias="--amend_eta")
    hvp_mode: str = _option("mode", "Hessian products: exact (double backward), "
                                    "finite_difference (central) or forward_difference "
                                    "(one-sided, one pass fewer) (every estimator but "
                                    "first_order)")
    fd_r: float = _option("r", "finite-difference step scale r (step = r / ||v||)")
    hvp_chunks: int = _option("chunks", "accumulate the Hessian products over K micro-batches "
                                        "of the training batch (memory ~1/K; exact only without "
                                        "train-mode BatchNorm)", alias="--amend_chunks")
    second_order_batch: int = _option("second_order_batch", "Hessian products on the first M "
                                                            "training samples only (0 = the "
                                                            "whole batch; cheaper, a noisier "
                                                            "estimator)",
                                      alias="--amend_second_order_batch")
    fast_depthwise: bool = _option("fast_depthwise", "cheaper double backward through grouped "
                                                     "convolutions (exact products; same values)")
    cg_iterations: int = _option("iterations", "conjugate-gradient iterations (implicit_cg)")
    cg_damping: float = _option("damping", "damping added to H (implicit_cg)")
    neumann_terms: int = _option("terms", "Neumann series terms (implicit_neumann)")
    neumann_gamma: float = _option("gamma", "Neumann step size gamma (implicit_neumann)")
    arch_learning_rate: float = _f(3e-4, "alpha learning rate (Adam)", valid="(0, inf)")
    arch_weight_decay: float = _f(1e-3, "alpha weight decay", valid="[0, inf)")
    arch_beta1: float = _f(0.5, "Adam beta1 of the alphas", valid="[0, 1)")
    arch_beta2: float = _f(0.999, "Adam beta2 of the alphas", valid="[0, 1)")
    until_converged: int = _f(0, "stop once every kept op weighs >= --converge_threshold and the "
                                 "genotype is unchanged for this many epochs (0 = off)",
                              alias="--until-converged", valid="[0, inf)")
    converge_threshold: float = _f(0.5, "kept-op softmax weight of the convergence rule",
                                   valid="(0, 1]")
    time_limit: float = _f(0.0, "stop after the epoch in which this many seconds of this "
                                "invocation have passed (0 = off); --resume continues",
                           valid="[0, inf)")
    diag_every: int = _f(0, "every N epochs also measure the alpha-Hessian eigenvalue and the "
                            "estimators' alignment with implicit CG (0 = only the cheap "
                            "skip-share / entropy / kept-weight signals, every epoch)",
                         valid="[0, inf)")
    early_stop: bool = _f(False, "RobustDARTS-style early stop (DARTS-ES, needs --diag_every): "
                                 "stop when the local mean of the alpha-Hessian eigenvalue grows "
                                 "by more than --early_stop_factor and keep the genotype of the "
                                 "earlier window's centre epoch")
    early_stop_window: int = _f(5, "eigenvalue measurements averaged into one local mean",
                                valid="[1, inf)")
    early_stop_lag: int = _f(4, "measurements between the two local means compared",
                             valid="[1, inf)")
    early_stop_factor: float = _f(1.3, "growth ratio of the local mean that stops (> 1)",
                                  valid="(1, inf)")
    early_stop_start: int = _f(10, "earliest epoch the search may be reverted to",
                               valid="[0, inf)")
    steps_per_epoch: int = _f(0, "cap on steps per epoch (0 = the whole weight half)",
                              valid="[0, inf)")
    seed: int = _f(2, "random seed", valid="[0, 4294967295]")
    workers: int | None = _f(None, "data-loader workers (default: 0 for digits/fake, "
                             "else min(4, CPUs))", valid="[0, inf)")
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    threads: int | None = _f(None, "CPU threads for torch (default: torch's choice; 1 is often "
                                   "fastest on a busy or small machine)", valid="[1, inf)")
    progress: bool = _f(True, "tqdm progress bars")
    plots: bool = _f(True, "write PNG plots at the end")


@dataclass
class TrainConfig:
    """``darts-amend train``: re-training; ``None`` = the data set family's paper default."""

    genotype: str = _f("DARTS_V2", "genotype.json, a search output folder, or a named genotype")
    dataset: str = _f("cifar10", "data set", choices=DATASETS)
    data: str | None = _f(None, "data folder (cifar*/imagenet/folder)")
    download: bool = _f(False, "download CIFAR with torchvision (needs internet)")
    subset: float = _f(1.0, "class-stratified fraction of the training set to use", valid="(0, 1]")
    image_size: int | None = _f(None, "image size for imagenet/folder/fake", valid="[1, inf)")
    fake_size: int = _f(256, "number of images of the fake data set", valid="[2, inf)")
    layers: int | None = _f(None, "cells (default: 20 CIFAR, 14 ImageNet, or the genotype's "
                                  "own count for a per-cell genotype; an NB201 cell: cells per "
                                  "stage, default 5)", valid="[1, inf)")
    init_channels: int | None = _f(None, "base channels C (default: 36 CIFAR, 42 ImageNet)",
                                   valid="[1, inf)")
    epochs: int | None = _f(None, "epochs (default: 600 CIFAR, 250 ImageNet)", valid="[1, inf)")
    batch_size: int | None = _f(None, "global batch size (default: 96 CIFAR, 1024 ImageNet)",
                                valid="[1, inf)")
    learning_rate: float | None = _f(None, "initial learning rate (default: 0.025 / 0.5)",
                                     valid="(0, inf)")
    learning_rate_min: float = _f(0.0, "final learning rate of the cosine schedule",
                                  valid="[0, inf)")
    lr_schedule: str | None = _f(None, "cosine (CIFAR default) or linear (ImageNet default)",
                                 choices=("cosine", "linear"))
    momentum: float = _f(0.9, "SGD momentum", valid="[0, 1)")
    weight_decay: float | None = _f(None, "weight decay (default: 3e-4 CIFAR, 3e-5 ImageNet)",
                                    valid="[0, inf)")
    grad_clip: float = _f(5.0, "gradient norm clip (0 = off)", valid="[0, inf)")
    auxiliary: bool = _f(True, "auxiliary tower")
    auxiliary_weight: float = _f(0.4, "weight of the auxiliary loss", valid="[0, inf)")
    drop_path_prob: float | None = _f(None, "final drop-path probability, ramped linearly "
                                            "(default: 0.2 CIFAR, 0 ImageNet)", valid="[0, 1)")
    cutout: bool | None = _f(None, "cutout augmentation (default: on for CIFAR, off ImageNet)")
    cutout_length: int = _f(16, "cutout square side (pixels)", valid="[1, inf)")
    label_smooth: float | None = _f(None, "label smoothing (default: 0 CIFAR, 0.1 ImageNet)",
                                    valid="[0, 1)")
    amp: bool = _f(False, "mixed precision: float16 autocast + grad scaling on CUDA, "
                          "bfloat16 autocast on CPU")
    steps_per_epoch: int = _f(0, "cap on steps per epoch (0 = the whole training set)",
                              valid="[0, inf)")
    time_limit: float = _f(0.0, "stop after the epoch in which this many seconds of this "
                                "invocation have passed (0 = off); --resume continues",
                           valid="[0, inf)")
    seed: int = _f(0, "random seed", valid="[0, 4294967295]")
    workers: int | None = _f(None, "data-loader workers (default: 0 for digits/fake, "
                             "else min(4, CPUs))", valid="[0, inf)")
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    threads: int | None = _f(None, "CPU threads for torch (default: torch's choice; 1 is often "
                                   "fastest on a busy or small machine)", valid="[1, inf)")
    progress: bool = _f(True, "tqdm progress bars")
    plots: bool = _f(True, "write PNG plots at the end")


_CIFAR_TRAIN = dict(layers=20, init_channels=36, epochs=600, batch_size=96, learning_rate=0.025,
                    lr_schedule="cosine", weight_decay=3e-4, drop_path_prob=0.2, cutout=True,
                    label_smooth=0.0)
_IMAGENET_TRAIN = dict(layers=14, init_channels=42, epochs=250, batch_size=1024,
                       learning_rate=0.5, lr_schedule="linear", weight_decay=3e-5,
                       drop_path_prob=0.0, cutout=False, label_smooth=0.1)


def train_family_defaults(dataset: str) -> dict[str, Any]:
    return dict(_IMAGENET_TRAIN if dataset == "imagenet" else _CIFAR_TRAIN)


SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's S1 search (Table 1): fixed-edge cells, 7 ops, shared alphas
    "paper-s1": dict(dataset="cifar10", space="s1", layers=8, init_channels=16, batch_size=96,
                     epochs=100, eta=0.1, estimator="amended"),
    # the paper's S2 search: 20 cells, each with its own alphas, skip vs sep_conv_3x3
    "paper-s2": dict(dataset="cifar10", space="s2", layers=20, init_channels=16, batch_size=96,
                     epochs=100, eta=0.1, estimator="amended"),
    # Sec. 4.1.1 / Fig. 2: the DARTS space searched until convergence (500 epochs)
    "paper-convergence": dict(dataset="cifar10", space="darts", layers=8, init_channels=16,
                              batch_size=96, epochs=500, eta=0.1, estimator="amended"),
    # Sec. 4.1.2: fixed edges, C=36 in search and evaluation, cutout, drop-path, auxiliary tower
    "consistent": dict(dataset="cifar10", space="s1", layers=8, init_channels=36,
                       batch_size=96, epochs=100, cutout=True, drop_path_prob=0.2,
                       auxiliary=True, auxiliary_weight=0.4, eta=0.1, estimator="amended"),
    # a CPU-sized run on the bundled digits: a few minutes on 2 cores
    # one thread: these tensors are too small for intra-op parallelism to pay, and a second
    # thread on a busy 2-core machine made a step 5-20x slower (measured)
    "tiny": dict(dataset="digits", space="s1", layers=3, init_channels=6, batch_size=64,
                 epochs=6, learning_rate=0.05, arch_learning_rate=3e-3, threads=1),
}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper-cifar": dict(dataset="cifar10", **_CIFAR_TRAIN),
    "paper-imagenet": dict(dataset="imagenet", **_IMAGENET_TRAIN),
    "tiny": dict(dataset="digits", layers=3, init_channels=8, epochs=10, batch_size=64,
                 learning_rate=0.05, drop_path_prob=0.0, cutout=False, auxiliary=False,
                 label_smooth=0.0, lr_schedule="cosine", weight_decay=3e-4, threads=1),
}

# keys that do not change what a run computes: they may differ when resuming
RUN_KEYS = frozenset({"data", "download", "workers", "device", "threads", "progress", "plots",
                      "time_limit"})


# --------------------------------------------------------------------------- estimator options

#: search setting -> the estimator option it sets (``darts_amend.options.OPTIONS``), read from
#: the fields declared with ``_option``: the one mapping between the two spellings
SETTING_OPTIONS: dict[str, str] = {f.name: f.metadata["option"]
                                   for f in dataclasses.fields(SearchConfig)
                                   if f.metadata.get("option")}

#: the estimator options that are not search settings, and where a search takes them from
OPTIONS_NOT_SETTINGS: dict[str, str] = {
    "xi": "the weight optimizer's learning rate, each step (estimator unrolled)",
    "momentum": "--momentum, the weight optimizer's (estimator unrolled)",
    "weight_decay": "--weight_decay, the weight optimizer's (estimator unrolled)",
    "momentum_buffers": "the weight optimizer's state, each step (estimator unrolled)",
    "tol": "the library default",
    "common_random_numbers": "the library default (detected: the reference supernets draw no "
                             "randomness in forward)",
}

#: estimator option -> the flag that sets it (error messages name the flag, not the keyword)
OPTION_FLAGS: dict[str, str] = {option: f"--{name}" for name, option in SETTING_OPTIONS.items()}


def option_value(setting: str, value: Any) -> Any:
    """A search setting's value as its estimator option takes it (0 -> None for a sub-batch)."""
    if OPTIONS[SETTING_OPTIONS[setting]].kind == "sub_batch":
        return value or None
    return value


def estimator_options(cfg: SearchConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`AmendedArchitect` that the chosen estimator reads."""
    accepted = ESTIMATOR_OPTIONS[cfg.estimator]
    return {option: option_value(name, getattr(cfg, name))
            for name, option in SETTING_OPTIONS.items() if option in accepted}
