"""Time and peak memory of one architect step, every estimator and cost option, against an
upstream-style second-order DARTS step, on a stand-in of the quark0/darts search supernet.

The model is :class:`darts_supernet.DartsSearchNet` (8 ops incl. ``none``, 14 edges, shared
alphas, ReLU-conv-BN, ``layers`` cells, training mode, float32). The baseline is the replay of
quark0/darts' second-order architect in ``tests/test_adapters_support.py`` (``new()``, unrolled
weights with SGD momentum, central finite differences with R = 0.01 / ||v||) followed by the
same Adam step; every other row is one ``AmendedArchitect.step`` (hypergradient + Adam) on the
same model and batches, or (rows ``adapter-*``) one ``step`` of the quark0/darts adapter
(``darts_amend.adapters.darts.Architect(model, args)``), the call upstream's loop makes.

Timing: all rows interleaved round by round (row 1, 2, ..., 1, 2, ...) on one intra-op thread,
so a change of load on a shared machine hits all rows alike; median wall and process-CPU time.
Memory: one child process per row; after a warm-up step, the peak extra memory of one step
(CPU: resident set size sampled every millisecond above the size before the step, after
``malloc_trim``; CUDA: ``torch.cuda.max_memory_allocated`` above the allocated memory before).

    python bench/option_cost.py --C 8 --batch 32            # the docs/benchmarks.md tables
    python bench/option_cost.py --C 16 --batch 32 --only baseline amended-exact amended-fd1
    python bench/option_cost.py --list
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from darts_amend import AmendedArchitect
from darts_amend.adapters import darts as darts_adapter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_support, malloc_trim, peak_extra_bytes, timed_round_robin  # noqa: E402
from darts_supernet import DartsSearchNet  # noqa: E402


def cases(batch: int, cg: int, neumann: int) -> dict[str, tuple[str, str, dict]]:
    """name -> (description, estimator or 'upstream-*', estimator options)."""
    half = max(batch // 2, 1)
    return {
        "upstream-fo": ("upstream-style first-order (loss.backward)", "upstream-first", {}),
        "baseline": ("upstream-style second-order (new(), central FD)", "upstream-second", {}),
        "first_order": ("first_order", "first_order", {}),
        "amended-exact-native": (
            "amended exact, fast_depthwise=False (PyTorch's double backward)",
            "amended",
            {"fast_depthwise": False},
        ),
        "amended-exact": ("amended exact (default)", "amended", {}),
        "amended-exact-c2": ("amended exact, chunks=2", "amended", {"chunks": 2}),
        "amended-exact-c4": ("amended exact, chunks=4", "amended", {"chunks": 4}),
        "amended-exact-m2": (
            f"amended exact, second_order_batch={half}",
            "amended",
            {"second_order_batch": half},
        ),
        "amended-fd": (
            "amended finite_difference (central)",
            "amended",
            {"mode": "finite_difference"},
        ),
        "amended-fd1": ("amended forward_difference", "amended", {"mode": "forward_difference"}),
        "amended-fd1-m2": (
            f"amended forward_difference, second_order_batch={half}",
            "amended",
            {"mode": "forward_difference", "second_order_batch": half},
        ),
        "amended-fd1-c4": (
            "amended forward_difference, chunks=4",
            "amended",
            {"mode": "forward_difference", "chunks": 4},
        ),
        "unrolled-fd": (
            "unrolled finite_difference (central)",
            "unrolled",
            {"mode": "finite_difference"},
        ),
        "unrolled-fd1": ("unrolled forward_difference", "unrolled", {"mode": "forward_difference"}),
        "unrolled-exact": ("unrolled exact", "unrolled", {}),
        "cg": (f"implicit_cg exact, {cg} iterations", "implicit_cg", {"iterations": cg}),
        "neumann": (
            f"implicit_neumann exact, {neumann} terms",
            "implicit_neumann",
            {"terms": neumann},
        ),
        # through the quark0/darts adapter (Architect(model, args).step(...)), as a user runs it
        "adapter-exact": ("DARTS adapter, amended exact (default)", "adapter", {}),
        "adapter-fd1": (
            "DARTS adapter, --amend_mode forward_difference",
            "adapter",
            {"amend_mode": "forward_difference"},
        ),
        "adapter-exact-c4": ("DARTS adapter, --amend_chunks 4", "adapter", {"amend_chunks": 4}),
    }


DEFAULT_ROWS = [
    "upstream-fo",
    "baseline",
    "first_order",
    "amended-exact-native",
    "amended-exact",
    "amended-exact-c2",
    "amended-exact-c4",
    "amended-exact-m2",
    "amended-fd",
    "amended-fd1",
    "amended-fd1-m2",
    "amended-fd1-c4",
    "unrolled-fd",
    "unrolled-fd1",
    "adapter-exact",
    "adapter-fd1",
]


def _setup(opts: argparse.Namespace, support) -> tuple:
    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    torch.manual_seed(0)
    model = DartsSearchNet(C=opts.C, layers=opts.layers).to(device)
    model._initialize_alphas()  # leaf alphas do not follow .to() (the upstream quirk)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(opts.batch, 3, opts.size, opts.size, generator=gen).to(device),
            torch.randint(0, 10, (opts.batch,), generator=gen).to(device),
        )
        for _ in range(3)
    ]
    optimizer = torch.optim.SGD(model.parameters(), opts.lr, momentum=0.9, weight_decay=3e-4)
    optimizer.zero_grad()
    model._loss(*batches[2]).backward()
    optimizer.step()  # momentum buffers exist, as in a running search
    return model, optimizer, batches[0], batches[1]


def _stepper(name: str, opts, support, model, optimizer, tb, vb) -> Callable[[], None]:
    """A fresh copy of model and optimizer and a function doing one architect step on it."""
    _, kind, options = cases(opts.batch, opts.cg_iterations, opts.neumann_terms)[name]
    net, opt = copy.deepcopy((model, optimizer))
    if kind.startswith("upstream"):
        adam = torch.optim.Adam(
            net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3
        )

        def upstream_step() -> None:
            adam.zero_grad()
            if kind == "upstream-second":
                grads = support.upstream_second_order_grads(net, *tb, *vb, opts.lr, opt, 0.9, 3e-4)
                for a, g in zip(net.arch_parameters(), grads, strict=True):
                    a.grad = g
            else:
                net._loss(*vb).backward()
            torch.nn.utils.clip_grad_norm_(net.arch_parameters(), 10.0)
            adam.step()

        return upstream_step
    if kind == "adapter":
        args = SimpleNamespace(
            momentum=0.9,
            weight_decay=3e-4,
            arch_learning_rate=3e-4,
            arch_weight_decay=1e-3,
            learning_rate=opts.lr,
            unrolled=False,
            **options,
        )
        adapter = darts_adapter.Architect(net, args)
        return lambda: adapter.step(*tb, *vb, opts.lr, opt, unrolled=False)
    architect = AmendedArchitect(net, estimator=kind, **options)
    weights = list(net.parameters())
    per_step: dict = {}
    if kind == "unrolled":
        per_step = {
            "xi": opts.lr,
            "momentum": 0.9,
            "weight_decay": 3e-4,
            "momentum_buffers": [opt.state[w].get("momentum_buffer") for w in weights],
        }
    return lambda: architect.step(tb, vb, **per_step)


def peak_memory(opts, name: str) -> int:
    """Peak extra bytes of one step after a warm-up step (run in a fresh child process)."""
    support = load_support()
    model, optimizer, tb, vb = _setup(opts, support)
    step = _stepper(name, opts, support, model, optimizer, tb, vb)
    step()  # warm-up: allocator caches, lazy initialisation
    return peak_extra_bytes(step, torch.device(opts.device))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--C", type=int, default=8, help="initial channels")
    p.add_argument("--layers", type=int, default=5, help="cells (reductions at 1/3 and 2/3)")
    p.add_argument("--size", type=int, default=32, help="input height = width (CIFAR: 32)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lr", type=float, default=0.025, help="weight lr (xi of second order)")
    p.add_argument("--cg-iterations", type=int, default=5)
    p.add_argument("--neumann-terms", type=int, default=5)
    p.add_argument("--only", nargs="*", default=None, help="row names (see --list)")
    p.add_argument("--no-memory", action="store_true", help="timings only")
    p.add_argument("--no-timing", action="store_true", help="peak memory only")
    p.add_argument("--list", action="store_true", help="list the row names and exit")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    table = cases(opts.batch, opts.cg_iterations, opts.neumann_terms)
    if opts.list:
        for name, (desc, _, _) in table.items():
            print(f"{name:22s} {desc}")
        return 0
    if opts.memory_child:
        print(peak_memory(opts, opts.memory_child))
        return 0
    rows = list(opts.only) if opts.only else list(DEFAULT_ROWS)
    unknown = [r for r in rows if r not in table]
    if unknown:
        p.error(f"unknown rows {unknown}; see --list")
    if "baseline" not in rows:
        rows.insert(0, "baseline")
    load_before = os.getloadavg()
    support = load_support()
    model, optimizer, tb, vb = _setup(opts, support)
    n_w = sum(q.numel() for q in model.parameters())
    n_a = sum(a.numel() for a in model.arch_parameters())
    wall: dict[str, list[float]] = {r: [] for r in rows}
    cpu: dict[str, list[float]] = {r: [] for r in rows}
    if not opts.no_timing:
        steps = {r: _stepper(r, opts, support, model, optimizer, tb, vb) for r in rows}
        for r, (w, c) in timed_round_robin(
            steps, opts.reps, opts.warmup, torch.device(opts.device)
        ).items():
            wall[r], cpu[r] = w, c
        del steps
    peaks: dict[str, int | None] = {r: None for r in rows}
    header = (
        f"DartsSearchNet C={opts.C}, {opts.layers} cells ({n_w} weights, {n_a} alphas), batch "
        f"{opts.batch}x3x{opts.size}x{opts.size} float32, {opts.device}, {opts.threads} thread(s),"
        f" torch {torch.__version__}, {platform.machine()} {os.cpu_count()} CPUs; median of "
        f"{opts.reps} interleaved rounds after {opts.warmup} warm-up"
    )
    if not opts.no_timing and not opts.no_memory:
        # the timings first: the memory children below may take long (or be stopped)
        _print_table(f"{header}; timing only", table, rows, wall, cpu, peaks)
    if not opts.no_memory:
        del model, optimizer, tb, vb
        gc.collect()
        malloc_trim()  # the parent's cached heap would sit beside every child
        child = [
            f"--C={opts.C}", f"--layers={opts.layers}", f"--size={opts.size}",
            f"--batch={opts.batch}", f"--threads={opts.threads}", f"--device={opts.device}",
            f"--lr={opts.lr}", f"--cg-iterations={opts.cg_iterations}",
            f"--neumann-terms={opts.neumann_terms}",
        ]
        for r in rows:
            out = subprocess.run(
                [sys.executable, __file__, *child, "--memory-child", r],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            peaks[r] = int(out.strip().splitlines()[-1])
            print(f"  memory {r}: {peaks[r] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    _print_table(
        f"{header}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        table, rows, wall, cpu, peaks,
    )
    return 0


def _print_table(header, table, rows, wall, cpu, peaks) -> None:
    print(header)
    print()
    print(
        "| architect step | wall s | CPU s | x baseline (wall / CPU) | peak extra MiB "
        "| x baseline memory |"
    )
    print("|---|---:|---:|---:|---:|---:|")

    def median(t: list[float]) -> float | None:
        return statistics.median(t) if t else None

    b_wall, b_cpu, b_mem = median(wall["baseline"]), median(cpu["baseline"]), peaks["baseline"]
    for r in rows:
        w, c, mem = median(wall[r]), median(cpu[r]), peaks[r]
        time_txt = "- | - | -" if w is None else (
            f"{w:.2f} | {c:.2f} | {w / b_wall:.2f} / {c / b_cpu:.2f}"
        )
        mem_txt = "-" if mem is None else f"{mem / 2**20:.0f}"
        mem_ratio = "-" if mem is None or not b_mem else f"{mem / b_mem:.2f}"
        print(f"| {table[r][0]} | {time_txt} | {mem_txt} | {mem_ratio} |")
    print(flush=True)

if __name__ == "__main__":
    raise SystemExit(main())
