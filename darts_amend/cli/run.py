"""Orchestration of ``search`` and ``train``: config, data, output folder, run, report.

:func:`run_command` takes a :class:`RunRequest` (what the command line asked, read once from
argparse's namespace) and, in this order: resolves and checks the config (nothing written),
loads the data, joins torchrun, opens the output folder (rank 0 writes ``config.json``),
builds a :class:`~darts_amend.cli.context.RunContext` and calls ``run_search`` / ``run_train``,
then prints the summary and writes the plots. A run that fails or is interrupted before its
first step leaves the folder as it was.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CLIError, build_config, check_config, config_to_dict
from .context import Progress, RunContext, RunResult
from .settings import SEARCH_PRESETS, TRAIN_PRESETS, SearchConfig, TrainConfig

if TYPE_CHECKING:
    import torch

    from darts_amend.data import DatasetInfo
    from darts_amend.supernet import Genotype, NB201Genotype

    from .runtime import Dist, RunFolder

__all__ = ["RunRequest", "SIZE_FLAGS", "run_command", "warn_unsized"]

Config = SearchConfig | TrainConfig

_CONFIGS: dict[str, tuple[type, dict[str, dict[str, Any]]]] = {
    "search": (SearchConfig, SEARCH_PRESETS),
    "train": (TrainConfig, TRAIN_PRESETS),
}


@dataclass(frozen=True)
class RunRequest:
    """What ``darts-amend search`` / ``train`` was asked to do.

    ``flags``: the config settings given as flags (field names; flags not given are absent)."""

    command: str
    flags: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    preset: str | None = None
    config_file: str | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    debug: bool = False
    dist_timeout: float = 600.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunRequest:
        """The request of a parsed ``search`` / ``train`` command line."""
        names = {f.name for f in dataclasses.fields(_CONFIGS[args.command][0])}
        given = vars(args)
        return cls(command=args.command, flags={k: v for k, v in given.items() if k in names},
                   output=args.output, preset=args.preset, config_file=args.config,
                   resume=args.resume, force=args.force, quiet=args.quiet,
                   debug=given.get("debug", False), dist_timeout=args.dist_timeout)


# --------------------------------------------------------------------------- before the run


def _default_output(command: str, dataset: str) -> Path:
    return Path("runs") / f"{command}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


# flags that size a search: without any of them (nor a preset or config) on a CPU, say so
SIZE_FLAGS = ("epochs", "layers", "init_channels", "batch_size", "steps_per_epoch",
              "time_limit", "subset", "fake_size", "until_converged")


def warn_unsized(request: RunRequest, cfg: Config, device: torch.device) -> bool:
    """True (after a warning on stderr) for a paper-size search about to start on a CPU."""
    if (request.command != "search" or device.type != "cpu" or request.preset
            or request.config_file or request.resume
            or any(k in request.flags for k in SIZE_FLAGS)):
        return False
    assert isinstance(cfg, SearchConfig)
    print(f"darts-amend: warning: no --preset or size flags on a CPU: the paper-size search "
          f"({cfg.epochs} epochs, {cfg.layers or (20 if cfg.space == 's2' else 8)} cells, "
          f"C={cfg.init_channels}, batch {cfg.batch_size}) takes hours; '--preset tiny' takes "
          f"minutes (time per epoch after the first step)", file=sys.stderr)
    return True


def _config(request: RunRequest) -> Config:
    """The validated config (a resumed run starts from its stored one); writes nothing."""
    from .runtime import RunFolder

    command = request.command
    cls, presets = _CONFIGS[command]
    if request.resume and request.force:
        raise CLIError("--resume and --force exclude each other")
    if request.resume and request.output is None:
        raise CLIError("--resume needs --output, the folder of the run to continue")
    if request.output is not None and not request.output.strip():
        raise CLIError("--output is empty: name a folder (without --output the run goes to "
                       "runs/<command>-<dataset>-<time>)")
    base = None
    if request.resume:
        assert request.output is not None
        stored = RunFolder(request.output).stored_config()
        if stored is None:
            raise CLIError(f"nothing to resume in {request.output}: no config.json there")
        if stored.get("command") != command:
            raise CLIError(f"{request.output} holds a {stored.get('command')} run, not a "
                           f"{command} run")
        base = stored.get("config", {})
    cfg = build_config(cls, request.flags, presets, preset=request.preset,
                       config_file=request.config_file, base=base)
    if command == "train":
        from .train import resolve_train_defaults

        cfg = resolve_train_defaults(cfg)
    check_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if not request.dist_timeout > 0:
        raise CLIError(f"invalid --dist_timeout {request.dist_timeout} (must be > 0 seconds)")
    return cfg


def _open_folder(request: RunRequest, cfg: Config, d: Dist) -> RunFolder:
    """Rank 0 checks (and on a fresh run starts) the output folder; every rank gets the same
    folder or the same error."""
    from .runtime import RunFolder

    command = request.command
    error, path, folder = None, None, None
    if d.is_main:
        try:
            path = Path(request.output) if request.output else _default_output(command,
                                                                                 cfg.dataset)
            folder = RunFolder(path)
            if request.resume:
                folder.check_resumable(command, config_to_dict(cfg))
                folder.adopt_leftovers()
            else:
                folder.check_fresh(command, request.force)
                folder.start(command, config_to_dict(cfg), force=request.force)
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


_Data = tuple[Any, Any, "DatasetInfo", tuple[list[int], "list[int] | None"]]


def _data(cfg: Config, command: str, seed: int) -> _Data:
    """(training set, test set or None, its info, the index split of the training set)."""
    from darts_amend.data import DataError, load_dataset, split_indices

    common = dict(root=cfg.data, download=cfg.download, image_size=cfg.image_size,
                  fake_size=cfg.fake_size, subset=cfg.subset, seed=seed)
    try:
        train_set, info = load_dataset(cfg.dataset, train=True, cutout=cfg.cutout_length
                                       if cfg.cutout else 0, **common)
        if command == "search":
            assert isinstance(cfg, SearchConfig)
            split = split_indices(len(train_set), cfg.train_portion, seed=seed)
            _check_degenerate(cfg, info, train_set, split)
            return train_set, None, info, split
        common["subset"] = 1.0
        test_set, _ = load_dataset(cfg.dataset, train=False, **common)
    except DataError as err:
        raise CLIError(str(err)) from None
    _check_degenerate(cfg, info, train_set, None)
    return train_set, test_set, info, (list(range(len(train_set))), None)


def _check_degenerate(cfg: Config, info: DatasetInfo, train_set: Any,
                      split: tuple[list[int], list[int]] | None) -> None:
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


def _load_genotype(cfg: Config) -> Genotype | NB201Genotype | None:
    """The genotype a ``train`` run re-trains (None for a search), checked against --layers."""
    if not isinstance(cfg, TrainConfig):
        return None
    from .train import load_genotype

    genotype = load_genotype(cfg.genotype)
    if genotype.num_cells is not None and cfg.layers not in (None, genotype.num_cells):
        raise CLIError(f"the genotype fixes {genotype.num_cells} cells (one genotype per "
                       f"cell), but --layers {cfg.layers}")
    return genotype


# --------------------------------------------------------------------------- the run


def run_command(request: RunRequest) -> int:
    """Run ``search`` or ``train`` as requested; the exit code (0, or 130 after Ctrl-C).

    Bad input raises :class:`CLIError` before anything is written."""
    import torch

    from .runtime import setup_distributed

    cfg = _config(request)
    genotype = _load_genotype(cfg)
    train_set, test_set, info, split = _data(cfg, request.command, cfg.seed)
    d, device = setup_distributed(cfg.device, timeout=request.dist_timeout)
    threads = torch.get_num_threads()
    folder = None
    progress = Progress(cfg.progress and d.is_main and not request.quiet)
    try:
        folder = _open_folder(request, cfg, d)
        ckpt = None
        if request.resume:  # reads only: the folder changes once the run saves a checkpoint
            ckpt = folder.checkpoints.load()
            folder.check_checkpoint_config(ckpt, config_to_dict(cfg), request.command)
            folder.resume_metrics(ckpt["epoch"])
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        workers = cfg.workers if cfg.workers is not None else (
            0 if cfg.dataset in ("digits", "fake") else min(4, _cpus()))
        loud = d.is_main and not request.quiet
        ctx = RunContext(
            dist=d, device=device, folder=folder, info=info, train_set=train_set,
            test_set=test_set, split=split, workers=workers, checkpoint=ckpt,
            progress=progress, echo=_Echo(progress) if loud else _silent,
            estimate_time=d.is_main and warn_unsized(request, cfg, device))
        try:
            with progress.guard_messages():
                rc = _execute(request, cfg, ctx, genotype)
            if rc == 0 and d.owns_group:
                # every rank finished before any tears the group down: a gloo rank that closes
                # its sockets while another is still in a collective makes that one abort
                import torch.distributed as dist

                dist.barrier()
            return rc
        except RuntimeError as err:
            if request.debug:
                raise
            if _out_of_memory(err):
                raise CLIError(_oom_message(cfg, info, device, folder)) from None
            if not (d.enabled and _lost_peer(err)):
                raise
            raise CLIError(
                f"rank {d.rank}: lost contact with the other torchrun processes "
                f"({str(err).strip().splitlines()[0][:60]}); the last checkpoint is in "
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


class _Echo:
    """A progress line on stdout, on a line of its own also where stdout and stderr (the bars)
    go to the same pipe or file."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __call__(self, msg: str) -> None:
        self.progress.end_line()
        print(msg, flush=True)


