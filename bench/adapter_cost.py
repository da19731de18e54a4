"""Cost of one architect step through the upstream adapters vs upstream-style steps, on the same
model.

The model is the DARTS-like test supernet of ``tests/test_adapters_support.py`` (leaf-tensor alphas,
``_loss``, ``new()``); the upstream-style steps are that file's independent replays of quark0/darts'
architect (first-order: backward of the validation loss; second-order: ``new()`` + unrolled weights
+ central
finite differences), followed by the same Adam step. Each timed call is one full ``step``
(hypergradient and
Adam update), after warm-up, on one model and one pair of batches.

    python bench/adapter_cost.py                       # defaults below, one intra-op thread
    python bench/adapter_cost.py --C 16 --layers 5 --size 32 --batch 32 --reps 10

Prints a markdown table: median and interquartile range of the wall time, median process-CPU time
(ms),
and the ratios to the upstream-style second-order step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from darts_amend.adapters import darts as darts_adapter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_support, timed_round_robin  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--C", type=int, default=8, help="initial channels of the supernet")
    parser.add_argument("--layers", type=int, default=5, help="cells (reductions at 1/3 and 2/3)")
    parser.add_argument("--steps", type=int, default=3, help="intermediate nodes per cell")
    parser.add_argument("--size", type=int, default=16, help="input height = width")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    dtype = getattr(torch, opts.dtype)
    support = load_support()
    device = torch.device(opts.device)

    torch.manual_seed(0)
    model = support.DartsLikeNet(C=opts.C, num_classes=10, layers=opts.layers, steps=opts.steps)
    model = model.to(device=device, dtype=dtype)
    model._initialize_alphas()
    model.train()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(opts.batch, 3, opts.size, opts.size, generator=gen, dtype=dtype).to(device),
            torch.randint(0, 10, (opts.batch,), generator=gen).to(device),
        )
        for _ in range(3)
    ]
    (xt, yt), (xv, yv) = batches[0], batches[1]
    args = SimpleNamespace(
        momentum=0.9,
        weight_decay=3e-4,
        arch_learning_rate=3e-4,
        arch_weight_decay=1e-3,
        learning_rate=0.025,
        unrolled=False,
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
    optimizer.zero_grad()
    model._loss(*batches[2]).backward()
    optimizer.step()  # momentum buffers exist, as in a running search
    lr = args.learning_rate

    def upstream(second_order: bool):
        # run on a private copy: the upstream step moves BN statistics and drifts the weights by
        # rounding
        net, opt = copy.deepcopy((model, optimizer))
        adam = torch.optim.Adam(
            net.arch_parameters(),
            lr=args.arch_learning_rate,
            betas=(0.5, 0.999),
            weight_decay=args.arch_weight_decay,
        )

        def step():
            adam.zero_grad()
            if second_order:
                grads = support.upstream_second_order_grads(
                    net, xt, yt, xv, yv, lr, opt, args.momentum, args.weight_decay
                )
                for a, g in zip(net.arch_parameters(), grads, strict=True):
                    a.grad = g
            else:
                net._loss(xv, yv).backward()
            adam.step()

        return step

    def adapter(**fields):
        net, opt = copy.deepcopy((model, optimizer))
        architect = darts_adapter.Architect(net, SimpleNamespace(**{**vars(args), **fields}))
        unrolled = fields.get("unrolled", False)
        return lambda: architect.step(xt, yt, xv, yv, lr, opt, unrolled=unrolled)

    cases = [
        ("upstream-style first-order (loss.backward)", upstream(False)),
        ("upstream-style second-order (new(), FD)", upstream(True)),
        ("adapter first-order (--amend_eta 0)", adapter(amend_eta=0.0)),
        ("adapter amended, exact (default)", adapter()),
        ("adapter amended, finite differences", adapter(amend_mode="finite_difference")),
        ("adapter second-order, exact", adapter(amend_estimator="unrolled", unrolled=True)),
        (
            "adapter second-order, finite differences",
            adapter(amend_estimator="unrolled", unrolled=True, amend_mode="finite_difference"),
        ),
    ]
    results = {}
    for name, (wall, cpu) in timed_round_robin(dict(cases), opts.reps, opts.warmup, device).items():
        q = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
        results[name] = (statistics.median(wall), q[0], q[2], statistics.median(cpu))
    base_wall = results["upstream-style second-order (new(), FD)"][0]
    base_cpu = results["upstream-style second-order (new(), FD)"][3]
    n_weights = sum(p.numel() for p in model.parameters())
    n_alpha = sum(a.numel() for a in model.arch_parameters())
    print(
        f"model: DartsLikeNet C={opts.C} layers={opts.layers} steps={opts.steps} "
        f"({n_weights} weights, "
        f"{n_alpha} alphas), batch {opts.batch}x3x{opts.size}x{opts.size} {opts.dtype}, {device}, "
        f"{opts.threads} thread(s), median of {opts.reps} interleaved runs after {opts.warmup} "
        f"warm-up; torch {torch.__version__}"
    )
    print()
    print(
        "| architect step | wall ms (median) | wall IQR ms | CPU ms (median) "
        "| vs upstream second-order (wall / CPU) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, (med, lo, hi, cpu) in results.items():
        print(
            f"| {name} | {med * 1e3:.0f} | {lo * 1e3:.0f}-{hi * 1e3:.0f} | {cpu * 1e3:.0f} | "
            f"{med / base_wall:.2f}x / {cpu / base_cpu:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
