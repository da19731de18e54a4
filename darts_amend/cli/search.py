"""``darts-amend search``: the bi-level DARTS search with an :class:`AmendedArchitect`.

Per step (upstream order): one architect step on (weight batch, alpha batch), then one SGD step of
the weights on the weight batch. Per epoch: evaluation on the alpha half, one metrics line,
an atomic checkpoint. The run is resumable mid-epoch (Ctrl-C) and bit-exact on CPU.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

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
from .settings import SearchConfig, estimator_options

__all__ = ["run_search", "search_network", "estimator_options"]

logger = logging.getLogger(__name__)


def _on_step(epoch: int, step: int) -> None:
    """Called after every search step; tests replace it to simulate Ctrl-C at a given step."""


def _stop_flag(flag: bool, d: Dist, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (only rank 0 runs the diagnostics)."""
    if not d.enabled:
        return flag
    return all_reduce_sums([1.0 if (flag and d.is_main) else 0.0], d, device)[0] > 0


def _weight_loss(net: nn.Module, out: Tensor | tuple[Tensor, Tensor],
                 y: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, logits) of a forward output; the auxiliary tower adds its weighted loss."""
    if isinstance(out, tuple):
        logits, aux = out
        return (F.cross_entropy(logits, y) + net.auxiliary_weight * F.cross_entropy(aux, y),
                logits)
    return F.cross_entropy(out, y), out


_ARCH_SUMS = ("val_loss", "g1_norm", "g2_norm", "grad_norm", "cosine", "cosine_n", "nonfinite",
              "cg_steps", "cg_iterations", "cg_curvature_stops", "cg_first_direction_stops")


@dataclass
class _Accum(EpochSums):
    """The epoch's training sums plus the architect's step info."""

    arch: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_ARCH_SUMS, 0.0))

    def __post_init__(self) -> None:
        for k in _ARCH_SUMS:  # a checkpoint written before a sum existed
            self.arch.setdefault(k, 0.0)


def search_network(cfg: SearchConfig, info: Any) -> nn.Module:
    """The supernet ``darts-amend search`` trains for ``cfg`` on a dataset described by
    ``info`` (``num_classes``, ``in_channels``), on the CPU, initialised from the global RNG:
    after ``seed_everything(cfg.seed)`` it is the search's own starting network, bit for bit."""
    from darts_amend.supernet import build_search_network

    return build_search_network(
        cfg.space, C=cfg.init_channels, num_classes=info.num_classes, layers=cfg.layers,
        in_channels=info.in_channels, partial_channels=cfg.partial_channels,
        edge_normalization=cfg.edge_normalization, drop_path_prob=cfg.drop_path_prob,
        dropout=cfg.dropout, auxiliary=cfg.auxiliary, auxiliary_weight=cfg.auxiliary_weight,
        # ImageNet-sized inputs: the stride-8 stem of DARTS' ImageNet network (as PC-DARTS)
        stem="imagenet" if cfg.dataset == "imagenet" else "cifar",
    )


