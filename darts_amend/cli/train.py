"""``darts-amend train``: re-train a genotype's evaluation network (CIFAR or ImageNet recipe)."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import CLIError
from .context import RunContext, RunResult
from .runtime import (
    Dist,
    EpochSums,
    RunFolder,
    all_reduce_sums,
    batches_per_epoch,
    broadcast_buffers,
    epoch_loader,
    evaluate,
    rng_state,
    seed_everything,
    set_rng_state,
    write_json_atomic,
)
from .settings import TrainConfig, train_family_defaults

if TYPE_CHECKING:
    from darts_amend.data import DatasetInfo
    from darts_amend.supernet import Genotype, NB201Genotype

__all__ = ["TRAIN_NETWORKS", "run_train", "load_genotype", "resolve_train_defaults"]

logger = logging.getLogger(__name__)


def _on_step(epoch: int, step: int) -> None:
    """Called after every training step (a hook for tests)."""


def resolve_train_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` settings with the data set family's paper recipe (layers stays None
    when the genotype decides it)."""
    family = train_family_defaults(cfg.dataset)
    updates = {k: v for k, v in family.items()
               if getattr(cfg, k) is None and k != "layers"}
    return dataclasses.replace(cfg, **updates)


def load_genotype(spec: str) -> Genotype | NB201Genotype:
    """A named genotype (``DARTS_V2``), a genotype file (our JSON or upstream's
    ``Genotype(normal=...)`` text) or a search output folder holding ``genotype.json``."""
    from darts_amend.supernet import GENOTYPES, Genotype

    if spec in GENOTYPES:
        return GENOTYPES[spec]
    path = Path(spec)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise CLIError(f"{spec} is a folder without genotype.json (is the search finished?)")
    if not path.is_file():
        raise CLIError(f"genotype {spec!r} is neither a file, a search folder, nor a named "
                       f"genotype ({', '.join(GENOTYPES)})")
    try:
        return Genotype.parse(path.read_text())
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        # the file given with --genotype: the library's "cell genotype: " would say it again
        msg = re.sub(r"^(cell |nb201 |per-cell )?genotype: ", "", str(err))
        raise CLIError(f"{path}: {msg}") from None


def _darts_network(cfg: TrainConfig, genotype: Any, layers: int, info: DatasetInfo) -> nn.Module:
    """DARTS' evaluation network (CIFAR, or the ImageNet stem), auxiliary tower optional."""
    from darts_amend.supernet import NetworkCIFAR, NetworkImageNet

    cls = NetworkImageNet if cfg.dataset == "imagenet" else NetworkCIFAR
    return cls(cfg.init_channels, info.num_classes, layers, cfg.auxiliary, genotype,
               in_channels=info.in_channels)


def _nb201_network(cfg: TrainConfig, genotype: Any, layers: int, info: DatasetInfo) -> nn.Module:
    """NAS-Bench-201's network: 3 stages of ``layers`` cells."""
    from darts_amend.supernet import NB201Network

    if cfg.auxiliary:
        logger.info("the NB201 network has no auxiliary tower; --auxiliary is ignored")
    return NB201Network(cfg.init_channels, info.num_classes, layers, genotype,
                        in_channels=info.in_channels)


#: the re-training network of each cell topology (``supernet.CELL_TOPOLOGIES``): its builder
#: ``(cfg, genotype, layers, info) -> network`` and its default depth for a data set
TRAIN_NETWORKS: dict[str, tuple[Callable[[TrainConfig, Any, int, DatasetInfo], nn.Module],
                                Callable[[str], int]]] = {
    "darts": (_darts_network, lambda dataset: train_family_defaults(dataset)["layers"]),
    "nb201": (_nb201_network, lambda dataset: 5),  # NAS-Bench-201: 5 cells per stage
}


