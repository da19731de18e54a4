"""What a ``search`` / ``train`` run is handed and what it hands back.

* :class:`RunContext`: device, torchrun state, output folder, data, resume state, progress bars
  and the Ctrl-C handler, built by :mod:`darts_amend.cli.run` and read by ``run_search`` /
  ``run_train``;
* :class:`RunResult`: the summary (as written to ``summary.json``) and the genotype object;
* :class:`Progress`, :class:`GracefulInterrupt`: the console side of a run.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: runtime (loaders, torchrun) loads when a run starts
    import torch
    from torch.utils.data import Dataset

    from darts_amend.data import DatasetInfo
    from darts_amend.supernet import Genotype, NB201Genotype

    from .runtime import Dist, RunFolder

__all__ = ["GracefulInterrupt", "Progress", "RunContext", "RunResult"]


class Progress:
    """tqdm on the main rank when enabled; a no-op bar otherwise.

    The bars draw on stderr through a :class:`_LineTracker`, which remembers whether they left
    a line without its newline: in a pipe or a log file a bar's text ends in a carriage return,
    and the next message would continue its line. :meth:`close_all` ends such a line."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: list[Any] = []
        self._stream: _LineTracker | None = None

    def __call__(self, **kwargs: Any) -> Any:
        if self.enabled:
            from tqdm.auto import tqdm

            if self._stream is None or self._stream.stream is not sys.stderr:
                self._stream = _LineTracker(sys.stderr)
            bar = tqdm(leave=False, dynamic_ncols=True, file=self._stream, **kwargs)
            self._bars.append(bar)
            return bar
        return _NoBar()

    def close_all(self) -> None:
        """Close the bars and make sure that the next message on stderr starts on a line of its
        own: on a terminal closing clears the bar's line; elsewhere (a pipe, a file) the bar's
        text stays, and a newline ends it."""
        for bar in self._bars:
            bar.close()
        self._bars.clear()
        self.end_line()

    def end_line(self) -> None:
        """End a line a bar left open in a pipe or a file (a no-op on a terminal, where the
        bar's line is cleared or redrawn), so that the next message starts on its own line."""
        if self._stream is not None and self._stream.open_line:
            if not _isatty(self._stream.stream):
                self._stream.stream.write("\n")
                self._stream.stream.flush()
            self._stream.open_line = False


    def clear_line(self) -> None:
        """Make room for a message on stderr while bars are open: on a terminal clear the bars
        (tqdm redraws them at their next update); in a pipe or a file end the bar's line."""
        if self._stream is None or not self._stream.open_line:
            return
        if _isatty(self._stream.stream):
            for bar in self._bars:
                bar.clear()
            self._stream.open_line = False
        else:
            self.end_line()

    @contextlib.contextmanager
    def guard_messages(self) -> Iterator[None]:
        """While the run lasts, log records and warnings from the library (a warning in the
        middle of an epoch) start on a line of their own instead of continuing a bar's line."""
        if not self.enabled:
            yield
            return
        guard = _ClearBarLine(self)
        handlers = [h for h in logging.getLogger().handlers
                    if getattr(h, "stream", None) is sys.stderr]
        for handler in handlers:
            handler.addFilter(guard)
        shown = warnings.showwarning

        def showwarning(*args: Any, **kwargs: Any) -> None:
            self.clear_line()
            shown(*args, **kwargs)

        warnings.showwarning = showwarning
        try:
            yield
        finally:
            warnings.showwarning = shown
            for handler in handlers:
                handler.removeFilter(guard)


class _ClearBarLine(logging.Filter):
    """A handler filter that lets every record through after clearing a bar's open line."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear_line()
        return True


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _LineTracker:
    """A stream that passes everything on and records whether the last text written left a
    line open (did not end with a newline)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.open_line = False

    def write(self, text: str) -> int:
        if text:
            self.open_line = not text.endswith("\n")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class GracefulInterrupt:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: interrupt at once.

    The handler is installed only inside ``with``; outside it ``requested`` stays False."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> GracefulInterrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndarts-amend: interrupt received, checkpointing after this step "
              "(Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


@dataclass
class RunContext:
    """Everything a run needs besides its config.

    ``split``: (weight indices, alpha indices) of the training set for a search, (all indices,
    None) for a re-training; ``test_set`` is None for a search. ``interrupted`` is set by the
    run to (epoch, step) when it stops for Ctrl-C; ``estimate_time`` asks it to print the epoch
    time it expects after its first step (a paper-size search on a CPU)."""

    dist: Dist
    device: torch.device
    folder: RunFolder
    info: DatasetInfo
    train_set: Dataset
    test_set: Dataset | None
    split: tuple[list[int], list[int] | None]
    workers: int
    checkpoint: dict[str, Any] | None
    progress: Progress
    echo: Callable[[str], None]
    interrupt: GracefulInterrupt = field(default_factory=GracefulInterrupt)
    interrupted: tuple[int, int] | None = None
    estimate_time: bool = False

    def stop_requested(self) -> bool:
        """Whether Ctrl-C was pressed, on any rank (every rank must stop at the same step)."""
        flag = self.interrupt.requested
        if self.dist.enabled:
            import torch
            import torch.distributed as dist

            t = torch.tensor([1.0 if flag else 0.0],
                             device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag


@dataclass(frozen=True)
class RunResult:
    """What a finished (or time-limited, converged, early-stopped) run returns."""

    summary: dict[str, Any]  # as written to summary.json
    genotype: Genotype | NB201Genotype  # searched, or re-trained
