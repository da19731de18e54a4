"""The ``darts-amend`` argument parser: sub-commands and their flags.

The flags of ``search`` and ``train`` are the fields of their config dataclasses
(:func:`darts_amend.cli.config.add_config_flags`); this module adds the run-folder flags
(``--output``, ``--resume``, ...) and the ``plot`` and ``patch-repo`` sub-commands.
"""
from __future__ import annotations

import argparse
from typing import Any

from . import patch_repo
from .config import add_config_flags
from .settings import SEARCH_PRESETS, TRAIN_PRESETS, SearchConfig, TrainConfig

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``darts-amend: error: ... (see '... --help')``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"darts-amend: error: {message} (see '{self.prog} --help')\n")


def _debug_flag(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error, and debug logging")


def _run_flags(p: argparse.ArgumentParser, cls: type, presets: dict[str, dict[str, Any]]) -> None:
    """The flags of ``search`` and ``train``: the run folder's, then one per config field."""
    p.add_argument("--output", "-o", default=None,
                   help="output folder (default: runs/<command>-<dataset>-<time>)")
    p.add_argument("--preset", default=None,
                   help=f"preset: {', '.join(presets)} (flags and --config override it)")
    p.add_argument("--config", default=None,
                   help="YAML file of settings (keys: the flag names without the dashes)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its checkpoint")
    p.add_argument("--force", action="store_true",
                   help="overwrite the run files in a non-empty --output")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    p.add_argument("--dist_timeout", "--dist-timeout", type=float, default=600.0,
                   metavar="SECONDS",
                   help="torchrun: give up on a collective (a rank that died or hangs) after "
                        "this many seconds [600]")
    _debug_flag(p)
    add_config_flags(p, cls)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``darts-amend`` (sub-commands search, train, plot, patch-repo)."""
    parser = _Parser(
        prog="darts-amend",
        description="Amended-DARTS: architecture search with amended hypergradients, "
                    "re-training, plots, and patching upstream DARTS checkouts.")
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ps = sub.add_parser("search", help="search a cell architecture (default: digits, CPU-sized)",
                        description="Bi-level DARTS search; alphas follow AmendedArchitect.")
    _run_flags(ps, SearchConfig, SEARCH_PRESETS)
    pt = sub.add_parser("train", help="re-train a genotype (CIFAR, ImageNet, a folder, ...)",
                        description="Train the evaluation network of a genotype from scratch.")
    _run_flags(pt, TrainConfig, TRAIN_PRESETS)
    pp = sub.add_parser("plot", help="re-draw the plots of a run folder")
    pp.add_argument("run_dir", help="a search or train output folder")
    _debug_flag(pp)
    _debug_flag(patch_repo.add_parser(sub))
    return parser
