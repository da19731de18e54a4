"""Cost of one architect step for every estimator and product mode on a small conv supernet.

Prints a markdown table: median milliseconds per ``AmendedArchitect.step`` (configurations
interleaved round by round, so a shared machine's load hits all alike), the ratio to
``first_order`` and to ``unrolled``, and the peak extra memory of one step after a warm-up
step (CPU: resident set size sampled every millisecond, peak above the size before the step;
CUDA: peak allocated), one child process per configuration so peaks do not mix.

    python bench/step_cost.py      # defaults: C=8, 4 cells x 2 nodes, 16x16, batch 32
    python bench/step_cost.py --rounds 10 --threads 2 --batch 64
    python bench/step_cost.py --only amended:exact unrolled:finite_difference

The supernet is self-contained (ReLU + BatchNorm conv ops, DARTS-like cells, shared alphas), so
the benchmark does not depend on darts_amend.supernet.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from darts_amend import AmendedArchitect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_extra_bytes, timed_round_robin  # noqa: E402

CONFIGS = [
    ("first_order", "-"),
    ("unrolled", "exact"),
    ("unrolled", "finite_difference"),
    ("amended", "exact"),
    ("amended", "finite_difference"),
    ("implicit_cg", "exact"),
    ("implicit_cg", "finite_difference"),
    ("implicit_neumann", "exact"),
    ("implicit_neumann", "finite_difference"),
]


# --------------------------------------------------------------------------- a small supernet


class ReLUConvBN(nn.Sequential):
    def __init__(self, c: int, k: int, dilation: int = 1) -> None:
        pad = dilation * (k - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, k, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(c, affine=False),
        )


class SepConv(nn.Sequential):
    def __init__(self, c: int, k: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


OPS = {
    "none": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "max_pool_3x3": lambda c: nn.MaxPool2d(3, 1, 1),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    "sep_conv_3x3": lambda c: SepConv(c, 3),
    "dil_conv_3x3": lambda c: ReLUConvBN(c, 3, dilation=2),
    "conv_3x3": lambda c: ReLUConvBN(c, 3),
}


class Cell(nn.Module):
    """``nodes`` intermediate nodes; node i sums mixed ops over both cell inputs and nodes < i."""

    def __init__(self, c: int, nodes: int) -> None:
        super().__init__()
        self.nodes = nodes
        self.edges = nn.ModuleList(
            nn.ModuleList(make(c) for make in OPS.values())
            for i in range(nodes)
            for _ in range(2 + i)  # node i has 2 + i inputs
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states, e = [s0, s1], 0
        for _ in range(self.nodes):
            acc = 0
            for h in states:
                acc = acc + sum(w * op(h) for w, op in zip(weights[e], self.edges[e], strict=True))
                e += 1
            states.append(acc)
        return sum(states[2:]) / self.nodes


class BenchSupernet(nn.Module):
    def __init__(self, c: int = 16, cells: int = 6, nodes: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cells = nn.ModuleList(Cell(c, nodes) for _ in range(cells))
        self.classifier = nn.Linear(c, classes)
        n_edges = sum(2 + i for i in range(nodes))
        self.alphas = nn.Parameter(1e-3 * torch.randn(n_edges, len(OPS)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        w = F.softmax(self.alphas, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(s1.mean(dim=(2, 3)))

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


# --------------------------------------------------------------------------- measuring


def _setup(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = BenchSupernet(args.C, args.cells, args.nodes).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch():
        return (
            torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device),
            torch.randint(0, 10, (args.batch,), generator=gen).to(device),
        )

    return model, device, (batch(), batch())


def _architect(model: nn.Module, args: argparse.Namespace, estimator: str, mode: str):
    options: dict = {} if mode == "-" else {"mode": mode}
    if estimator == "implicit_cg":
        options["iterations"] = args.cg_iterations
    if estimator == "implicit_neumann":
        options["terms"] = args.neumann_terms
    # unrolled: the weight optimizer's lr, momentum and decay are per-step options
    per_step = (
        {"xi": 0.025, "momentum": 0.9, "weight_decay": 3e-4} if estimator == "unrolled" else {}
    )
    return AmendedArchitect(model, estimator=estimator, **options), per_step


def peak_memory(args: argparse.Namespace, estimator: str, mode: str) -> int:
    """Peak extra bytes of two steps (run in a fresh child process).

    CPU: after a warm-up step and ``malloc_trim``, the resident set size is sampled every
    millisecond by a background thread during one step; the peak above the size before the
    step is reported."""
    model, device, (tb, vb) = _setup(args)
    architect, per_step = _architect(model, args, estimator, mode)
    architect.step(tb, vb, **per_step)  # warm-up: allocator caches, lazy initialisation
    return peak_extra_bytes(lambda: architect.step(tb, vb, **per_step), device)


def step_times(args: argparse.Namespace, configs) -> dict[tuple[str, str], list[float]]:
    """Seconds per step; configurations interleaved round by round (fair under shared load)."""
    model, device, (tb, vb) = _setup(args)
    steps = {}
    for c in configs:
        architect, per_step = _architect(model, args, *c)
        steps[c] = lambda a=architect, kw=per_step: a.step(tb, vb, **kw)
    times = timed_round_robin(steps, args.rounds, args.warmup, device)
    return {c: wall for c, (wall, _) in times.items()}


def phase_times(args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of each pass of an exact amended step (where the time goes)."""
    from darts_amend.hvp import resolve_loss, split_parameters
    from darts_amend.tensorlist import list_grad as _grad

    model, device, (tb, vb) = _setup(args)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    alphas, weights = split_parameters(model)
    loss_fn = resolve_loss()
    names = [
        "val forward",
        "val backward (g1, v)",
        "train forward",
        "train create_graph backward",
        "double backward: H v",
        "double backward: B (H v)",
        "reference: train forward+backward",
    ]
    samples: dict[str, list[float]] = {n: [] for n in names}
    marks: list[float] = []

    def mark() -> None:
        sync()
        marks.append(time.perf_counter())

    for i in range(args.warmup + args.rounds):
        marks.clear()
        mark()
        loss = loss_fn(model, *vb)
        mark()
        grads = _grad(loss, alphas + weights)
        mark()
        v = grads[len(alphas) :]
        loss = loss_fn(model, *tb)
        mark()
        g_w = _grad(loss, weights, create_graph=True)
        mark()
        hv = _grad(g_w, weights, v, retain_graph=True)
        mark()
        _grad(g_w, alphas, hv)
        mark()
        del g_w
        _grad(loss_fn(model, *tb), weights)
        mark()
        if i >= args.warmup:
            for n, a, b in zip(names, marks, marks[1:], strict=False):
                samples[n].append((b - a) * 1e3)
    return {n: statistics.median(t) for n, t in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--cells", type=int, default=4)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cg-iterations", type=int, default=10)
    p.add_argument("--neumann-terms", type=int, default=10)
    p.add_argument(
        "--no-memory", action="store_true", help="skip the per-configuration memory runs"
    )
    p.add_argument(
        "--only", nargs="*", default=None, help="estimator:mode pairs (mode '-' for first_order)"
    )
    p.add_argument(
        "--phases", action="store_true", help="only time each pass of an exact amended step"
    )
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phases:
        phases = phase_times(args)
        print("| pass of an exact amended step | ms |")
        print("|---|---:|")
        for name, ms in phases.items():
            print(f"| {name} | {ms:.0f} |")
        return 0

    if args.memory_child:
        print(peak_memory(args, *args.memory_child.split(":")))
        return 0

    configs = list(CONFIGS)
    if args.only:
        configs = [tuple(s.split(":")) for s in args.only]
        if ("first_order", "-") not in configs:
            configs.insert(0, ("first_order", "-"))
    forwarded = list(argv if argv is not None else sys.argv[1:])
    if "--only" in forwarded:  # --only takes the rest of the line
        forwarded = forwarded[: forwarded.index("--only")]
    times = step_times(args, configs)
    peaks: dict[tuple[str, str], int | None] = {c: None for c in configs}
    if not args.no_memory:
        for c in configs:
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--memory-child", ":".join(c)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            peaks[c] = int(out.strip().splitlines()[-1])
    med = {c: statistics.median(t) for c, t in times.items()}
    fo = med[("first_order", "-")]
    n_params = sum(q.numel() for q in BenchSupernet(args.C, args.cells, args.nodes).parameters())
    print(
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} thread(s), device {args.device}; supernet C={args.C}, "
        f"{args.cells} cells x {args.nodes} nodes, {len(OPS)} ops (ReLU+BN), "
        f"{n_params} parameters, "
        f"input {args.size}x{args.size}, batch {args.batch}; median of {args.rounds} interleaved "
        f"rounds after {args.warmup} warm-up; "
        f"CG {args.cg_iterations} iterations, Neumann {args.neumann_terms} terms"
    )
    print()
    print(
        "| estimator | mode | ms / step | x first_order | x unrolled (same mode) "
        "| x unrolled (exact) | x unrolled (fd) | peak extra MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def ratio(t: float, m: str) -> str:
        return f"{t / med[('unrolled', m)]:.2f}" if ("unrolled", m) in med else "-"

    for (est, mode), t in med.items():
        peak = "-" if peaks[(est, mode)] is None else f"{peaks[(est, mode)] / 2**20:.0f}"
        same = ratio(t, mode) if mode != "-" else "-"
        print(
            f"| {est} | {mode} | {t * 1e3:.0f} | {t / fo:.2f} | {same} | "
            f"{ratio(t, 'exact')} | {ratio(t, 'finite_difference')} | {peak} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
