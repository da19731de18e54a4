"""Common random numbers on a Dirichlet-sampling supernet (tests/fork_replicas.DirichletNet):
repeat cosine of g1 / g2 over estimates, |g2|/|g1|, and the cosine of g2 to the g2 of the network
with its Dirichlet noise held fixed (the quantity eq. 7 defines for one sample).

    PYTHONPATH=.:tests python bench/crn_repeat.py            # this checkout (CRN on by detection)
    PYTHONPATH=/path/to/old:tests python bench/crn_repeat.py # a checkout without the option
"""

from __future__ import annotations

import inspect
import statistics
import sys

import torch

sys.path.insert(0, "tests")
from fork_replicas import DirichletNet, vector_batches  # noqa: E402

from darts_amend import estimators as E  # noqa: E402
from darts_amend.hvp import list_cosine, list_norm  # noqa: E402


class FixedNoiseNet(DirichletNet):
    """The same network with its Dirichlet noise drawn from a fixed seed on every forward."""

    seed = 0

    def op_weights(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().op_weights()


def main(repeats: int = 10) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = DirichletNet(edges=3, n_ops=4, k=1).double()
    net._initialize_alphas(3, 4)
    ref = FixedNoiseNet(edges=3, n_ops=4, k=1).double()
    ref.load_state_dict(net.state_dict())
    ref._arch_parameters = net._arch_parameters
    ref.alphas_normal = net.alphas_normal
    tb, vb = vector_batches(2, batch=32)
    has_crn = "common_random_numbers" in inspect.signature(E.amended).parameters
    print(f"common_random_numbers option present: {has_crn}")
    for mode in ("exact", "finite_difference"):
        g1s, g2s, to_ref = [], [], []
        for i in range(repeats):
            torch.manual_seed(100 + i)
            h = E.amended(net, tb, vb, mode=mode)
            FixedNoiseNet.seed = 100 + i  # the noise the estimate's first pass drew
            r = E.amended(ref, tb, vb, mode="exact")
            g1s.append(h.terms["g1"])
            g2s.append(h.terms["g2"])
            to_ref.append(list_cosine(h.terms["g2"], r.terms["g2"]))
        pairs = [(i, j) for i in range(repeats) for j in range(i + 1, repeats)]
        c1 = statistics.mean(list_cosine(g1s[i], g1s[j]) for i, j in pairs)
        c2 = statistics.mean(list_cosine(g2s[i], g2s[j]) for i, j in pairs)
        ratio = statistics.median(float(list_norm(b) / list_norm(a))
                                  for a, b in zip(g1s, g2s, strict=True))
        print(f"{mode:18s} repeat cos g1 {c1:.3f}  g2 {c2:.3f}  median |g2|/|g1| {ratio:.3g}  "
              f"cos(g2, fixed-noise g2) mean {statistics.mean(to_ref):.4f} "
              f"min {min(to_ref):.4f}")


if __name__ == "__main__":
    main()
