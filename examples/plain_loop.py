"""AmendedArchitect in a plain PyTorch training loop (scikit-learn digits, CPU, < 1 minute).

A tiny DARTS-style supernet on 8x8 digit images: a stem convolution, then two "mixed" edges,
each a softmax(alpha)-weighted sum of candidate operations, then a classifier. Half of the
training images train the weights (SGD), the other half the alphas (AmendedArchitect: the
amended hypergradient of Bi et al., eta = 0.1, Adam). The loop order is DARTS': one alpha step
on (weight batch, alpha batch), then one weight step on the weight batch.

    python examples/plain_loop.py                       # amended, eta 0.1
    python examples/plain_loop.py --estimator first_order
    python examples/plain_loop.py --eta 0.5 --epochs 10
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from darts_amend import ESTIMATORS, AmendedArchitect
from darts_amend.hvp import MODES

OPS = ("conv_3x3", "conv_5x5", "max_pool_3x3", "skip_connect")


def make_op(name: str, c: int) -> nn.Module:
    if name == "conv_3x3":
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, affine=False)
        )
    if name == "conv_5x5":
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 5, padding=2, bias=False), nn.BatchNorm2d(c, affine=False)
        )
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "skip_connect":
        return nn.Identity()
    raise ValueError(f"unknown op {name!r}")


class TinySupernet(nn.Module):
    """stem -> mixed edge -> mixed edge -> global average pool -> linear."""

    def __init__(self, c: int = 16, classes: int = 10, edges: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.edges = nn.ModuleList(nn.ModuleList(make_op(n, c) for n in OPS) for _ in range(edges))
        self.classifier = nn.Linear(c, classes)
        # registered alphas: in state_dict, moved by .to(); excluded from the weights by identity
        self.alphas = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.alphas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for ops, a in zip(self.edges, F.softmax(self.alphas, dim=-1), strict=True):
            h = sum(w * op(h) for w, op in zip(a, ops, strict=True))
        return self.classifier(h.mean(dim=(2, 3)))

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_test = 297
    n_half = (len(y) - n_test) // 2
    return (
        x[:n_half],
        y[:n_half],
        x[n_half : 2 * n_half],
        y[n_half : 2 * n_half],
        x[2 * n_half :],
        y[2 * n_half :],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--estimator",
        default="amended",
        choices=list(ESTIMATORS),
    )
    parser.add_argument(
        "--eta", type=float, default=None, help="amending coefficient (amended only; 0.1)"
    )
    parser.add_argument(
        "--mode",
        default=None,
        choices=MODES,
        help="Hessian products (every estimator but first_order; default exact)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="weight learning rate (SGD)")
    parser.add_argument("--arch-lr", type=float, default=3e-3, help="alpha learning rate (Adam)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op CPU threads (tiny tensors: 1 avoids thread spin on busy machines)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xw, yw, xa, ya, xt, yt = digits(args.seed)
    model = TinySupernet()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=args.lr, momentum=0.9, weight_decay=3e-4)
    options = {} if args.mode is None else {"mode": args.mode}
    if args.eta is not None:
        options["eta"] = args.eta
    architect = AmendedArchitect(model, estimator=args.estimator, lr=args.arch_lr, **options)
    print(architect)
    bs = args.batch_size
    for epoch in range(1, args.epochs + 1):  # epochs count from 1, as in the CLI
        t0 = time.perf_counter()
        model.train()
        order_w, order_a = torch.randperm(len(yw)), torch.randperm(len(ya))
        infos = []
        for i in range(0, len(yw) - bs + 1, bs):
            iw, ia = order_w[i : i + bs], order_a[i : i + bs]
            train_batch, valid_batch = (xw[iw], yw[iw]), (xa[ia], ya[ia])
            step_options = {}
            if (
                args.estimator == "unrolled"
            ):  # second-order DARTS needs the weight optimizer's settings
                step_options = dict(
                    xi=w_opt.param_groups[0]["lr"],
                    momentum=0.9,
                    weight_decay=3e-4,
                    momentum_buffers=[
                        w_opt.state.get(p, {}).get("momentum_buffer")
                        for p in model.weight_parameters()
                    ],
                )
            infos.append(architect.step(train_batch, valid_batch, **step_options))
            w_opt.zero_grad(set_to_none=True)
            model._loss(*train_batch).backward()
            nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
            w_opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).float().mean())
        cosines = [s.cosine for s in infos if not math.isnan(s.cosine)]
        print(
            f"epoch {epoch}: val loss {sum(s.val_loss for s in infos) / len(infos):.3f}  "
            f"|g1| {sum(s.g1_norm for s in infos) / len(infos):.2e}  "
            f"|g2| {sum(s.g2_norm for s in infos) / len(infos):.2e}  "
            f"cos(g1,g2) {sum(cosines) / len(cosines) if cosines else float('nan'):+.2f}  "
            f"test acc {acc:.3f}  ({time.perf_counter() - t0:.1f} s)"
        )
    weights = F.softmax(model.alphas.detach(), dim=-1)
    for e, row in enumerate(weights):
        print(
            f"edge {e}: "
            + "  ".join(f"{n} {w:.3f}" for n, w in zip(OPS, row.tolist(), strict=True))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