def _silent(msg: str) -> None:
    pass


def _execute(request: RunRequest, cfg: Config, ctx: RunContext,
             genotype: Genotype | NB201Genotype | None) -> int:
    command, d, folder = request.command, ctx.dist, ctx.folder
    with ctx.interrupt:
        if d.is_main:
            ctx.echo(f"darts-amend {command}: {cfg.dataset} on {ctx.device}"
                     f"{f' x{d.world_size} processes' if d.enabled else ''} -> {folder.path}")
        try:
            if isinstance(cfg, SearchConfig):
                from .search import run_search

                result = run_search(cfg, ctx)
            else:
                from .train import run_train

                assert genotype is not None
                result = run_train(cfg, ctx, genotype)
        except KeyboardInterrupt:
            ctx.progress.close_all()  # the message below starts on a line of its own
            if not folder.started:  # before the first step: nothing worth keeping
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
    ctx.progress.close_all()
    if d.is_main:
        _finish(command, cfg, folder, result)
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()
    return 0


# --------------------------------------------------------------------------- failures


def _out_of_memory(err: BaseException) -> bool:
    import torch

    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or \
        "can't allocate memory" in text or "not enough memory" in text


def _oom_message(cfg: Config, info: DatasetInfo, device: torch.device,
                 folder: RunFolder) -> str:
    """One line: where memory ran out and the settings that size the network and the batch."""
    sizes = (f"--batch_size {cfg.batch_size}, --init_channels {cfg.init_channels}, --layers "
             f"{cfg.layers if cfg.layers is not None else 'default'}, image size {info.image_size}")
    smaller = "--batch_size, --init_channels or --layers" + (
        ", or --image_size" if cfg.dataset in ("imagenet", "folder", "fake") else "")
    when = "at the start" if not folder.started else "mid-run"  # start: network, first step
    kept = "" if not folder.started else f"; the last checkpoint stays in {folder.path}"
    return f"out of memory on {device} {when} ({sizes}): reduce {smaller}{kept}"


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


# --------------------------------------------------------------------------- the report


def _finish(command: str, cfg: Config, folder: RunFolder, result: RunResult) -> None:
    """Plots, then the summary on stdout (also with --quiet)."""
    from .plots import write_plots

    summary, genotype = result.summary, result.genotype
    plots: list[Path] = []
    if cfg.plots:
        plots = write_plots(folder.path, genotype, command)
    out = sys.stdout
    print("", file=out)
    if isinstance(cfg, SearchConfig):
        epochs, steps = summary["epochs_run"], summary["alpha_steps"]
        print(f"search finished ({summary['stop_reason']}) after {epochs} "
              f"epoch{'' if epochs == 1 else 's'}, {steps} alpha step{'' if steps == 1 else 's'}",
              file=out)
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
