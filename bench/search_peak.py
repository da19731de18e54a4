"""Wall time and peak memory of a short ``darts-amend search`` (the CLI as a user runs it).

Runs ``darts-amend search`` in this process on torchvision FakeData at CIFAR size (3x32x32, 10
classes) on the DARTS space, then prints one markdown row per estimator: seconds per epoch
(mean over the epochs after the first, which also pays for start-up; the first epoch alone when
there is only one), alpha steps, and the peak memory: on CUDA ``torch.cuda.max_memory_allocated``
over the whole run (reset before each run), on CPU the process's peak resident set size (a
high-water mark over the whole process, so only the first row's CPU figure is its own).

    python bench/search_peak.py --device cuda                       # C=16, 8 cells, batch 64
    python bench/search_peak.py --device cpu --layers 2 --init_channels 4 --batch_size 8 \\
        --fake_size 64 --epochs 1 --estimators first_order          # a smoke run
    python bench/search_peak.py --device cuda --estimators first_order --cudnn_benchmark \\
        --profile profile.txt                                       # where a step's time goes

``--cudnn_benchmark`` sets ``torch.backends.cudnn.benchmark`` for the runs (the row says so).
``--profile PATH`` runs ``torch.profiler`` over ``--profile_steps`` search steps after two
(one skipped, one warm-up) and writes the operators' table, sorted by self CPU time and, on
CUDA, by self CUDA time, to PATH; the profiled run's times include the profiler's overhead.

Every run writes into a fresh temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from darts_amend.cli import main as cli_main
from darts_amend.cli import search as cli_search


def run_one(args: argparse.Namespace, estimator: str, device: torch.device) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="search_peak-") as tmp:
        out = Path(tmp) / "run"
        argv = ["search", "--dataset", "fake", "--fake_size", str(args.fake_size),
                "--image_size", "32", "--space", "darts", "--layers", str(args.layers),
                "--init_channels", str(args.init_channels), "--batch_size", str(args.batch_size),
                "--epochs", str(args.epochs), "--estimator", estimator,
                "--device", str(device), "--no-progress", "--no-plots", "-q",
                "--output", str(out)]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), _profiled(args, device):
            rc = cli_main(argv)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        if rc != 0:
            raise SystemExit(f"search_peak.py: darts-amend search failed (rc {rc}) for {estimator}")
        epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                  if line.strip()]
        summary = json.loads((out / "summary.json").read_text())
    seconds = [e["epoch_seconds"] for e in epochs
               if isinstance(e.get("epoch_seconds"), (int, float))]
    per_epoch = (sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1
                 else seconds[0] if seconds else float("nan"))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # ru_maxrss is KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"estimator": estimator, "wall_s": wall, "s_per_epoch": per_epoch,
            "alpha_steps": summary.get("alpha_steps"), "peak_mib": peak}


@contextlib.contextmanager
def _profiled(args: argparse.Namespace, device: torch.device) -> Any:
    """``torch.profiler`` over ``--profile_steps`` search steps (after one skipped and one
    warm-up step), stepped by the search loop's per-step hook; its table goes to --profile."""
    if not args.profile:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.type == "cuda" else [])
    hook = cli_search._on_step
    with profile(activities=activities,
                 schedule=schedule(wait=1, warmup=1, active=args.profile_steps, repeat=1),
                 acc_events=True) as prof:
        steps = []

        def on_step(epoch: int, step: int) -> None:
            steps.append(step)
            prof.step()

        cli_search._on_step = on_step
        try:
            yield prof
        finally:
            cli_search._on_step = hook
    table = prof.key_averages()
    parts = [f"{args.profile_steps} search steps profiled ({device.type})\n",
             table.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50)]
    if len(steps) < 2 + args.profile_steps:
        parts = [f"(nothing recorded: the run had {len(steps)} steps, fewer than the "
                 f"{args.profile_steps + 2} the profile needs)"]
    elif device.type == "cuda":
        for key in ("self_device_time_total", "self_cuda_time_total"):  # the name by version
            try:
                parts.append(table.table(sort_by=key, row_limit=20, max_name_column_width=50))
                break
            except (AttributeError, KeyError, ValueError):
                continue
    Path(args.profile).write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--estimators", nargs="+", default=["first_order", "unrolled", "amended"])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--init_channels", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--fake_size", type=int, default=2560,
                   help="FakeData images (half train the weights, half the alphas)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="set torch.backends.cudnn.benchmark for the runs")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="write a torch.profiler table of --profile_steps steps (the first "
                        "estimator's run) to PATH")
    p.add_argument("--profile_steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.profile_steps < 1:
        p.error("--profile_steps must be >= 1")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    print(f"darts-amend search, darts space, FakeData 3x32x32, C={args.init_channels}, "
          f"{args.layers} cells, batch {args.batch_size}, {args.fake_size} images, "
          f"{args.epochs} epochs; {name}, torch {torch.__version__}", flush=True)
    print("| estimator | s / epoch | wall s | alpha steps | peak MiB |\n|---|---:|---:|---:|---:|",
          flush=True)
    for i, estimator in enumerate(args.estimators):
        r = run_one(args if i == 0 else argparse.Namespace(**{**vars(args), "profile": None}),
                    estimator, device)
        label = r["estimator"] + (" (cudnn.benchmark)" if args.cudnn_benchmark else "") + (
            " (profiled)" if args.profile and i == 0 else "")
        print(f"| {label} | {r['s_per_epoch']:.2f} | {r['wall_s']:.1f} | "
              f"{r['alpha_steps']} | {r['peak_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
