"""The ``darts-amend`` command line: ``search``, ``train``, ``plot`` and ``patch-repo``.

``main(argv=None) -> int`` is the console-script entry point; tests call it in-process. Bad
input prints ``darts-amend: error: ...`` to stderr and returns 2 before anything is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    SEARCH_PRESETS,
    TRAIN_PRESETS,
    CLIError,
    SearchConfig,
    TrainConfig,
    add_config_flags,
    build_config,
    config_to_dict,
)

__all__ = ["main", "build_parser", "CLIError"]

logger = logging.getLogger("darts_amend.cli")


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``darts-amend: error: ... (see '... --help')``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"darts-amend: error: {message} (see '{self.prog} --help')\n")


def _debug_flag(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error, and debug logging")


def _common_run_flags(p: argparse.ArgumentParser, cls: type, presets: dict) -> None:
    p.add_argument("--output", "-o", default=None,
                   help="output folder (default: runs/<command>-<dataset>-<time>)")
    p.add_argument("--preset", default=None,
                   help=f"preset: {', '.join(presets)} (flags and --config override it)")
    p.add_argument("--config", default=None, help="YAML file of settings (keys = flag names)")
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
    parser = _Parser(
        prog="darts-amend",
        description="Amended-DARTS: architecture search with amended hypergradients, "
                    "re-training, plots, and patching upstream DARTS checkouts.")
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ps = sub.add_parser("search", help="search a cell architecture (default: digits, CPU-sized)",
                        description="Bi-level DARTS search; alphas follow AmendedArchitect.")
    _common_run_flags(ps, SearchConfig, SEARCH_PRESETS)
    pt = sub.add_parser("train", help="re-train a genotype (CIFAR, ImageNet, a folder, ...)",
                        description="Train the evaluation network of a genotype from scratch.")
    _common_run_flags(pt, TrainConfig, TRAIN_PRESETS)
    pp = sub.add_parser("plot", help="re-draw the plots of a run folder")
    pp.add_argument("run_dir", help="a search or train output folder")
    _debug_flag(pp)
    from darts_amend.cli import patch_repo

    _debug_flag(patch_repo.add_parser(sub))
    return parser


# --------------------------------------------------------------------------- context


class _Progress:
    """tqdm on the main rank when enabled; a no-op bar otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, **kwargs: Any):
        if self.enabled:
            from tqdm.auto import tqdm

            return tqdm(leave=False, dynamic_ncols=True, **kwargs)
        return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _GracefulInterrupt:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _GracefulInterrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndarts-amend: interrupt received, checkpointing after this step "
              "(Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class RunContext:
    dist: Any
    device: Any
    folder: Any
    info: Any
    train_set: Any
    test_set: Any
    split: Any
    workers: int
    checkpoint: dict[str, Any] | None
    progress: _Progress
    echo: Any
    interrupt: _GracefulInterrupt
    interrupted: tuple[int, int] | None = None
    estimate_time: bool = False  # print the estimated epoch time after the first step

    def stop_requested(self) -> bool:
        flag = self.interrupt.requested
        if self.dist.enabled:  # every rank must stop at the same step
            import torch
            import torch.distributed as dist

            t = torch.tensor([1.0 if flag else 0.0],
                             device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag


# --------------------------------------------------------------------------- commands


def _default_output(command: str, dataset: str) -> Path:
    return Path("runs") / f"{command}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _validate_search(cfg: SearchConfig, world: int) -> None:
    _validate_common(cfg, world)
    if not 0 < cfg.train_portion < 1:
        raise CLIError(f"invalid --train_portion {cfg.train_portion} (must be in (0, 1))")
    if cfg.eta < 0:
        raise CLIError(f"invalid --eta {cfg.eta} (must be >= 0)")
    if cfg.arch_learning_rate <= 0:
        raise CLIError(f"invalid --arch_learning_rate {cfg.arch_learning_rate}")
    if cfg.hvp_chunks < 1 or cfg.second_order_batch < 0:
        raise CLIError(f"invalid --amend_chunks {cfg.hvp_chunks} (must be >= 1) or "
                       f"--amend_second_order_batch {cfg.second_order_batch} (must be >= 0)")
    if cfg.until_converged < 0 or cfg.diag_every < 0:
        raise CLIError("--until-converged and --diag_every must be >= 0")
    if cfg.early_stop:
        if cfg.diag_every < 1:
            raise CLIError("--early_stop decides on the alpha-Hessian eigenvalue, which is only "
                           "measured with --diag_every N (N >= 1)")
        if cfg.early_stop_window < 1 or cfg.early_stop_lag < 1 or cfg.early_stop_start < 0:
            raise CLIError("--early_stop_window and --early_stop_lag must be >= 1, "
                           "--early_stop_start >= 0")
        if not cfg.early_stop_factor > 1:
            raise CLIError(f"invalid --early_stop_factor {cfg.early_stop_factor} (must be > 1)")
    if not 0 < cfg.converge_threshold <= 1:
        raise CLIError(f"invalid --converge_threshold {cfg.converge_threshold}")
    if cfg.partial_channels < 1 or cfg.init_channels % cfg.partial_channels:
        raise CLIError(f"--partial_channels {cfg.partial_channels} must divide "
                       f"--init_channels {cfg.init_channels}")
    if not 0 <= cfg.drop_path_prob < 1 or not 0 <= cfg.dropout < 1:
        raise CLIError("--drop_path_prob and --dropout must be in [0, 1)")
    if cfg.dataset == "imagenet" and cfg.init_channels % 2:
        raise CLIError(f"--init_channels {cfg.init_channels}: the ImageNet stem needs an even "
                       f"channel count")
    if cfg.estimator != "amended" and cfg.eta != SearchConfig.eta:
        raise CLIError(f"--eta applies to --estimator amended only (got --estimator "
                       f"{cfg.estimator})")
    from darts_amend.estimators import validate_options

    from .search import OPTION_FLAGS, estimator_options

    try:
        validate_options(cfg.estimator, estimator_options(cfg))
    except (TypeError, ValueError) as err:
        msg = str(err)
        for key, flag in OPTION_FLAGS.items():  # name the flag, not the library's keyword
            msg = msg.replace(f"invalid {key}:", f"invalid {flag}")
        raise CLIError(msg) from None


# flags that size a search: without any of them (nor a preset or config) on a CPU, say so
SIZE_FLAGS = ("epochs", "layers", "init_channels", "batch_size", "steps_per_epoch",
              "time_limit", "subset", "fake_size", "until_converged")


def _warn_unsized(args: argparse.Namespace, cfg: Any, device: Any) -> bool:
    """True (after a warning on stderr) for a paper-size search about to start on a CPU."""
    if (args.command != "search" or device.type != "cpu" or args.preset or args.config
            or args.resume or any(k in vars(args) for k in SIZE_FLAGS)):
        return False
    print(f"darts-amend: warning: no --preset and no size flags on a CPU: this is the "
          f"paper-size search ({cfg.epochs} epochs, "
          f"{cfg.layers or (20 if cfg.space == 's2' else 8)} cells, "
          f"C={cfg.init_channels}, batch {cfg.batch_size}), hours on a small machine; "
          f"'--preset tiny' runs in minutes. The time per epoch follows the first step.",
          file=sys.stderr)
    return True


def _validate_common(cfg: Any, world: int) -> None:
    for name in ("epochs", "batch_size", "init_channels", "layers"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise CLIError(f"invalid --{name} {v} (must be >= 1)")
    if cfg.batch_size is not None and cfg.batch_size % world:
        raise CLIError(f"--batch_size {cfg.batch_size} (the global batch) must be divisible by "
                       f"the {world} torchrun processes")
    if cfg.learning_rate is not None and cfg.learning_rate <= 0:
        raise CLIError(f"invalid --learning_rate {cfg.learning_rate}")
    if cfg.time_limit < 0:
        raise CLIError(f"invalid --time_limit {cfg.time_limit}")
    if cfg.steps_per_epoch < 0:
        raise CLIError(f"invalid --steps_per_epoch {cfg.steps_per_epoch}")
    if cfg.threads is not None and cfg.threads < 1:
        raise CLIError(f"invalid --threads {cfg.threads}")
    if cfg.workers is not None and cfg.workers < 0:
        raise CLIError(f"invalid --workers {cfg.workers}")
    if cfg.cutout and cfg.cutout_length < 1:
        raise CLIError(f"invalid --cutout_length {cfg.cutout_length}")


def _config(args: argparse.Namespace, cls: type, presets: dict) -> Any:
    """The validated config (a resumed run starts from its stored one); writes nothing."""
    from .runtime import RunFolder

    command = args.command
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    if args.resume and args.output is None:
        raise CLIError("--resume needs --output, the folder of the run to continue")
    base = None
    if args.resume:
        stored = RunFolder(args.output).stored_config()
        if stored is None:
            raise CLIError(f"nothing to resume in {args.output}: no config.json there")
        if stored.get("command") != command:
            raise CLIError(f"{args.output} holds a {stored.get('command')} run, not a "
                           f"{command} run")
        base = stored.get("config", {})
    cfg, _given = build_config(cls, args, presets, base=base)
    if command == "train":
        from .train import resolve_train_defaults

        cfg = resolve_train_defaults(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if command == "search":
        _validate_search(cfg, world)
    else:
        _validate_common(cfg, world)
    return cfg


def _open_folder(args: argparse.Namespace, cfg: Any, d: Any) -> Any:
    """Rank 0 checks (and on a fresh run starts) the output folder; every rank gets the same
    folder or the same error."""
    from .runtime import RunFolder

    error, path = None, None
    if d.is_main:
        try:
            path = Path(args.output) if args.output else _default_output(args.command,
                                                                           cfg.dataset)
            folder = RunFolder(path)
            if args.resume:
                folder.check_resumable(args.command, config_to_dict(cfg))
            else:
                folder.check_fresh(args.command, args.force)
                folder.start(args.command, config_to_dict(cfg), force=args.force)
        except CLIError as err:
            error = str(err)
    if d.enabled:
        import torch.distributed as dist

        box = [error, None if path is None else str(path)]
        dist.broadcast_object_list(box, src=0)
        error, path = box[0], box[1]
    if error is not None:
        raise CLIError(error)
    return RunFolder(path, writer=d.is_main)


def _data(cfg: Any, command: str, seed: int):
    from darts_amend.data import DataError, load_dataset, split_indices

    common = dict(root=cfg.data, download=cfg.download, image_size=cfg.image_size,
                  fake_size=cfg.fake_size, subset=cfg.subset, seed=seed)
    try:
        train_set, info = load_dataset(cfg.dataset, train=True, cutout=cfg.cutout_length
                                       if cfg.cutout else 0, **common)
        if command == "search":
            split = split_indices(len(train_set), cfg.train_portion, seed=seed)
            return train_set, None, info, split
        common["subset"] = 1.0
        test_set, _ = load_dataset(cfg.dataset, train=False, **common)
    except DataError as err:
        raise CLIError(str(err)) from None
    return train_set, test_set, info, (list(range(len(train_set))), None)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .runtime import setup_distributed

    command = args.command
    cls, presets = (SearchConfig, SEARCH_PRESETS) if command == "search" else (TrainConfig,
                                                                               TRAIN_PRESETS)
    cfg = _config(args, cls, presets)
    genotype = None
    if command == "train":
        from .train import load_genotype

        genotype = load_genotype(cfg.genotype)
        if genotype.num_cells is not None and cfg.layers not in (None, genotype.num_cells):
            raise CLIError(f"the genotype fixes {genotype.num_cells} cells (one genotype per "
                           f"cell), but --layers {cfg.layers}")
    train_set, test_set, info, split = _data(cfg, command, cfg.seed)
    if not args.dist_timeout > 0:
        raise CLIError(f"invalid --dist_timeout {args.dist_timeout} (must be > 0 seconds)")
    d, device = setup_distributed(cfg.device, timeout=args.dist_timeout)
    threads = torch.get_num_threads()
    try:
        folder = _open_folder(args, cfg, d)
        ckpt = None
        if args.resume:  # reads only: the folder changes once the run saves a checkpoint
            ckpt = folder.checkpoints.load()
            folder.resume_metrics(ckpt["epoch"])
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        args._estimate_time = d.is_main and _warn_unsized(args, cfg, device)
        try:
            return _execute(args, cfg, folder, genotype, train_set, test_set, info, split, d,
                            device, ckpt)
        except RuntimeError as err:
            if not (d.enabled and _lost_peer(err)) or getattr(args, "debug", False):
                raise
            raise CLIError(
                f"rank {d.rank}: lost contact with the other torchrun processes "
                f"({str(err).strip().splitlines()[0][:160]}); the last checkpoint is in "
                f"{folder.path}: continue with --resume") from None
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _execute(args, cfg, folder, genotype, train_set, test_set, info, split, d, device,
             ckpt) -> int:
    command = args.command
    workers = cfg.workers if cfg.workers is not None else (
        0 if cfg.dataset in ("digits", "fake") else min(4, _cpus()))
    echo = (lambda msg: print(msg, flush=True)) if (d.is_main and not args.quiet) else (
        lambda msg: None)
    with _GracefulInterrupt() as interrupt:
        ctx = RunContext(dist=d, device=device, folder=folder, info=info, train_set=train_set,
                         test_set=test_set, split=split, workers=workers, checkpoint=ckpt,
                         progress=_Progress(cfg.progress and d.is_main and not args.quiet),
                         echo=echo, interrupt=interrupt,
                         estimate_time=getattr(args, "_estimate_time", False))
        if d.is_main:
            echo(f"darts-amend {command}: {cfg.dataset} on {device}"
                 f"{f' x{d.world_size} processes' if d.enabled else ''} -> {folder.path}")
        try:
            if command == "search":
                from .search import run_search

                summary = run_search(cfg, ctx)
            else:
                from .train import run_train

                summary = run_train(cfg, ctx, genotype)
        except KeyboardInterrupt:
            if d.is_main:
                where = (f" at epoch {ctx.interrupted[0] + 1}, step {ctx.interrupted[1]}"
                         if ctx.interrupted else "")
                print(f"darts-amend: interrupted{where}; checkpoint in {folder / 'checkpoint.pt'}"
                      f"\n  continue with: darts-amend {command} --output {folder.path} --resume",
                      file=sys.stderr)
            return 130
    if d.is_main:
        _finish(command, cfg, folder, summary, args.quiet)
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()
    return 0


def _lost_peer(err: RuntimeError) -> bool:
    """A collective failed because another rank died, hung past --dist_timeout or closed."""
    import torch.distributed as dist

    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        k in text for k in ("closed by peer", "connection reset", "gloo", "nccl", "timed out",
                            "timeout", "broken pipe"))


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _finish(command: str, cfg: Any, folder: Any, summary: dict[str, Any], quiet: bool) -> None:
    from .plots import write_plots

    genotype = summary.pop("_genotype_obj", None)
    plots: list[Path] = []
    if getattr(cfg, "plots", True):
        plots = write_plots(folder.path, genotype, command)
    out = sys.stdout
    print("", file=out)
    if command == "search":
        print(f"search finished ({summary['stop_reason']}) after {summary['epochs_run']} epochs, "
              f"{summary['alpha_steps']} alpha steps", file=out)
        if summary["stop_reason"] == "early_stop":
            ratio = summary.get("early_stop_ratio")
            print(f"early stop at epoch {summary['early_stop_epoch']}: the alpha-Hessian "
                  f"eigenvalue's local mean grew "
                  f"{f'{ratio:.2f}x' if ratio is not None else ''} (> {cfg.early_stop_factor}); "
                  f"genotype reverted to the one recorded at epoch {summary['revert_epoch']} "
                  f"(epochs counted from 0, as in metrics.jsonl)", file=out)
        print(str(genotype), file=out)
        conv = ("yes" if summary["converged"] else "no") + (
            f" (kept-op weight min {summary['kept_weight_min']:.3f}, threshold "
            f"{cfg.converge_threshold})" if summary.get("kept_weight_min") is not None else "")
        print(f"skip-connect share {summary['skip_share']:.2f}; alphas converged: {conv}; "
              f"valid accuracy {summary['valid_acc']:.4f}", file=out)
        print(f"genotype: {folder.path / 'genotype.json'}", file=out)
    else:
        print(f"train finished ({summary['stop_reason']}) after {summary['epochs_run']} "
              f"epochs: test accuracy "
              f"{summary['test_acc']:.4f} (top-5 {summary['test_acc_top5']:.4f}), "
              f"{summary['params']:,} parameters", file=out)
    print(f"metrics: {folder.path / 'metrics.jsonl'}", file=out)
    for p in plots:
        print(f"plot: {p}", file=out)


def _plot(args: argparse.Namespace) -> int:
    from .plots import write_plots

    run = Path(args.run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise CLIError(f"{run} is not a run folder (no metrics.jsonl)")
    stored = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() \
        else {}
    command = stored.get("command", "search")
    genotype = None
    if (run / "genotype.json").is_file():
        from .train import load_genotype

        genotype = load_genotype(str(run / "genotype.json"))
    for p in write_plots(run, genotype, command):
        print(f"plot: {p}")
    return 0


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
        if args.command in ("search", "train"):
            return _run(args)
        if args.command == "plot":
            return _plot(args)
        return _patch_repo(args)
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
        print(f"darts-amend: error: {type(err).__name__}: {_one_line(str(err))} (an internal "
              f"failure; rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _patch_repo(args: argparse.Namespace) -> int:
    from darts_amend.cli import patch_repo

    return int(patch_repo.run(args))
