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
    check_config,
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
        self._bars: list[Any] = []

    def __call__(self, **kwargs: Any):
        if self.enabled:
            from tqdm.auto import tqdm

            bar = tqdm(leave=False, dynamic_ncols=True, **kwargs)
            self._bars.append(bar)
            return bar
        return _NoBar()

    def close_all(self) -> None:
        """Clear the bars' lines, so that an error message starts on a line of its own."""
        for bar in self._bars:
            bar.close()
        self._bars.clear()


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


def _config(args: argparse.Namespace, cls: type, presets: dict) -> Any:
    """The validated config (a resumed run starts from its stored one); writes nothing."""
    from .runtime import RunFolder

    command = args.command
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    if args.resume and args.output is None:
        raise CLIError("--resume needs --output, the folder of the run to continue")
    if args.output is not None and not args.output.strip():
        raise CLIError("--output is empty: name a folder (without --output the run goes to "
                       "runs/<command>-<dataset>-<time>)")
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
    check_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if not args.dist_timeout > 0:
        raise CLIError(f"invalid --dist_timeout {args.dist_timeout} (must be > 0 seconds)")
    return cfg


def _open_folder(args: argparse.Namespace, cfg: Any, d: Any) -> Any:
    """Rank 0 checks (and on a fresh run starts) the output folder; every rank gets the same
    folder or the same error."""
    from .runtime import RunFolder

    error, path, folder = None, None, None
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
        if folder is not None:
            folder.discard()
        raise CLIError(error)
    return folder if folder is not None else RunFolder(path, writer=d.is_main)


def _data(cfg: Any, command: str, seed: int):
    from darts_amend.data import DataError, load_dataset, split_indices

    common = dict(root=cfg.data, download=cfg.download, image_size=cfg.image_size,
                  fake_size=cfg.fake_size, subset=cfg.subset, seed=seed)
    try:
        train_set, info = load_dataset(cfg.dataset, train=True, cutout=cfg.cutout_length
                                       if cfg.cutout else 0, **common)
        if command == "search":
            split = split_indices(len(train_set), cfg.train_portion, seed=seed)
            _check_degenerate(cfg, command, info, train_set, split)
            return train_set, None, info, split
        common["subset"] = 1.0
        test_set, _ = load_dataset(cfg.dataset, train=False, **common)
    except DataError as err:
        raise CLIError(str(err)) from None
    _check_degenerate(cfg, command, info, train_set, split if command == "search" else None)
    return train_set, test_set, info, (list(range(len(train_set))), None)


def _check_degenerate(cfg: Any, command: str, info: Any, train_set: Any, split: Any) -> None:
    """Refuse data a classifier cannot learn from; warn about data smaller than a batch."""
    if info.num_classes < 2:
        raise CLIError(f"the {cfg.dataset} data has {info.num_classes} class: there is nothing "
                       f"to tell apart (a search would reach accuracy 1.0 and mean nothing); "
                       f"give it at least 2 classes")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    n, what = (len(split[0]), "weight half of the training set") if split is not None else (
        len(train_set), "training set")
    if n < cfg.batch_size:
        print(f"darts-amend: warning: the {what} holds {n} samples, fewer than --batch_size "
              f"{cfg.batch_size}: every epoch is one step on those {n} samples", file=sys.stderr)


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
    d, device = setup_distributed(cfg.device, timeout=args.dist_timeout)
    threads = torch.get_num_threads()
    folder = None
    progress = _Progress(cfg.progress and d.is_main and not args.quiet)
    try:
        folder = _open_folder(args, cfg, d)
        ckpt = None
        if args.resume:  # reads only: the folder changes once the run saves a checkpoint
            ckpt = folder.checkpoints.load()
            folder.check_checkpoint_config(ckpt, config_to_dict(cfg))
            folder.resume_metrics(ckpt["epoch"])
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        args._estimate_time = d.is_main and _warn_unsized(args, cfg, device)
        try:
            return _execute(args, cfg, folder, genotype, train_set, test_set, info, split, d,
                            device, ckpt, progress)
        except RuntimeError as err:
            if getattr(args, "debug", False):
                raise
            if _out_of_memory(err):
                raise CLIError(_oom_message(cfg, info, device, folder)) from None
            if not (d.enabled and _lost_peer(err)):
                raise
            raise CLIError(
                f"rank {d.rank}: lost contact with the other torchrun processes "
                f"({str(err).strip().splitlines()[0][:160]}); the last checkpoint is in "
                f"{folder.path}: continue with --resume") from None
    except BaseException:
        progress.close_all()
        if folder is not None:  # a run that never took a step leaves nothing behind
            folder.discard()
        raise
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _out_of_memory(err: BaseException) -> bool:
    import torch

    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or \
        "can't allocate memory" in text or "not enough memory" in text


def _oom_message(cfg: Any, info: Any, device: Any, folder: Any) -> str:
    """One line: where memory ran out and the settings that size the network and the batch."""
    sizes = (f"--batch_size {cfg.batch_size}, --init_channels {cfg.init_channels}, --layers "
             f"{cfg.layers if cfg.layers is not None else 'default'}, image size {info.image_size}")
    smaller = "--batch_size, --init_channels or --layers" + (
        ", or --image_size" if cfg.dataset in ("imagenet", "folder", "fake") else "")
    when = "at the first step or building the network" if not folder.started else "mid-run"
    kept = "" if not folder.started else f"; the last checkpoint stays in {folder.path}"
    return f"out of memory on {device} {when} ({sizes}): reduce {smaller}{kept}"


def _execute(args, cfg, folder, genotype, train_set, test_set, info, split, d, device,
             ckpt, progress) -> int:
    command = args.command
    workers = cfg.workers if cfg.workers is not None else (
        0 if cfg.dataset in ("digits", "fake") else min(4, _cpus()))
    echo = (lambda msg: print(msg, flush=True)) if (d.is_main and not args.quiet) else (
        lambda msg: None)
    with _GracefulInterrupt() as interrupt:
        ctx = RunContext(dist=d, device=device, folder=folder, info=info, train_set=train_set,
                         test_set=test_set, split=split, workers=workers, checkpoint=ckpt,
                         progress=progress,
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
            if not folder.started:  # before the first step: nothing worth keeping
                progress.close_all()
                folder.discard()
                if d.is_main:
                    print(f"darts-amend: interrupted before the first step; {folder.path} is "
                          f"left as it was", file=sys.stderr)
                return 130
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
                  f"genotype reverted to the one recorded at epoch {summary['revert_epoch']}",
                  file=out)
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
        from darts_amend.data import DataError

        if isinstance(err, DataError):  # bad data found while reading it (a broken image)
            # from a DataLoader worker it arrives with the worker's traceback in its message:
            # the message proper is the last line
            lines = str(err).strip().splitlines() or [""]
            print(f"darts-amend: error: {_one_line(lines[-1].split('DataError: ', 1)[-1])}",
                  file=sys.stderr)
            return 2
        print(f"darts-amend: error: {type(err).__name__}: {_one_line(str(err), 300)} (an "
              f"internal failure; rerun with --debug for the traceback and report it)",
              file=sys.stderr)
        return 1


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _patch_repo(args: argparse.Namespace) -> int:
    from darts_amend.cli import patch_repo

    return int(patch_repo.run(args))
