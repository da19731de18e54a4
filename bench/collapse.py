"""Collapse benchmark: do searches run to convergence pile up parameter-free ops, per estimator?

The paper's central claim: first-order / second-order DARTS drift to parameter-free cells
(skip-connect, and in RobustDARTS' spaces none / noise), amended gradients do not. For every
space x estimator x seed this script runs ``darts-amend search`` (the library's search driver, one
process and one thread per run, ``-j`` runs in parallel) on the bundled digits until the
convergence rule holds for ``--stable`` epochs (every kept op weighs >= the threshold and the
genotype is unchanged) or an alpha-step cap, then re-trains the final genotype with
``darts-amend train``. Alpha steps are counted, not epochs.

Estimators: ``first_order``; ``unrolled`` (second-order DARTS with finite differences, upstream
parity; also ``unrolled_fd``); ``amended_<eta>`` (exact products, e.g. ``amended_0.1``,
``amended_1``); also ``unrolled_exact``, ``amended_fd_<eta>``, ``implicit_cg`` (10 CG steps) and
``implicit_cg_d<damping>`` (10 CG steps on H + damping I).
bench/collapse_study.py builds the issue-17 study (more metrics, reference percentiles, tests
per arm) on these functions.

Resumable: every run keeps the CLI's own checkpoint (written every epoch and on Ctrl-C / SIGTERM);
``--resume`` continues unfinished runs and skips the ones already in ``results.jsonl``. The study's
search settings are stored in ``study.json``; a resumed study must use the same ones (the lists of
spaces / estimators / seeds may change, so a study can be run in parts). Per run it writes
``trajectory.csv`` (parameter-free share etc. against alpha steps); ``--report`` writes the
per-space tables (markdown) and one plot from whatever is on disk, finished or not.

    python bench/collapse.py --out runs/collapse -j 2 --nice 19          # the study (defaults)
    python bench/collapse.py --out runs/collapse -j 2 --nice 19 --resume # after an interruption
    python bench/collapse.py --out runs/collapse --report --plot bench/collapse.png
    python bench/collapse.py --out runs/collapse --archive bench/results/collapse  # to commit

Defaults (chosen by a pilot, docs/benchmarks.md): digits, 20% of its training split, 5-cell
supernet (3 normal, 2 reduction cells), C=4, batch 32, weight SGD 0.05 constant, alpha Adam 3e-2,
600 alpha steps per run at most, 10 stable epochs (5 alpha steps each) for convergence.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ESTIMATORS = ("first_order", "unrolled", "amended_0.1", "amended_1")
# settings that define what a study computes (stored in study.json, checked on --resume)
STUDY_KEYS = ("dataset", "subset", "layers", "nb201_layers", "channels", "batch_size", "lr",
              "arch_lr", "arch_wd", "steps_per_epoch", "stable", "threshold", "max_alpha_steps",
              "train_epochs", "train_channels", "train_layers")
FINAL = ("converged", "epochs")  # search stop reasons of a finished run ("epochs": the cap)

_stop = threading.Event()
_children: set[subprocess.Popen] = set()
_lock = threading.Lock()


# --------------------------------------------------------------------------- commands


def estimator_flags(name: str) -> list[str]:
    """CLI flags of an estimator label."""
    if name == "first_order":
        return ["--estimator", "first_order"]
    if name in ("unrolled", "unrolled_fd"):
        return ["--estimator", "unrolled", "--hvp_mode", "finite_difference"]
    if name == "implicit_cg":  # the accurate-gradient control: 10 CG steps on H x = v
        return ["--estimator", "implicit_cg", "--hvp_mode", "exact", "--cg_iterations", "10"]
    if name == "unrolled_exact":
        return ["--estimator", "unrolled", "--hvp_mode", "exact"]
    if name.startswith("implicit_cg_d"):  # 10 CG steps on (H + d I) x = v
        try:
            damping = float(name[len("implicit_cg_d"):])
        except ValueError:
            damping = -1.0
        if damping > 0:
            return ["--estimator", "implicit_cg", "--hvp_mode", "exact", "--cg_iterations", "10",
                    "--cg_damping", f"{damping:g}"]
    for prefix, mode in (("amended_fd_", "finite_difference"), ("amended_", "exact")):
        if name.startswith(prefix):
            try:
                eta = float(name[len(prefix):])
            except ValueError:
                break
            return ["--estimator", "amended", "--eta", f"{eta:g}", "--hvp_mode", mode]
    raise ValueError(f"unknown estimator label {name!r} (first_order, unrolled, unrolled_fd, "
                     f"unrolled_exact, implicit_cg, implicit_cg_d<damping > 0>, amended_<eta>, "
                     f"amended_fd_<eta>)")


def threshold_for(space: str, threshold: float | None) -> float:
    """The convergence threshold: given, or 0.5 (the paper's) for >= 3 ops per edge and 0.8 for
    two, where the winning op always weighs >= 0.5 and the paper's rule would be empty."""
    if threshold is not None:
        return threshold
    from darts_amend.supernet import get_space

    return 0.5 if get_space(space).ops_per_edge >= 3 else 0.8


def search_argv(s: dict[str, Any], space: str, estimator: str, seed: int, out: Path,
                time_limit: float) -> list[str]:
    steps = s["steps_per_epoch"] or _steps_per_epoch(s)
    epochs = max(1, math.ceil(s["max_alpha_steps"] / steps))
    layers = s["nb201_layers"] if space == "nb201" else s["layers"]
    argv = ["search", "--dataset", s["dataset"], "--subset", f"{s['subset']:g}",
            "--space", space, "--layers", str(layers), "--init_channels", str(s["channels"]),
            "--batch_size", str(s["batch_size"]), "--epochs", str(epochs),
            "--steps_per_epoch", str(s["steps_per_epoch"]),
            "--learning_rate", f"{s['lr']:g}", "--learning_rate_min", f"{s['lr']:g}",
            "--arch_learning_rate", f"{s['arch_lr']:g}", "--arch_weight_decay",
            f"{s['arch_wd']:g}", "--until-converged", str(s["stable"]),
            "--converge_threshold", f"{threshold_for(space, s['threshold']):g}",
            "--seed", str(seed), "--threads", "1", "--no-progress", "--no-plots", "-q",
            "--output", str(out), *estimator_flags(estimator)]
    if s.get("diag_every"):  # alpha-Hessian eigenvalue + alignment with implicit CG
        argv += ["--diag_every", str(s["diag_every"])]
    if time_limit:
        argv += ["--time_limit", f"{time_limit:g}"]
    return argv


def train_argv(s: dict[str, Any], search_dir: Path, seed: int, out: Path,
               time_limit: float) -> list[str]:
    argv = ["train", "--genotype", str(search_dir), "--preset", "tiny", "--dataset", s["dataset"],
            "--epochs", str(s["train_epochs"]), "--init_channels", str(s["train_channels"]),
            "--layers", str(s["train_layers"]), "--seed", str(seed), "--threads", "1",
            "--no-progress", "--no-plots", "-q", "--output", str(out)]
    if time_limit:
        argv += ["--time_limit", f"{time_limit:g}"]
    return argv


def _steps_per_epoch(s: dict[str, Any]) -> int:
    """Alpha steps in a full epoch of the search's alpha half (digits / fake train split)."""
    from darts_amend.data import load_dataset, split_indices

    train, _ = load_dataset(s["dataset"], train=True, subset=s["subset"], seed=0)
    t, v = split_indices(len(train), 0.5, seed=0)
    return math.ceil(min(len(t), len(v)) / s["batch_size"])


def _invoke(argv: list[str], log: Path, args: argparse.Namespace) -> int:
    """Run one ``darts-amend`` command: a child process (``nice``d, one thread), or in this
    process with ``--inprocess`` (tests)."""
    with open(log, "a") as fh:
        fh.write(f"\n$ darts-amend {' '.join(argv)}\n")
        fh.flush()
        if args.inprocess:
            from darts_amend.cli import main

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                rc = main(argv)
            fh.write(buf.getvalue())
            return rc
        cmd = [sys.executable, "-m", "darts_amend.cli", *argv]
        if args.nice:
            cmd = ["nice", "-n", str(args.nice), *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with _lock:
            if _stop.is_set():
                return 130
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # our signal handler forwards
            _children.add(proc)
        try:
            return proc.wait()
        finally:
            with _lock:
                _children.discard(proc)


def _summary(folder: Path) -> dict[str, Any] | None:
    p = folder / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _phase(kind: str, argv: list[str], folder: Path, log: Path,
           args: argparse.Namespace) -> dict[str, Any] | None:
    """Run a search / train to its end (resuming its checkpoint); None when interrupted."""
    done = ("converged", "epochs", "early_stop") if kind == "search" else ("epochs",)
    summary = _summary(folder)
    if summary is not None and summary.get("stop_reason") in done:
        return summary
    if (folder / "checkpoint.pt").is_file():
        argv = argv + ["--resume"]
    elif folder.exists():
        argv = argv + ["--force"]  # started but no epoch finished: start over
    rc = _invoke(argv, log, args)
    if rc != 0:
        if rc == 130 or _stop.is_set():  # interrupted (checkpointed): no new runs either
            _stop.set()
            return None
        raise RuntimeError(f"{kind} failed (exit {rc}); see {log}")
    summary = _summary(folder)
    if summary is None or summary.get("stop_reason") not in done:
        return None  # a --run_time_limit stop: continued by the next --resume
    return summary


def run_one(study: dict[str, Any], space: str, estimator: str, seed: int,
            args: argparse.Namespace) -> dict[str, Any] | None:
    """Search, re-train and summarise one run; None if interrupted / time-limited."""
    base = Path(args.out) / space / f"{estimator}-s{seed}"
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = _phase("search", search_argv(study, space, estimator, seed, base / "search",
                                     args.run_time_limit), base / "search", base / "search.log",
               args)
    if s is None or _stop.is_set():
        return None
    write_trajectory(base / "search", space, base / "trajectory.csv")
    t1 = time.perf_counter()
    t = _phase("train", train_argv(study, base / "search", seed, base / "train",
                                   args.run_time_limit), base / "train", base / "train.log", args)
    if t is None:
        return None
    rows = trajectory(base / "search", space)
    last = rows[-1]
    return {"space": space, "estimator": estimator, "seed": seed,
            "alpha_steps": s["alpha_steps"], "epochs": s["epochs_run"],
            "stop_reason": s["stop_reason"], "converged": s["stop_reason"] == "converged",
            "pf_share": last["pf_share"], "pf_share_genotype": last["pf_share_genotype"],
            "skip_share": s["skip_share"], "kept_weight_min": s["kept_weight_min"],
            "genotype": s["genotype"], "test_acc": t["test_acc"],
            "step_seconds": statistics.fmean(r["step_seconds"] for r in rows),
            "search_seconds": sum(r["epoch_seconds"] for r in rows),
            "wall_seconds_this_session": round(time.perf_counter() - t0, 1),
            "train_seconds_this_session": round(time.perf_counter() - t1, 1)}


# --------------------------------------------------------------------------- trajectories


def trajectory(search_dir: Path, space: str) -> list[dict[str, Any]]:
    """Per epoch: alpha steps, parameter-free shares, skip share, kept-op weight min, time."""
    from darts_amend.diagnostics import read_metrics
    from darts_amend.supernet import get_space, parameter_free_share

    path = search_dir / "metrics.jsonl"
    if not path.is_file():  # an archived run (--archive) keeps only its trajectory.csv
        return _read_trajectory(search_dir.parent / "trajectory.csv")
    spec = get_space(space)
    rows = []
    for r in read_metrics(path):
        pf = parameter_free_share(spec, r["alphas"])
        rows.append({"alpha_steps": r["alpha_steps"], **pf,
                     "skip_share": r.get("collapse/skip_share"),
                     "kept_weight_min": r.get("collapse/kept_weight_min"),
                     "converged_epochs": r.get("converged_epochs"),
                     "step_seconds": r.get("step_seconds", float("nan")),
                     "epoch_seconds": r.get("epoch_seconds", float("nan"))})
    return rows


def _read_trajectory(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (None if v == "" else int(v) if k in ("alpha_steps", "converged_epochs")
                 else float(v)) for k, v in r.items()} for r in rows]


def archive(args: argparse.Namespace) -> int:
    """Copy what the report needs of the finished runs (no checkpoints, no metrics.jsonl) to
    ``--archive DIR``, a folder small enough to commit; ``--report --out DIR`` reads it, and a
    copy of it under ``--out`` continues the study with ``--resume`` (unfinished runs start over).
    """
    import shutil

    out, dest = Path(args.out), Path(args.archive)
    finished = _results(out)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "study.json", dest / "study.json")
    keep = {"search": ("summary.json", "genotype.json", "config.json"),
            "train": ("summary.json", "config.json")}
    for r in finished:
        run = Path(r["space"]) / f"{r['estimator']}-s{r['seed']}"
        (dest / run).mkdir(parents=True, exist_ok=True)
        for name in ("trajectory.csv", "search.log", "train.log"):
            if (out / run / name).is_file():
                shutil.copy2(out / run / name, dest / run / name)
        for sub, names in keep.items():
            (dest / run / sub).mkdir(exist_ok=True)
            for name in names:
                if (out / run / sub / name).is_file():
                    shutil.copy2(out / run / sub / name, dest / run / sub / name)
    with open(dest / "results.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in finished)
    print(f"collapse.py: {len(finished)} finished runs archived in {dest}")
    return 0


def write_trajectory(search_dir: Path, space: str, path: Path) -> None:
    rows = trajectory(search_dir, space)
    if rows:
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


# --------------------------------------------------------------------------- report

_SHORT = {"skip_connect": "skip", "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5",
          "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5", "max_pool_3x3": "max",
          "avg_pool_3x3": "avg", "nor_conv_3x3": "conv3", "nor_conv_1x1": "conv1"}


def genotype_text(g: dict[str, Any]) -> str:
    """Compact genotype: op counts per cell type; the NB201 string as it is."""
    if "nb201" in g:  # pipes escaped: inside a markdown table cell
        from darts_amend.supernet import NB201Genotype

        cut = "" if NB201Genotype.from_string(g["nb201"]).connected() else " (disconnected)"
        return "`" + g["nb201"].replace("|", "\\|") + "`" + cut
    cells = {"normal": g["normal"], "reduce": g["reduce"]} if "normal" in g else {
        f"cell{i}": c["edges"] for i, c in enumerate(g["cells"])}
    parts = []
    for kind, edges in cells.items():
        counts = Counter(_SHORT.get(op, op) for op, _ in edges)
        parts.append(f"{kind[0] if kind in ('normal', 'reduce') else kind}: "
                     + " ".join(f"{op} {n}" for op, n in counts.most_common()))
    return "; ".join(parts)


def _mean_std(xs: list[float], fmt: str) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{format(statistics.fmean(xs), fmt)} +- {format(sd, fmt)}"


def _command(study: dict[str, Any], out: str) -> str:
    parts = [f"python bench/collapse.py --out {out}"]
    for k in STUDY_KEYS:
        if study[k] is not None:
            parts.append(f"--{k} {study[k]:g}" if isinstance(study[k], float)
                         else f"--{k} {study[k]}")
    return " ".join(parts)


def _run_order(path: Path) -> tuple[int, str, int]:
    est, seed = path.name.rsplit("-s", 1)
    return (ESTIMATORS.index(est) if est in ESTIMATORS else len(ESTIMATORS), est, int(seed))


def report(args: argparse.Namespace) -> str:
    """Markdown tables (per space) and the plot, from results.jsonl and the run folders."""
    out = Path(args.out)
    study = json.loads((out / "study.json").read_text())
    results = {(r["space"], r["estimator"], r["seed"]): r for r in _results(out)}
    runs: dict[str, dict[str, list[tuple[int, list[dict[str, Any]]]]]] = {}
    lines = [f"Settings: `{_command(study, args.out)}` (spaces, estimators, seeds and `-j` as "
             f"launched). One process and one thread per run; alpha steps counted; a run stops "
             f"when the convergence rule held for {study['stable']} epochs or at "
             f"{study['max_alpha_steps']} alpha steps (the cap).", ""]
    for space in sorted({p.parent.parent.name for p in out.glob("*/*-s*/search")}):
        lines += [f"### {space}", "",
                  "| estimator | seed | alpha steps | stop | parameter-free share (top op / "
                  "genotype) | kept-op weight min | genotype | re-trained test acc | s / step |",
                  "|---|---|---:|---|---|---:|---|---:|---:|"]
        by_est: dict[str, list[dict[str, Any]]] = {}
        for run in sorted((out / space).glob("*-s*"), key=_run_order):
            est, seed = run.name.rsplit("-s", 1)[0], int(run.name.rsplit("-s", 1)[1])
            rows = trajectory(run / "search", space)
            runs.setdefault(space, {}).setdefault(est, []).append((int(seed), rows))
            r = results.get((space, est, int(seed)))
            if r is not None:
                by_est.setdefault(est, []).append(r)
                stop = "converged" if r["converged"] else "cap"
                lines.append(
                    f"| {est} | {seed} | {r['alpha_steps']} | {stop} | {r['pf_share']:.2f} / "
                    f"{r['pf_share_genotype']:.2f} | {r['kept_weight_min']:.3f} | "
                    f"{genotype_text(r['genotype'])} | {r['test_acc']:.4f} | "
                    f"{r['step_seconds']:.2f} |")
            elif rows:
                last = rows[-1]
                lines.append(f"| {est} | {seed} | {last['alpha_steps']} | running | "
                             f"{last['pf_share']:.2f} / {last['pf_share_genotype']:.2f} | "
                             f"{last['kept_weight_min']:.3f} | - | - | "
                             f"{statistics.fmean(x['step_seconds'] for x in rows):.2f} |")
        if by_est:
            lines += ["", "| estimator | finished seeds | converged | alpha steps | "
                          "parameter-free share: top op | genotype | kept-op weight min | "
                          "re-trained test acc |", "|---|---:|---:|---|---|---|---|---|"]
            for est, rs in by_est.items():
                lines.append(
                    f"| {est} | {len(rs)} | {sum(r['converged'] for r in rs)} | "
                    f"{_mean_std([r['alpha_steps'] for r in rs], '.0f')} | "
                    f"{_mean_std([r['pf_share'] for r in rs], '.2f')} | "
                    f"{_mean_std([r['pf_share_genotype'] for r in rs], '.2f')} | "
                    f"{_mean_std([r['kept_weight_min'] for r in rs], '.3f')} | "
                    f"{_mean_std([r['test_acc'] for r in rs], '.4f')} |")
        lines.append("")
    if runs and args.plot:
        plot(runs, Path(args.plot))
        lines.append(f"![parameter-free share against alpha steps]({args.plot})")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def plot(runs: dict[str, dict[str, list[tuple[int, list[dict[str, Any]]]]]], path: Path) -> None:
    """Parameter-free share (top op of the kept edges) against alpha steps: a panel per space,
    a colour per estimator, a thin line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spaces = sorted(runs)
    fig = Figure(figsize=(4.2 * len(spaces), 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(spaces), squeeze=False)[0]
    estimators = sorted({e for r in runs.values() for e in r})
    for ax, space in zip(axes, spaces, strict=True):
        for i, est in enumerate(estimators):
            for k, (_, rows) in enumerate(runs[space].get(est, [])):
                if rows:
                    ax.plot([0] + [r["alpha_steps"] for r in rows],
                            [math.nan] + [r["pf_share"] for r in rows], lw=0.9, alpha=0.8,
                            color=f"C{i}", label=est if k == 0 else None)
        ax.set(title=space, xlabel="alpha steps", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("parameter-free share of kept edges")
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- driver


def _results(out: Path) -> list[dict[str, Any]]:
    p = out / "results.jsonl"
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _study(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    study = {k: getattr(args, k) for k in STUDY_KEYS}
    stored = out / "study.json"
    if stored.is_file():
        old = json.loads(stored.read_text())
        if not args.resume:
            raise SystemExit(f"collapse.py: {out} holds a study; pass --resume to continue it "
                             f"or choose another --out")
        diff = {k: (old.get(k), study[k]) for k in STUDY_KEYS if old.get(k) != study[k]}
        if diff:
            raise SystemExit(f"collapse.py: --resume with other settings than {stored}: {diff}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(study, indent=2) + "\n")
    return study


def _forward_signal(signum: int, frame: Any) -> None:
    _stop.set()
    with _lock:
        for p in list(_children):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)  # the CLI checkpoints after the current step


def run_study(args: argparse.Namespace) -> int:
    study = _study(args)
    out = Path(args.out)
    done = {(r["space"], r["estimator"], r["seed"]) for r in _results(out)}
    todo = [(sp, est, seed) for sp in args.spaces for est in args.estimators
            for seed in args.seeds if (sp, est, seed) not in done]
    for est in args.estimators:
        estimator_flags(est)  # unknown labels fail before anything runs
    print(f"collapse.py: {len(todo)} runs to do, {len(done)} finished in {out}", flush=True)
    if not args.inprocess:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _forward_signal)
    failures = []

    def job(item: tuple[str, str, int]) -> None:
        try:
            r = run_one(study, *item, args)
        except RuntimeError as err:
            failures.append(f"{item}: {err}")
            print(f"collapse.py: FAILED {item}: {err}", flush=True)
            return
        if r is None:
            return
        with _lock:
            with open(out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
        print(f"collapse.py: {r['space']} {r['estimator']} seed {r['seed']}: "
              f"{r['stop_reason']} after {r['alpha_steps']} alpha steps, parameter-free share "
              f"{r['pf_share']:.2f}, test acc {r['test_acc']:.4f}", flush=True)

    if args.inprocess or args.jobs == 1:
        for item in todo:
            if _stop.is_set():
                break
            job(item)
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(job, todo))
    finished = {(r["space"], r["estimator"], r["seed"]) for r in _results(out)}
    left = [t for t in todo if t not in finished]
    if _stop.is_set() or left:
        print(f"collapse.py: {len(left)} runs unfinished; continue with the same command and "
              f"--resume", flush=True)
    report(args)
    return 1 if failures else (130 if _stop.is_set() else 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/collapse")
    p.add_argument("--spaces", nargs="+", default=["s3r", "nb201", "s2r", "s4r"])
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-j", "--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out (finished runs are skipped)")
    p.add_argument("--report", action="store_true", help="only write the tables and the plot")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="copy the finished runs' results, trajectories and summaries (no "
                        "checkpoints) to DIR, small enough to commit; --report --out DIR reads it")
    p.add_argument("--plot", default="bench/collapse.png")
    p.add_argument("--nice", type=int, default=0, help="run the searches under nice -n N")
    p.add_argument("--run_time_limit", type=float, default=0.0,
                   help="seconds per search / train invocation (0 = none); stopped runs are "
                        "continued by the next --resume")
    p.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)  # tests
    g = p.add_argument_group("study settings (stored in study.json)")
    g.add_argument("--dataset", default="digits", choices=("digits",))
    g.add_argument("--subset", type=float, default=0.2,
                   help="fraction of digits' training split (0.2: ~144 + 144 images, a set the "
                        "weights overfit, which is what drove collapse in the pilot)")
    g.add_argument("--layers", type=int, default=5, help="cells of the DARTS-cell supernets")
    g.add_argument("--nb201_layers", type=int, default=1, help="nb201: cells per stage")
    g.add_argument("--channels", type=int, default=4)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.05, help="weight learning rate (constant)")
    g.add_argument("--arch_lr", type=float, default=3e-2,
                   help="alpha learning rate (Adam; 100x the paper's: ~600 steps, not ~20k)")
    g.add_argument("--arch_wd", type=float, default=1e-3, help="alpha weight decay")
    g.add_argument("--steps_per_epoch", type=int, default=0,
                   help="alpha steps per epoch (0 = the whole alpha half)")
    g.add_argument("--stable", type=int, default=10, help="epochs the convergence rule must hold")
    g.add_argument("--threshold", type=float, default=None,
                   help="kept-op weight of the rule (default: 0.5, or 0.8 with 2 ops per edge)")
    g.add_argument("--max_alpha_steps", type=int, default=600, help="per-run alpha-step cap")
    g.add_argument("--train_epochs", type=int, default=10)
    g.add_argument("--train_channels", type=int, default=8)
    g.add_argument("--train_layers", type=int, default=3,
                   help="re-training cells (nb201: cells per stage)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("collapse.py: -j must be >= 1")
    if args.report:
        print(report(args))
        return 0
    if args.archive:
        return archive(args)
    return run_study(args)


if __name__ == "__main__":
    sys.exit(main())