def run_search(cfg: SearchConfig, ctx: RunContext) -> RunResult:
    """Run (or continue) a search; ``ctx`` carries data, folder, device and resume state.

    Returns the summary (also written to ``summary.json``) and the genotype."""
    from darts_amend import AmendedArchitect
    from darts_amend.diagnostics import collapse_signals, epoch_diagnostics
    from darts_amend.supernet import Genotype, get_space

    d: Dist = ctx.dist
    device: torch.device = ctx.device
    folder: RunFolder = ctx.folder
    seed_everything(cfg.seed)
    if cfg.until_converged and cfg.space == "s2" and d.is_main:
        logger.warning("--until-converged on s2: with two ops per edge the winning op always "
                       "weighs >= 0.5, so the rule reduces to genotype stability")
    early_stop = ({"window": cfg.early_stop_window, "lag": cfg.early_stop_lag,
                   "factor": cfg.early_stop_factor, "start_epoch": cfg.early_stop_start}
                  if cfg.early_stop else None)
    net = search_network(cfg, ctx.info).to(device)
    if d.enabled:  # identical alphas and weights on every rank from the start
        for t in list(net.parameters()) + list(net.buffers()):
            dist.broadcast(t.data, src=0)
    weights = net.weight_parameters()
    optimizer = torch.optim.SGD(weights, lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs, eta_min=cfg.learning_rate_min)
    architect = AmendedArchitect(
        net, estimator=cfg.estimator, lr=cfg.arch_learning_rate,
        betas=(cfg.arch_beta1, cfg.arch_beta2), weight_decay=cfg.arch_weight_decay,
        **estimator_options(cfg))
    model: nn.Module = net
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        arch_ids = {id(p) for p in net.arch_parameters()}
        DDP._set_params_and_buffers_to_ignore_for_model(
            net, [n for n, p in net.named_parameters() if id(p) in arch_ids])
        model = DDP(net, device_ids=[device] if device.type == "cuda" else None)

    start_epoch, start_step, acc = 0, 0, _Accum()
    alpha_steps, converged_run = 0, 0
    history: list[dict[str, Any]] = []
    prev_genotype: dict[str, Any] | None = None  # in the checkpoint: ranks need no shared files
    if ctx.checkpoint is not None:
        ck = ctx.checkpoint
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        architect.load_state_dict(ck["architect"])
        start_epoch, start_step = ck["epoch"], ck["step"]
        acc = _Accum(**ck["accum"])
        alpha_steps, converged_run = ck["alpha_steps"], ck["converged_run"]
        prev_genotype = ck["prev_genotype"]
        history = folder.read_metrics()[:start_epoch] if d.is_main else []
        set_rng_state(ck["rng"])
        if start_step:
            logger.info("resumed in epoch %d at step %d", start_epoch + 1, start_step)
        else:
            logger.info("resumed after epoch %d", start_epoch)

    local_bs = cfg.batch_size // d.world_size
    train_idx, valid_idx = ctx.split
    stop_reason = "epochs"
    epoch = start_epoch
    run_start = time.perf_counter()
    last: dict[str, Any] = history[-1] if history else {}
    # a run that already stopped early (resumed after its end) stops again, before any epoch
    stopped_early = _stop_flag(bool(early_stop is not None and history
                                    and history[-1].get("diag/early_stop")), d, device)

    # an interrupted epoch keeps its last batch pair: the end-of-epoch diagnostics read it
    resume_batches = None
    if ctx.checkpoint is not None and ctx.checkpoint.get("last_batches") is not None:
        resume_batches = tuple((x.to(device), y.to(device))
                               for x, y in ctx.checkpoint["last_batches"])

    def checkpoint(epoch_: int, step_: int, accum: _Accum, batches: Any = None) -> None:
        if not d.is_main:
            return
        folder.checkpoints.save({
            "epoch": epoch_, "step": step_, "accum": dataclasses.asdict(accum),
            "alpha_steps": alpha_steps, "prev_genotype": prev_genotype,
            "converged_run": converged_run, "model": net.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "architect": architect.state_dict(), "rng": rng_state(),
            "last_batches": batches, "config": dataclasses.asdict(cfg),
        })

    if ctx.checkpoint is None:  # a run killed before its first epoch ends can resume too
        checkpoint(0, 0, acc)
    while epoch < cfg.epochs and not stopped_early:
        t0 = time.perf_counter()
        net.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        mk = dict(batch_size=local_bs, epoch=epoch, d=d, workers=ctx.workers,
                  start_batch=start_step, pin_memory=device.type == "cuda")
        train_loader = epoch_loader(ctx.train_set, train_idx, seed=cfg.seed, **mk)
        valid_loader = epoch_loader(ctx.train_set, valid_idx, seed=cfg.seed + 7919, **mk)
        n_steps = batches_per_epoch(min(len(train_idx), len(valid_idx)), local_bs, d)
        if cfg.steps_per_epoch:
            n_steps = min(n_steps, cfg.steps_per_epoch)
        bar = ctx.progress(total=n_steps, initial=start_step,
                           desc=f"search {epoch + 1}/{cfg.epochs}")
        step = start_step
        model.train()
        last_batches, resume_batches = resume_batches, None
        pairs = itertools.islice(zip(train_loader, valid_loader, strict=False),
                                max(n_steps - start_step, 0))
        for (x, y), (xv, yv) in pairs:
            ts = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            xv, yv = xv.to(device, non_blocking=True), yv.to(device, non_blocking=True)
            per_step: dict[str, Any] = {}
            if cfg.estimator == "unrolled":
                per_step = {"xi": lr, "momentum": cfg.momentum,
                            "weight_decay": cfg.weight_decay,
                            "momentum_buffers": [optimizer.state.get(p, {}).get(
                                "momentum_buffer") for p in weights]}
                if all(b is None for b in per_step["momentum_buffers"]):
                    per_step["momentum_buffers"] = None
            architect.zero_grad(set_to_none=True)
            info = architect.step((x, y), (xv, yv), **per_step)
            alpha_steps += 1
            optimizer.zero_grad(set_to_none=True)
            loss, logits = _weight_loss(net, model(x), y)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            optimizer.step()
            architect.zero_grad(set_to_none=True)
            # accumulators
            acc.add_batch(loss, logits, y, time.perf_counter() - ts)
            a = acc.arch
            if info.finite:
                a["val_loss"] += info.val_loss
                a["g1_norm"] += info.g1_norm
                a["g2_norm"] += info.g2_norm
                a["grad_norm"] += info.grad_norm
                if math.isfinite(info.cosine):
                    a["cosine"] += info.cosine
                    a["cosine_n"] += 1
                if "cg_stop" in info.solver:  # implicit_cg: how its solver ended
                    a["cg_steps"] += 1
                    a["cg_iterations"] += info.solver["cg_iterations"]
                    if info.solver["cg_stop"] == "curvature":
                        a["cg_curvature_stops"] += 1
                        a["cg_first_direction_stops"] += info.solver["cg_iterations"] == 0
            else:
                a["nonfinite"] += 1
            step += 1
            folder.mark_started()  # from here on the folder is kept
            if ctx.estimate_time and step == start_step + 1 and epoch == start_epoch:
                sec = time.perf_counter() - ts
                ctx.progress.end_line()
                print(f"darts-amend: first step {sec:.1f} s: about {sec * n_steps / 60:.0f} min "
                      f"per epoch ({n_steps} steps), {sec * n_steps * cfg.epochs / 3600:.1f} h "
                      f"for {cfg.epochs} epochs (Ctrl-C stops with a checkpoint)",
                      file=sys.stderr, flush=True)
            last_batches = ((x, y), (xv, yv))
            bar.update(1)
            bar.set_postfix(**acc.postfix())
            _on_step(epoch, step)
            if ctx.stop_requested():
                bar.close()
                checkpoint(epoch, step, acc, last_batches)
                ctx.interrupted = (epoch, step)
                raise KeyboardInterrupt
        bar.close()
        # ---- end of epoch: reduce, evaluate, diagnose, record, checkpoint
        sums = all_reduce_sums(
            [acc.loss, acc.correct, acc.count, acc.steps, acc.step_time]
            + [acc.arch[k] for k in sorted(acc.arch)], d, device)
        loss_sum, correct, count, steps, step_time = sums[:5]
        arch = dict(zip(sorted(acc.arch), sums[5:], strict=True))
        n_finite = max(steps - arch["nonfinite"], 1.0)
        valid_eval = epoch_loader(ctx.train_set, valid_idx, batch_size=local_bs, epoch=0,
                                  seed=cfg.seed, d=d, workers=ctx.workers, shuffle=False)
        broadcast_buffers(net, d)
        valid_loss, valid_acc, _ = evaluate(net, valid_eval, device, d)
        signals = collapse_signals(net, threshold=cfg.converge_threshold)
        genotype = net.genotype()
        held = bool(signals["collapse/kept_above"]) and prev_genotype == genotype.to_dict()
        prev_genotype = genotype.to_dict()
        converged_run = converged_run + 1 if held else 0
        record: dict[str, Any] = {
            # epochs are numbered from 1 everywhere: console, metrics, plots, messages
            "epoch": epoch + 1, "lr": lr, "alpha_steps": alpha_steps,
            "train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "valid_loss": valid_loss, "valid_acc": valid_acc,
            "arch/val_loss": arch["val_loss"] / n_finite,
            "arch/g1_norm": arch["g1_norm"] / n_finite,
            "arch/g2_norm": arch["g2_norm"] / n_finite,
            "arch/grad_norm": arch["grad_norm"] / n_finite,
            "arch/cosine": (arch["cosine"] / arch["cosine_n"]) if arch["cosine_n"] else None,
            "arch/nonfinite_steps": int(arch["nonfinite"]),
            **({  # implicit_cg only; counts over the epoch's steps (summed over ranks)
                "arch/cg_iterations": arch["cg_iterations"] / arch["cg_steps"],
                "arch/cg_curvature_stops": int(arch["cg_curvature_stops"]),
                "arch/cg_first_direction_stops": int(arch["cg_first_direction_stops"]),
            } if arch["cg_steps"] else {}),
            "drop_path_prob": net.drop_path_prob,
            "alphas": {k: w.tolist() for k, w in net.edge_weights().items()},
            "genotype": genotype.to_dict(),
            "converged_epochs": converged_run,
        }
        if d.is_main and cfg.diag_every > 0 and epoch % cfg.diag_every == 0 and last_batches:
            diag = epoch_diagnostics(
                net, last_batches[0], last_batches[1], epoch=epoch + 1, history=history,
                every=1, curvature=("alphas",),
                estimators={"first_order": {}, "amended": {"eta": cfg.eta}},
                reference="implicit_cg", converge_threshold=cfg.converge_threshold,
                early_stop=early_stop)
            record.update(diag)
        else:
            record.update(signals)
        record["step_seconds"] = step_time / max(steps, 1)
        record["epoch_seconds"] = time.perf_counter() - t0
        history.append(record)
        last = record
        epoch += 1
        start_step, acc = 0, _Accum()
        scheduler.step()
        folder.append_metrics(record)
        checkpoint(epoch, 0, acc)
        if d.is_main:
            cg = ("" if "arch/cg_iterations" not in record else
                  f"CG {record['arch/cg_iterations']:.1f} updates/step, non-positive curvature "
                  f"in {record['arch/cg_curvature_stops']} of {int(arch['cg_steps'])} steps "
                  f"(g2 = 0 in {record['arch/cg_first_direction_stops']}) ")
            ctx.echo(f"epoch {epoch}/{cfg.epochs}: train acc {record['train_acc']:.3f} "
                     f"valid acc {valid_acc:.3f} skip share "
                     f"{record['collapse/skip_share']:.2f} kept weight min "
                     f"{record['collapse/kept_weight_min']:.3f} {cg}"
                     f"({record['epoch_seconds']:.1f} s)")
        if early_stop is not None:  # decided on rank 0 (it alone diagnoses); all ranks stop
            stopped_early = _stop_flag(bool(d.is_main and record.get("diag/early_stop")), d,
                                       device)
            if stopped_early:
                break
        if cfg.until_converged and converged_run >= cfg.until_converged:
            stop_reason = "converged"
            break
        if cfg.time_limit and time.perf_counter() - run_start >= cfg.time_limit and \
                epoch < cfg.epochs:
            stop_reason = "time_limit"
            break

    genotype = net.genotype()
    revert: dict[str, Any] = {}
    if stopped_early:
        stop_reason = "early_stop"
        if d.is_main:
            stop_record = history[-1]
            revert_epoch = int(stop_record["diag/revert_epoch"])
            kept = [r for r in history if r.get("epoch") == revert_epoch]
            if not kept:
                raise RuntimeError(f"early stop reverts to epoch {revert_epoch}, which "
                                   f"metrics.jsonl does not hold")
            genotype = Genotype.from_dict(kept[-1]["genotype"])
            revert = {"revert_epoch": revert_epoch,
                      "early_stop_epoch": int(stop_record["epoch"]),
                      "early_stop_ratio": stop_record.get("diag/early_stop_ratio")}
    if get_space(cfg.space).topology.keeps_none and not genotype.connected():
        logger.warning("the final genotype %s has no path from the cell input to its "
                       "output that avoids `none`: its network cannot learn (it re-trains to "
                       "chance accuracy)", genotype)
    summary = {
        "command": "search", "world_size": d.world_size, "epochs_run": epoch,
        "alpha_steps": alpha_steps,
        "stop_reason": stop_reason, "converged": converged_run > 0,
        "converged_epochs": converged_run,
        "valid_acc": last.get("valid_acc", history[-1]["valid_acc"] if history else None),
        "skip_share": genotype.skip_share(),
        "kept_weight_min": last.get("collapse/kept_weight_min"),
        "genotype": genotype.to_dict(),
        **revert,
    }
    if d.is_main:
        write_json_atomic(folder / "genotype.json", genotype.to_dict())
        write_json_atomic(folder / "summary.json", summary)
    return RunResult(summary, genotype)
