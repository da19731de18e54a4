"""Random-number helpers shared by the diagnostics (package-internal)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["fixed_randomness"]


@contextmanager
def fixed_randomness(device: torch.device) -> Iterator[Callable[[], None]]:
    """Fork the RNG (the caller's stream is untouched) and yield ``reset()``, which rewinds it.

    Calling ``reset()`` before each of several forward passes makes dropout / drop-path draw
    the same masks in each, so the passes see the same function.
    """
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type=device.type):
        cpu_state = torch.get_rng_state()
        dev_state = torch.cuda.get_rng_state(device) if cuda else None

        def reset() -> None:
            torch.set_rng_state(cpu_state)
            if dev_state is not None:
                torch.cuda.set_rng_state(dev_state, device)

        yield reset
