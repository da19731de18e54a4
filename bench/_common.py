"""Pieces the cost benchmarks share: the upstream replays of the test suite as a module, timing
of several cases interleaved round by round, and the peak extra memory of one call (CPU:
resident set size sampled every millisecond; CUDA: peak allocated).

Not a benchmark itself; ``bench/step_cost.py``, ``bench/adapter_cost.py`` and
``bench/option_cost.py`` import it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_support() -> ModuleType:
    """``tests/test_adapters_support.py`` (the replays of quark0/darts' architect) as a module."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))  # it imports tests/helpers.py
    spec = importlib.util.spec_from_file_location(
        "adapter_support", ROOT / "tests" / "test_adapters_support.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def timed_round_robin(
    cases: dict[Any, Callable[[], object]], reps: int, warmup: int, device: torch.device
) -> dict[Any, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of every case, ``reps`` rounds after ``warmup`` rounds, the
    cases interleaved (1, 2, ..., 1, 2, ...) so that a change of load on a shared machine hits all
    of them alike instead of biasing whichever ran during it. With one intra-op thread the CPU
    time is the less load-sensitive of the two. CUDA is synchronised around every call."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: dict[Any, tuple[list[float], list[float]]] = {key: ([], []) for key in cases}
    for i in range(warmup + reps):
        for key, fn in cases.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            if i >= warmup:
                times[key][0].append(time.perf_counter() - wall)
                times[key][1].append(time.process_time() - cpu)
        print(f"  round {i + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    return times


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def malloc_trim() -> None:
    """Hand glibc's cached heap pages back, so a resident-size base is the live working set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the base then includes cached pages
        pass


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory above the level before the call, during one call of ``fn``.

    Call it after a warm-up call (allocator caches, lazy initialisation). CUDA: peak of
    ``torch.cuda.max_memory_allocated`` above the allocated memory before. CPU: after
    ``gc.collect`` and ``malloc_trim``, a background thread samples the resident set size every
    millisecond; the peak above the size before the call is returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - base, 0)
    gc.collect()
    malloc_trim()
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0] - base, 0)
