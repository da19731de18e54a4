"""The ``darts-amend`` command line: ``search``, ``train``, ``plot`` and ``patch-repo``.

``main(argv=None) -> int`` is the console-script entry point; tests call it in-process. Bad
input prints ``darts-amend: error: ...`` to stderr and returns 2 before anything is written.

Where things are: :mod:`~darts_amend.cli.parser` (sub-commands and flags),
:mod:`~darts_amend.cli.settings` (the settings: fields, defaults, ranges, presets),
:mod:`~darts_amend.cli.config` (flags, YAML, stored configs, validation),
:mod:`~darts_amend.cli.run` (orchestration of search and train), :mod:`~darts_amend.cli.search`
and :mod:`~darts_amend.cli.train` (the loops), :mod:`~darts_amend.cli.runtime` (devices,
torchrun, run folder, loaders), :mod:`~darts_amend.cli.checkpoint`, :mod:`~darts_amend.cli.plots`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import CLIError
from .parser import build_parser

__all__ = ["main", "build_parser", "CLIError"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``darts-amend`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    A closed stdout (``darts-amend ... | head``) ends the command quietly with 141 (128 + SIGPIPE,
    what a shell reports for a process killed by the broken pipe)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader is gone: point stdout at devnull so that the interpreter's final flush
        # raises no second error, and exit without a traceback
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
            pass
        return 141


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    quiet = getattr(args, "quiet", False)
    debug = getattr(args, "debug", False)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except CLIError as err:
        if debug:
            raise
        print(f"darts-amend: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as err:  # a failure we did not foresee: one line, the traceback on demand
        if debug:
            raise
        from darts_amend.data import DataError

        if isinstance(err, DataError):  # bad data found while reading it (a broken image)
            # from a DataLoader worker it arrives with the worker's traceback in its message:
            # the message proper is the last line
            lines = str(err).strip().splitlines() or [""]
            print(f"darts-amend: error: {_one_line(lines[-1].split('DataError: ', 1)[-1])}",
                  file=sys.stderr)
            return 2
        name = type(err).__name__
        hint = " (an internal failure; rerun with --debug for the traceback and report it)"
        room = max(40, 200 - len(f"darts-amend: error: {name}: ") - len(hint))  # one line
        print(f"darts-amend: error: {name}: {_one_line(str(err), room)}{hint}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("search", "train"):
        from .run import RunRequest, run_command

        return run_command(RunRequest.from_args(args))
    if args.command == "plot":
        return _plot(Path(args.run_dir))
    from . import patch_repo

    return int(patch_repo.run(args))


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _plot(run: Path) -> int:
    """``darts-amend plot RUN``: re-draw the plots of a run folder."""
    from .plots import write_plots

    if not (run / "metrics.jsonl").is_file():
        raise CLIError(f"{run} is not a run folder (no metrics.jsonl)")
    stored: object = {}
    if (run / "config.json").is_file():
        try:
            stored = json.loads((run / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CLIError(f"{run / 'config.json'} is not valid JSON ({err}); restore it, or "
                           f"delete it to plot as a search run") from None
    command = stored.get("command", "search") if isinstance(stored, dict) else "search"
    genotype = None
    if (run / "genotype.json").is_file():
        from .train import load_genotype

        genotype = load_genotype(str(run / "genotype.json"))
    plots = write_plots(run, genotype, command)
    if not plots:  # each failure was logged above
        raise CLIError(f"no plot could be drawn from {run} (see the warnings above)")
    for p in plots:
        print(f"plot: {p}")
    return 0
