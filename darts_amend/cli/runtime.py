"""What every run needs: device and torchrun setup, the output folder, atomic checkpoints,
RNG state capture, metrics lines and data loaders that can restart mid-epoch."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .checkpoint import CURRENT, PREVIOUS, Checkpoints, write_atomic
from .config import CLIError
from .settings import RUN_KEYS

__all__ = [
    "Dist",
    "setup_distributed",
    "pick_device",
    "RunFolder",
    "config_diff",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "epoch_loader",
    "all_reduce_sums",
    "broadcast_buffers",
    "EpochSums",
    "evaluate",
]

logger = logging.getLogger(__name__)

RUN_FILES = ("config.json", "metrics.jsonl", CURRENT, PREVIOUS, "genotype.json", "summary.json")
# where a --force run keeps the files of the run it replaces until its first step succeeded
ASIDE = ".replaced-run"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run initialised the process group (and tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_flag: str,
                      timeout: float = 600.0) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA).

    ``timeout`` (seconds) bounds every collective: a rank whose peer died or hangs raises
    instead of waiting forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_flag, 0)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_flag, local)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        import datetime

        dist.init_process_group(backend=backend,
                                timeout=datetime.timedelta(seconds=timeout))
    return Dist(rank, world, local, owns), device


def pick_device(flag: str, local_rank: int = 0) -> torch.device:
    if flag == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise CLIError(f"invalid device {flag!r} (e.g. auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"device {flag!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def all_reduce_sums(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum per-rank accumulators over all ranks (float64)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if d.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


# --------------------------------------------------------------------------- folder


class RunFolder:
    """The output folder of one run; only rank 0 writes."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.checkpoints = Checkpoints(self.path, writer=writer)
        self._keep_epochs: int | None = None  # metrics truncation owed by a resumed run
        # a fresh run's folder is provisional until its first step succeeded: a failure before
        # that (a bad setting found late, out of memory, a broken data file) removes what this
        # run wrote, so that the corrected command works in the same folder
        self._provisional = False
        self._created: Path | None = None  # the outermost folder this run created
        # --force: the replaced run's files wait in ASIDE until the first step succeeded (then
        # they are deleted) or the run fails before it (then they are put back)
        self._aside: Path | None = None
        self._torn: set[int] = set()  # metrics.jsonl lines already reported as unreadable

    @property
    def started(self) -> bool:
        return not self._provisional

    def mark_started(self) -> None:
        """The run's first step succeeded: from now on the folder is kept whatever happens, and
        the files of a run it replaced (``--force``) are deleted."""
        self._provisional = False
        if self._aside is not None and self.writer:
            shutil.rmtree(self._aside, ignore_errors=True)
        self._aside = None

    def adopt_leftovers(self) -> None:
        """A resumed run: the replaced files a killed ``--force`` run left in ASIDE belong to
        no run any more; they are deleted with this run's first step."""
        if (self.path / ASIDE).is_dir():
            self._aside = self.path / ASIDE

    def discard(self) -> None:
        """Undo :meth:`start` of a run that never took a step (no-op once started, and for a
        resumed run): remove the run files it wrote and the folders it created, and put back
        the files of the run a ``--force`` replaced."""
        if not (self.writer and self._provisional):
            return
        self._provisional = False
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for tmp in self.path.glob(f".{CURRENT}.*.tmp"):
            tmp.unlink(missing_ok=True)
        if self._aside is not None:  # --force: the replaced run's files go back
            for item in self._aside.iterdir():
                os.replace(item, self.path / item.name)
            self._aside.rmdir()
            self._aside = None
        if self._created is None:
            return
        folder = self.path
        while True:  # the run folder and the parents it created, while empty
            try:
                folder.rmdir()
            except OSError:
                return
            if folder == self._created:
                return
            folder = folder.parent

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def stored_config(self) -> dict[str, Any] | None:
        p = self.path / "config.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise CLIError(f"{p} is not valid JSON ({err}); pass --force to start over") from None

    def check_fresh(self, command: str, force: bool) -> None:
        """Refuse a folder that holds anything unless ``force`` (never called with --resume)."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise CLIError(f"output {self.path} exists and is not a folder")
        entries = [p.name for p in self.path.iterdir()]
        if not entries or force:
            return
        if set(entries) <= {"config.json"} and not self.checkpoints.exists():
            return  # a run that stopped before its first checkpoint: nothing to lose
        stored = self.stored_config()
        if stored is not None:
            raise CLIError(
                f"output folder {self.path} already holds a {stored.get('command', '?')} run; "
                f"pass --resume to continue it or --force to overwrite it, or choose another "
                f"--output")
        raise CLIError(f"output folder {self.path} is not empty ({', '.join(sorted(entries)[:5])}"
                       f"); choose another --output or pass --force")

    def check_resumable(self, command: str, config: dict[str, Any]) -> dict[str, Any]:
        stored = self.stored_config()
        missing = [n for n, ok in (("config.json", stored is not None),
                                   (CURRENT, self.checkpoints.exists())) if not ok]
        if missing:
            raise CLIError(f"nothing to resume in {self.path}: it has no {' and no '.join(missing)}"
                           f" (the earlier run never finished a step); start it again without "
                           f"--resume")
        if stored.get("command") != command:
            raise CLIError(f"{self.path} holds a {stored.get('command')} run, not a {command} run")
        details = config_diff(stored.get("config", {}), config, defaults=_defaults(command))
        if details:
            raise CLIError(f"cannot resume {self.path} with a different configuration ({details})"
                           f"; drop those flags, or start a new run with --output / --force")
        return stored

    def check_checkpoint_config(self, ckpt: dict[str, Any], config: dict[str, Any],
                                command: str) -> None:
        """Refuse a checkpoint saved under another configuration than config.json's (an edited
        config.json); checkpoints of earlier versions carry no config and are not checked."""
        saved = ckpt.get("config")
        details = config_diff(saved, config, defaults=_defaults(command)) \
            if isinstance(saved, dict) else ""
        if details:
            raise CLIError(f"{self.path / 'config.json'} does not match {CURRENT} ({details}); "
                           f"restore config.json, or start over with --force")

    def start(self, command: str, config: dict[str, Any], *, force: bool) -> None:
        if not self.writer:
            return
        created = None
        for folder in (self.path, *self.path.parents):  # the outermost missing folder
            if folder.exists():
                break
            created = folder
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(f"cannot create the output folder {self.path}: "
                           f"{err.strerror or err}") from None
        self._created, self._provisional = created, True
        try:
            if force:
                self._set_aside()
            write_json_atomic(self.path / "config.json", {"command": command, "config": config})
        except CLIError:
            self.discard()
            raise

    def _set_aside(self) -> None:
        """``--force``: move the old run's files (run files, plots, checkpoint temporaries)
        into ASIDE inside the folder; renames only, so nothing is copied or lost."""
        aside = self.path / ASIDE
        # left by a --force run killed before its first step: those files were already
        # replaced once, and this --force replaces them again
        shutil.rmtree(aside, ignore_errors=True)
        old = [self.path / n for n in RUN_FILES] + sorted(self.path.glob("*.png")) + [
            self.path / "plots", *sorted(self.path.glob(f".{CURRENT}.*.tmp"))]
        old = [p for p in old if p.exists()]
        if not old:
            return
        moved: list[Path] = []
        try:
            aside.mkdir()
            for p in old:
                os.replace(p, aside / p.name)
                moved.append(p)
            self._aside = aside
        except OSError as err:
            for p in moved:  # put back what was moved; the folder is as it was
                os.replace(aside / p.name, p)
            shutil.rmtree(aside, ignore_errors=True)
            self._provisional = False  # nothing of this run to discard
            raise CLIError(f"cannot replace the run in {self.path}: {err.strerror or err}"
                           ) from None

    def append_metrics(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        p = self.path / "metrics.jsonl"
        line = json.dumps(record, default=_json_default) + "\n"
        try:
            if self._keep_epochs is not None:  # first record of a resumed run
                kept = "".join(ln + "\n" for ln, rec in self._metric_lines()
                               if rec.get("epoch", 0) <= self._keep_epochs)
                write_atomic(p, lambda fh: fh.write((kept + line).encode()))
                self._keep_epochs = None
                return
            with open(p, "a") as fh:
                fh.write(line)
        except OSError as err:
            raise CLIError(f"could not write {p}: {err.strerror or err}") from None

    def resume_metrics(self, epochs_done: int) -> None:
        """A resumed run drops the lines of epochs its checkpoint does not cover (a crash
        between the two writes, or a fallback to the previous checkpoint); the file is
        rewritten only with the run's first new record, never before."""
        self._keep_epochs = epochs_done

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) of metrics.jsonl; a line that is not a JSON object (the torn last
        line of a run killed mid-write) is skipped with a warning, and a resumed run drops it
        when it rewrites the file."""
        p = self.path / "metrics.jsonl"
        if not p.is_file():
            return []
        rows = []
        for n, ln in enumerate(p.read_text().splitlines(), 1):
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                if n not in self._torn:  # said once, though the file is read more than once
                    self._torn.add(n)
                    logger.warning("%s line %d is not a JSON record (cut off by a kill?); "
                                   "skipped", p, n)
                continue
            rows.append((ln, rec))
        return rows

    def read_metrics(self) -> list[dict[str, Any]]:
        rows = [rec for _, rec in self._metric_lines()]
        if self._keep_epochs is not None:
            rows = [r for r in rows if r.get("epoch", 0) <= self._keep_epochs]
        return rows


def _defaults(command: str) -> dict[str, Any]:
    from .config import config_to_dict
    from .settings import SearchConfig, TrainConfig

    return config_to_dict(SearchConfig() if command == "search" else TrainConfig())


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 3,
                defaults: dict[str, Any] | None = None) -> str:
    """The settings (not the RUN_KEYS) that differ, ``key: old -> new``, the first ``limit``
    of them and a count of the rest, each value cut to 40 characters: one short line.

    ``defaults``: what a setting missing from ``old`` counts as (a run folder of an earlier
    version, written before the setting existed, ran with its default)."""
    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    if defaults:
        old = {k: v for k, v in defaults.items() if k in new} | old
    keys = sorted(k for k in set(old) | set(new) if k not in RUN_KEYS and old.get(k) != new.get(k))
    parts = [f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return "; ".join(parts)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if hasattr(obj, "to_json"):
        return json.loads(obj.to_json()) if isinstance(obj.to_json(), str) else obj.to_json()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode()))


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, as tensors and plain data only, so
    that a checkpoint loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- data


def epoch_loader(
    dataset: Dataset, indices: list[int], *, batch_size: int, epoch: int, seed: int, d: Dist,
    workers: int, start_batch: int = 0, shuffle: bool = True, drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's batches of ``dataset[indices]`` for one epoch, from batch ``start_batch``.

    The order is a permutation fixed by ``(seed, epoch)`` and sharded over ranks with
    ``DistributedSampler``, so a run restarted mid-epoch sees exactly the remaining batches.
    """
    subset = Subset(dataset, indices)
    sampler = DistributedSampler(subset, num_replicas=d.world_size, rank=d.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = list(sampler)
    if drop_last:
        order = order[: len(order) // batch_size * batch_size]
    order = order[start_batch * batch_size:]
    # a private generator: creating the iterator draws its worker base seed from it, never from
    # the global RNG (which a resumed run has already restored past that point)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + start_batch) % 2**63)
    return DataLoader(Subset(subset, order), batch_size=batch_size, shuffle=False,
                      num_workers=workers, drop_last=False, pin_memory=pin_memory,
                      persistent_workers=False, generator=gen)


def batches_per_epoch(n: int, batch_size: int, d: Dist, drop_last: bool = False) -> int:
    per_rank = -(-n // d.world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


@dataclass
class EpochSums:
    """Per-epoch training sums on this rank (reduced over ranks when the epoch ends); saved in
    checkpoints with ``dataclasses.asdict`` so that a run resumes mid-epoch exactly."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    step_time: float = 0.0
    steps: float = 0.0

    def add_batch(self, loss: Tensor, logits: Tensor, y: Tensor, seconds: float) -> None:
        self.loss += float(loss.detach()) * len(y)
        self.correct += float((logits.detach().argmax(1) == y).sum())
        self.count += len(y)
        self.steps += 1
        self.step_time += seconds

    def postfix(self) -> dict[str, str]:
        """The progress bar's running loss, accuracy and seconds per step."""
        return {"loss": f"{self.loss / self.count:.3f}", "acc": f"{self.correct / self.count:.3f}",
                "s_per_step": f"{self.step_time / self.steps:.2f}"}


def _topk_correct(logits: Tensor, y: Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == y[:, None]).any(dim=1).sum())


@torch.no_grad()
def evaluate(net: nn.Module, loader, device: torch.device, d: Dist,
             autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[float, float, float]:
    """(mean loss, top-1, top-5 accuracy) in eval mode over this rank's loader, reduced over
    ranks; the network's train/eval mode is restored afterwards."""
    was_training = net.training
    net.eval()
    sums = [0.0, 0.0, 0.0, 0.0]
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = net(x)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[1] += float((logits.argmax(1) == y).sum())
        sums[2] += _topk_correct(logits, y, 5)
        sums[3] += len(y)
    net.train(was_training)
    loss, top1, top5, n = all_reduce_sums(sums, d, device)
    n = max(n, 1.0)
    return loss / n, top1 / n, top5 / n
