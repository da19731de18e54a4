"""Which term of the alpha gradient pushes ``none`` up on each NB201 edge (exploratory probe).

For one supernet state of the collapse study (bench/collapse_study.py, ``nb201``): the initial
state of a run (the network ``darts-amend search`` builds for the run's config and seed, before
any step) or a final one (a finished run's ``search/checkpoint.pt`` with its ``config.json``),
on K (train, val) batch pairs of the run's own data split (the first K pairs the search's
loaders give, from its first epoch on), the terms

    g1        = dL_val/dalpha                        (first order)
    g2'(eta)  = -eta * B H v,  eta = 0.1 and 1       (amended, eq. 7; exact products)
    g2_cg     = -B x,  H x = v by 10 CG steps        (implicit CG, as the study's implicit_cg arm)

each from the library's own estimators (``darts_amend.estimators.amended`` / ``implicit_cg``,
their ``terms``), and for every term T and edge e:

* ``component`` = T[e, none]. The alphas descend, alpha <- alpha - lr * T, so a NEGATIVE
  component raises none's alpha;
* ``rate`` = d p_none / dt of none's softmax weight along alpha - t * T (first order in t):
  -p_none * (T[e, none] - sum_j p_j T[e, j]). A POSITIVE rate means that a small step of this
  term alone raises none's softmax weight ("pushes none up"). ``fd_rate`` is the same from a
  direct finite step (t = 1e-3 / max|T|), a check.

Mean and standard error over the K batch pairs; also |g2'|/|g1| (norms over all alphas) and
cos(g2', g2_cg). Markdown table on stdout (and ``--out``/table.md), everything in
``--out``/op_pressure.json.

    OMP_NUM_THREADS=1 nice -n 10 python bench/op_pressure.py --k 8 \\
        --initial W S --seeds 0 1 2 3 \\
        --final /work/runs/collapse_study/nb201/*/search \\
                /work/runs/collapse_study_s/nb201/*/search \\
        --out bench/results/op_pressure

Exploratory, not part of the study's pre-registered criteria.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import collapse  # noqa: E402  (bench/ siblings)
import collapse_study  # noqa: E402

EDGES = ("0->1", "0->2", "1->2", "0->3", "1->3", "2->3")  # nb201 edge order (node, input)
TERMS = ("g1", "g2_amended_0.1", "g2_amended_1", "g2_cg",
         "g_amended_0.1", "g_amended_1", "g_cg")
SETTINGS = {"W": [], "S": ["--subset", "0.2", "--arch_lr", "3e-2"]}


# --------------------------------------------------------------------------- states


def cli_config(argv: list[str]) -> Any:
    """The validated :class:`SearchConfig` of a ``darts-amend search`` command line (the CLI's
    own parser and config resolution; nothing is written)."""
    from darts_amend.cli.parser import build_parser
    from darts_amend.cli.run import RunRequest, _config

    return _config(RunRequest.from_args(build_parser().parse_args(argv)))


def study_config(setting: str, seed: int, arm: str = "first_order") -> Any:
    """The config of the study's run ``arm``/``seed`` in setting W or S, from the search command
    bench/collapse_study.py builds for it (study defaults plus the setting's flags)."""
    args = collapse_study.build_parser().parse_args(SETTINGS[setting])
    study = {k: getattr(args, k) for k in collapse_study.STUDY_KEYS}
    return cli_config(collapse.search_argv(study, "nb201", arm, seed, Path("unused"), 0))


def stored_config(search_dir: Path) -> Any:
    """The config a run folder's ``config.json`` holds."""
    from darts_amend.cli.config import config_from_dict
    from darts_amend.cli.settings import SearchConfig

    data = json.loads((Path(search_dir) / "config.json").read_text())
    return config_from_dict(SearchConfig, data.get("config", data), "config.json")


def build_state(cfg: Any, checkpoint: Path | None = None) -> tuple[nn.Module, Any, Any]:
    """(supernet in train mode, training set, (weight indices, alpha indices)) of a search.

    The data and split come from the CLI (``darts_amend.cli.run._data``); the network from
    ``darts_amend.cli.search.search_network`` after the same seeding as ``run_search`` (the test
    checks the two agree bit for bit), then loaded from ``checkpoint`` when given."""
    from darts_amend.cli.checkpoint import read_checkpoint
    from darts_amend.cli.run import _data
    from darts_amend.cli.runtime import seed_everything
    from darts_amend.cli.search import search_network

    train_set, _, info, split = _data(cfg, "search", cfg.seed)
    seed_everything(cfg.seed)
    net = search_network(cfg, info)
    if checkpoint is not None:
        net.load_state_dict(read_checkpoint(Path(checkpoint))["model"])
    net.train()  # as the search: BatchNorm on batch statistics
    return net, train_set, split


def batch_pairs(cfg: Any, train_set: Any, split: Any, k: int) -> list[tuple[Any, Any]]:
    """The first ``k`` (train, val) batch pairs the search's loaders give, epoch after epoch
    (a small split, as setting S's, has fewer than ``k`` pairs per epoch)."""
    from darts_amend.cli.runtime import Dist, epoch_loader

    train_idx, valid_idx = split
    pairs: list[tuple[Any, Any]] = []
    for epoch in range(k):  # every epoch gives at least one pair
        mk = dict(batch_size=cfg.batch_size, epoch=epoch, d=Dist(), workers=0)
        tl = epoch_loader(train_set, train_idx, seed=cfg.seed, **mk)
        vl = epoch_loader(train_set, valid_idx, seed=cfg.seed + 7919, **mk)
        pairs += [((x, y), (xv, yv)) for (x, y), (xv, yv) in zip(tl, vl, strict=False)]
        if len(pairs) >= k:
            break
    return pairs[:k]


# --------------------------------------------------------------------------- terms


def term_grads(net: nn.Module, train_batch: Any, valid_batch: Any, *,
               cg_iterations: int = 10, cg_damping: float = 0.0) -> dict[str, Tensor]:
    """Every term of :data:`TERMS` (the (edges, ops) alpha gradient), from the estimators'
    own ``terms``: g1 and g2' of ``amended`` (eta 0.1 and 1), g2 of ``implicit_cg``."""
    from darts_amend.estimators import amended, implicit_cg

    out: dict[str, Tensor] = {}
    for eta in (0.1, 1.0):
        r = amended(net, train_batch, valid_batch, eta=eta, mode="exact")
        out.setdefault("g1", r.terms["g1"][0].detach().clone())
        out[f"g2_amended_{eta:g}"] = r.terms["g2"][0].detach().clone()
    r = implicit_cg(net, train_batch, valid_batch, iterations=cg_iterations, damping=cg_damping,
                    mode="exact")
    out["g2_cg"] = r.terms["g2"][0].detach().clone()
    for name in ("amended_0.1", "amended_1", "cg"):
        out[f"g_{name}"] = out["g1"] + out[f"g2_{name}"]
    return out


def none_effects(alpha: Tensor, g: Tensor, none: int) -> dict[str, list[float]]:
    """Per edge: ``component`` g[e, none], ``rate`` d p_none / dt along alpha - t g (positive:
    none's softmax weight rises), ``fd_rate`` the same from a finite step t."""
    a, g = alpha.detach().double(), g.detach().double()
    p = torch.softmax(a, dim=-1)
    # d softmax_n / d alpha_j = p_n (delta_nj - p_j); along -g: -p_n (g_n - sum_j p_j g_j)
    rate = -p[:, none] * (g[:, none] - (p * g).sum(-1))
    t = 1e-3 / max(float(g.abs().max()), 1e-30)
    fd = (torch.softmax(a - t * g, dim=-1)[:, none] - p[:, none]) / t
    return {"component": g[:, none].tolist(), "rate": rate.tolist(), "fd_rate": fd.tolist()}


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else math.nan


def _mean_se(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return {"mean": math.nan, "se": math.nan, "n": 0}
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return {"mean": statistics.fmean(xs), "se": se, "n": len(xs)}


def direction(s: dict[str, float]) -> str:
    """``up`` / ``down`` when the mean is more than 2 SE from 0, else ``within``."""
    if not (math.isfinite(s["mean"]) and math.isfinite(s["se"])):
        return "within"
    if s["mean"] > 2 * s["se"]:
        return "up"
    if s["mean"] < -2 * s["se"]:
        return "down"
    return "within"


def probe_state(net: nn.Module, pairs: list[tuple[Any, Any]], *, cg_iterations: int = 10,
                cg_damping: float = 0.0) -> dict[str, Any]:
    """Per term and edge: mean / SE over the pairs of ``component`` and ``rate`` (and the raw
    per-pair values); |g2'|/|g1| and cos(g2', g2_cg) per pair and their mean / SE."""
    ops = list(net.op_names)
    none = ops.index("none")
    alpha = net.arch_parameters()[0]
    per: dict[str, dict[str, list[list[float]]]] = {
        t: {"component": [], "rate": [], "fd_rate": []} for t in TERMS}
    ratio: dict[str, list[float]] = {"amended_0.1": [], "amended_1": [], "cg": []}
    cos: list[float] = []
    for tb, vb in pairs:
        g = term_grads(net, tb, vb, cg_iterations=cg_iterations, cg_damping=cg_damping)
        for t in TERMS:
            for key, vals in none_effects(alpha, g[t], none).items():
                per[t][key].append(vals)
        n1 = float(g["g1"].norm())
        for name in ratio:
            ratio[name].append(float(g[f"g2_{name}"].norm()) / n1 if n1 > 0 else math.nan)
        cos.append(_cos(g["g2_amended_0.1"], g["g2_cg"]))
    terms: dict[str, Any] = {}
    for t in TERMS:
        terms[t] = {}
        for key in ("component", "rate"):
            cols = list(zip(*per[t][key], strict=True))
            terms[t][key] = [_mean_se(list(c)) for c in cols]
        terms[t]["direction"] = [direction(s) for s in terms[t]["rate"]]
        terms[t]["per_pair"] = per[t]
    p = torch.softmax(alpha.detach().double(), dim=-1)
    return {"ops": ops, "edges": list(EDGES), "k": len(pairs),
            "p_none": p[:, none].tolist(), "argmax": [ops[i] for i in p.argmax(-1).tolist()],
            "terms": terms,
            "ratio_g2_g1": {n: {**_mean_se(v), "per_pair": v} for n, v in ratio.items()},
            "cos_g2amended_g2cg": {**_mean_se(cos), "per_pair": cos}}


# --------------------------------------------------------------------------- driver


def _final_label(search_dir: Path) -> str:
    run = search_dir.parent
    setting = "S" if run.parent.parent.name.endswith("_s") else "W"
    return f"final {setting} {run.name}"


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    states: list[tuple[str, Any, Path | None]] = []
    for setting in args.initial:
        for seed in args.seeds:
            states.append((f"initial {setting} s{seed}", study_config(setting, seed), None))
    skipped = []
    for d in sorted({Path(p) for p in args.final}):
        if not (d / "summary.json").is_file() or not (d / "checkpoint.pt").is_file():
            skipped.append(str(d))
            continue
        states.append((_final_label(d), stored_config(d), d / "checkpoint.pt"))
    if skipped:
        print(f"op_pressure.py: skipped (unfinished or no checkpoint): {len(skipped)}",
              file=sys.stderr)
    results = []
    for label, cfg, ck in states:
        t0 = time.perf_counter()
        net, train_set, split = build_state(cfg, ck)
        pairs = batch_pairs(cfg, train_set, split, args.k)
        r = probe_state(net, pairs, cg_iterations=args.cg_iterations, cg_damping=args.cg_damping)
        r.update(label=label, seed=cfg.seed, estimator=cfg.estimator, eta=cfg.eta,
                 subset=cfg.subset, arch_learning_rate=cfg.arch_learning_rate,
                 checkpoint=str(ck) if ck else None, genotype=net.genotype().to_dict()["nb201"],
                 seconds=time.perf_counter() - t0)
        results.append(r)
        print(f"op_pressure.py: {label}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


def _group(label: str) -> str:
    kind, setting, *rest = label.split()
    if kind == "initial":
        return f"initial {setting}"
    arm = rest[0].rsplit("-s", 1)[0]
    return f"final {setting} " + ("amended" if arm.startswith("amended") else "other")


def _fmt(s: dict[str, float], scale: float) -> str:
    mark = {"up": "+", "down": "-", "within": "~"}[direction(s)]
    return f"{s['mean'] * scale:.2f}±{s['se'] * scale:.2f} {mark}"


TABLE_TERMS = ("g1", "g2_amended_0.1", "g2_amended_1", "g2_cg", "g_amended_0.1", "g_amended_1",
               "g_cg")


def table(results: list[dict[str, Any]], scale: float = 1e3) -> str:
    lines = [f"Rate d p_none / dt of none's softmax weight under a descent step along -term, "
             f"x{scale:g}, mean±SE over K batch pairs; `+` beyond 2 SE above 0 (pushes none "
             f"up), `-` beyond 2 SE below (pushes none down), `~` within 2 SE.", ""]
    lines += ["### Counts of states per direction (up / within / down)", "",
              "| group | states | term | " + " | ".join(EDGES) + " |",
              "|---|---|---|" + "---|" * len(EDGES)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_group(r["label"]), []).append(r)
    for gname, rs in groups.items():
        for t in TABLE_TERMS:
            cells = []
            for e in range(len(EDGES)):
                ds = [r["terms"][t]["direction"][e] for r in rs]
                cells.append(f"{ds.count('up')}/{ds.count('within')}/{ds.count('down')}")
            lines.append(f"| {gname} | {len(rs)} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "### Pooled over the states of a group", "",
              "Mean over states of the per-state mean rate (x" + f"{scale:g}" + "), ± SE across "
              "states, mark as above; in brackets the states whose mean is > 0.", "",
              "| group | states | term | " + " | ".join(EDGES) + " |",
              "|---|---|---|" + "---|" * len(EDGES)]
    for gname, rs in groups.items():
        for t in TABLE_TERMS:
            cells = []
            for e in range(len(EDGES)):
                m = [r["terms"][t]["rate"][e]["mean"] for r in rs]
                cells.append(f"{_fmt(_mean_se(m), scale)} ({sum(x > 0 for x in m)}/{len(m)})")
            lines.append(f"| {gname} | {len(rs)} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "### Per state", "",
              "| state | genotype (argmax per edge) | term | " + " | ".join(EDGES)
              + " | abs g2/g1 | cos(g2', g2_cg) |",
              "|---|---|---|" + "---|" * len(EDGES) + "---|---|"]
    for r in results:
        geno = ",".join(r["argmax"])
        for t in TABLE_TERMS:
            extra = ["", ""]
            if t.startswith("g2_"):
                rr = r["ratio_g2_g1"][t[3:]]
                extra[0] = f"{rr['mean']:.3g}±{rr['se']:.2g}"
                if t == "g2_amended_0.1":
                    c = r["cos_g2amended_g2cg"]
                    extra[1] = f"{c['mean']:.2f}±{c['se']:.2f}"
            lines.append(f"| {r['label']} | {geno} | {t} | "
                         + " | ".join(_fmt(s, scale) for s in r["terms"][t]["rate"])
                         + f" | {extra[0]} | {extra[1]} |")
    return "\n".join(lines) + "\n"


def _rounded(obj: Any, digits: int = 6) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (a smaller JSON)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=8, help="batch pairs per state")
    p.add_argument("--initial", nargs="*", default=["W", "S"], choices=sorted(SETTINGS),
                   help="settings whose initial states to probe")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3])
    p.add_argument("--final", nargs="*", default=[],
                   help="search folders of finished runs (config.json, checkpoint.pt, "
                        "summary.json); others are skipped")
    p.add_argument("--cg_iterations", type=int, default=10)
    p.add_argument("--cg_damping", type=float, default=0.0)
    p.add_argument("--out", default=None, help="folder for op_pressure.json and table.md")
    p.add_argument("--table_from", default=None, metavar="JSON",
                   help="print the table of an op_pressure.json and exit (computes nothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())["states"]))
        return 0
    torch.set_num_threads(1)
    results = collect(args)
    text = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/op_pressure.py " + " ".join(sys.argv[1:] if argv is None else argv)
        (out / "op_pressure.json").write_text(json.dumps(
            _rounded({"command": cmd, "terms": list(TERMS), "states": results})) + "\n")
        (out / "table.md").write_text(f"# op_pressure\n\n    {cmd}\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