def run_train(cfg: TrainConfig, ctx: RunContext,
              genotype: Genotype | NB201Genotype) -> RunResult:
    """Re-train ``genotype``'s network from scratch (or continue); ``ctx`` as for a search.

    Returns the summary (also written to ``summary.json``) and the genotype."""
    from darts_amend.supernet import CELL_TOPOLOGIES, count_parameters

    d: Dist = ctx.dist
    device: torch.device = ctx.device
    folder: RunFolder = ctx.folder
    layers = cfg.layers
    if genotype.num_cells is not None:
        if layers is not None and layers != genotype.num_cells:
            raise CLIError(f"the genotype fixes {genotype.num_cells} cells, but --layers {layers}")
        layers = genotype.num_cells
    topology = CELL_TOPOLOGIES[genotype.cell_topology]
    build, default_layers = TRAIN_NETWORKS[topology.name]
    if layers is None:
        layers = default_layers(cfg.dataset)
    seed_everything(cfg.seed)
    if topology.keeps_none and not genotype.connected():  # `none` may cut every path
        logger.warning("genotype %s has no path from the cell input to its output that "
                       "avoids `none`: every cell outputs zeros, so this network cannot learn "
                       "(expect chance accuracy)", genotype)
    net = build(cfg, genotype, layers, ctx.info).to(device)
    if d.enabled:
        for t in list(net.parameters()) + list(net.buffers()):
            dist.broadcast(t.data, src=0)
    params = count_parameters(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs, eta_min=cfg.learning_rate_min)
    else:  # linear decay to 0 over the run (the ImageNet recipe)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: max(0.0, 1.0 - e / cfg.epochs))
    use_cuda_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=cfg.amp)

    model: nn.Module = net
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device] if device.type == "cuda" else None)

    start_epoch, start_step, acc = 0, 0, EpochSums()
    if ctx.checkpoint is not None:
        ck = ctx.checkpoint
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, start_step, acc = ck["epoch"], ck["step"], EpochSums(**ck["accum"])
        set_rng_state(ck["rng"])
        if start_step:
            logger.info("resumed in epoch %d at step %d", start_epoch + 1, start_step)
        else:
            logger.info("resumed after epoch %d", start_epoch)

    def checkpoint(epoch_: int, step_: int, accum: EpochSums) -> None:
        if d.is_main:
            folder.checkpoints.save({
                "epoch": epoch_, "step": step_, "accum": dataclasses.asdict(accum),
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "config": dataclasses.asdict(cfg)})

    local_bs = cfg.batch_size // d.world_size
    train_idx = list(range(len(ctx.train_set)))
    test_idx = list(range(len(ctx.test_set)))
    last: dict[str, Any] = {}
    epoch = start_epoch
    run_start = time.perf_counter()
    stop_reason = "epochs"
    if ctx.checkpoint is None:  # a run killed before its first epoch ends can resume too
        checkpoint(0, 0, acc)
    while epoch < cfg.epochs:
        t0 = time.perf_counter()
        net.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        loader = epoch_loader(ctx.train_set, train_idx, batch_size=local_bs, epoch=epoch,
                              seed=cfg.seed, d=d, workers=ctx.workers, start_batch=start_step,
                              pin_memory=device.type == "cuda")
        n_steps = batches_per_epoch(len(train_idx), local_bs, d)
        if cfg.steps_per_epoch:
            n_steps = min(n_steps, cfg.steps_per_epoch)
        bar = ctx.progress(total=n_steps, initial=start_step,
                           desc=f"train {epoch + 1}/{cfg.epochs}")
        model.train()
        step = start_step
        for x, y in itertools.islice(loader, max(n_steps - start_step, 0)):
            ts = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                out = model(x)
                logits, aux = (out if isinstance(out, tuple) else (out, None))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smooth)
                if aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(
                        aux.float(), y, label_smoothing=cfg.label_smooth)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            acc.add_batch(loss, logits, y, time.perf_counter() - ts)
            step += 1
            folder.mark_started()  # from here on the folder is kept
            bar.update(1)
            bar.set_postfix(**acc.postfix())
            _on_step(epoch, step)
            if ctx.stop_requested():
                bar.close()
                checkpoint(epoch, step, acc)
                ctx.interrupted = (epoch, step)
                raise KeyboardInterrupt
        bar.close()
        loss_sum, correct, count, steps, step_time = all_reduce_sums(
            [acc.loss, acc.correct, acc.count, acc.steps, acc.step_time], d, device)
        test_loader = epoch_loader(ctx.test_set, test_idx, batch_size=local_bs, epoch=0,
                                   seed=cfg.seed, d=d, workers=ctx.workers, shuffle=False)
        broadcast_buffers(net, d)
        test_loss, top1, top5 = evaluate(net, test_loader, device, d, autocast)
        record = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": net.drop_path_prob,
                  "train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
                  "test_loss": test_loss, "test_acc": top1, "test_acc_top5": top5,
                  "step_seconds": step_time / max(steps, 1),
                  "epoch_seconds": time.perf_counter() - t0}
        last = record
        epoch += 1
        start_step, acc = 0, EpochSums()
        scheduler.step()
        folder.append_metrics(record)
        checkpoint(epoch, 0, acc)
        ctx.echo(f"epoch {epoch}/{cfg.epochs}: train acc {record['train_acc']:.3f} "
                 f"test acc {top1:.4f} ({record['epoch_seconds']:.1f} s)")
        if cfg.time_limit and time.perf_counter() - run_start >= cfg.time_limit and \
                epoch < cfg.epochs:
            stop_reason = "time_limit"
            break
    if not last:  # resumed a finished run: report its last line
        rows = folder.read_metrics()
        last = rows[-1] if rows else {"test_acc": float("nan"), "test_acc_top5": float("nan")}
    summary = {"command": "train", "world_size": d.world_size, "epochs_run": epoch,
               "stop_reason": stop_reason, "layers": layers, "params": params,
               "test_acc": last["test_acc"], "test_acc_top5": last["test_acc_top5"],
               "genotype": genotype.to_dict()}
    if d.is_main:
        write_json_atomic(folder / "summary.json", summary)
        write_json_atomic(folder / "genotype.json", genotype.to_dict())
    return RunResult(summary, genotype)
