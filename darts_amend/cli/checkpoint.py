"""Run checkpoints that survive crashes, damage and untrusted folders.

A run folder keeps two checkpoints: ``checkpoint.pt`` (the newest) and ``checkpoint.prev.pt``
(the one before it). Each save writes a temporary file, fsyncs it, moves the current file to
``checkpoint.prev.pt`` and renames the new file over ``checkpoint.pt``, so at every instant at
least one complete checkpoint exists. Every checkpoint stores a SHA-256 digest of its own
content; loading uses ``torch.load(weights_only=True)`` (tensors, numbers, strings and plain
containers only: a file that carries pickled code is refused, never run) and then recomputes
the digest. ``--resume`` takes the newest checkpoint that passes both checks and says what a
fallback lost.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import CLIError

__all__ = [
    "CURRENT",
    "PREVIOUS",
    "CheckpointError",
    "Checkpoints",
    "content_digest",
    "read_checkpoint",
    "write_atomic",
]

logger = logging.getLogger("darts_amend.cli")

CURRENT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = 2  # 2: digest + weights-only content (format 1 held numpy RNG arrays)
_REQUIRED = ("epoch", "step", "model", "optimizer", "rng")


class CheckpointError(CLIError):
    """A checkpoint that cannot be used; the message says which file and why."""


# --------------------------------------------------------------------------- writing


def write_atomic(path: Path, write: Any) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync, rename over ``path``.

    An ``OSError`` (disk full, read-only folder, permissions) becomes a :class:`CLIError` that
    names the file; ``path`` and every other file are left as they were.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as err:
        raise CLIError(f"could not write {path}: {err.strerror or err} "
                       f"(the previous {path.name}, if any, is unchanged)") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def content_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: keys, tensor dtypes, shapes and bytes, scalars."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint; :class:`CheckpointError` says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the weights-only unpickler names the global it refused; anything else is damage
        if "unsupported global" in str(err).lower() and zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} holds pickled objects (code, or checkpoint format < {FORMAT}), "
                f"not loaded: it could run code") from None
        raise CheckpointError(f"{path} is damaged (not a readable torch checkpoint)") from None
    except Exception as err:  # truncated zip, bad magic number, EOF, ...
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "digest" not in data:
        raise CheckpointError(f"{path} is not a darts-amend checkpoint of format {FORMAT}")
    stored = data.pop("digest")
    if content_digest(data) != stored:
        raise CheckpointError(f"{path} is damaged (its content does not match its digest)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:60] if text else type(err).__name__


def _where(ck: dict[str, Any]) -> str:
    return f"epoch {ck['epoch'] + 1}, step {ck['step']}" if ck["step"] else \
        f"the end of epoch {ck['epoch']}" if ck["epoch"] else "the start"


class Checkpoints:
    """The rotating pair of checkpoints of one run folder (only a writer saves)."""

    def __init__(self, folder: Path, writer: bool = True) -> None:
        self.folder = Path(folder)
        self.writer = writer
        # True when checkpoint.pt is known to be good (written or verified by this process):
        # only then may it become checkpoint.prev.pt
        self._current_good = False

    @property
    def current(self) -> Path:
        return self.folder / CURRENT

    @property
    def previous(self) -> Path:
        return self.folder / PREVIOUS

    def exists(self) -> bool:
        return self.current.is_file() or self.previous.is_file()

    def load(self) -> dict[str, Any]:
        """The newest good checkpoint; falls back to the previous one with a warning.

        Reads only: nothing in the folder changes, whatever happens.
        """
        try:
            ck = read_checkpoint(self.current)
        except CheckpointError as newest:
            try:
                ck = read_checkpoint(self.previous)
            except CheckpointError as older:
                # one line: the files by name, without the details (logged; --debug shows
                # them), a reason they share said once
                logger.debug("%s; %s", newest, older)
                first, second = (re.sub(r" \([^()]*\)$", "", str(e).replace(f"{f} ", "", 1))
                                 for e, f in ((newest, self.current), (older, self.previous)))
                why = (f"{CURRENT} and {PREVIOUS}: each {first}" if first == second else
                       f"{CURRENT} {first}, and {PREVIOUS} {second}")
                raise CheckpointError(f"cannot resume {self.folder}: {why}; use --force or a "
                                      f"new --output") from None
            logger.warning(
                "%s; resuming from %s, saved at %s: the steps after it are lost and run "
                "again (at most one epoch)", newest, PREVIOUS, _where(ck))
            self._current_good = False
            return ck
        self._current_good = True
        return ck

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` as the newest checkpoint, keeping the previous good one."""
        if not self.writer:
            return
        payload = {**state, "format": FORMAT}
        payload["digest"] = content_digest(payload)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{CURRENT}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if self._current_good and self.current.is_file():
                os.replace(self.current, self.previous)
            os.replace(tmp, self.current)
            tmp = None
            _fsync_dir(self.folder)
        except OSError as err:
            raise CLIError(f"could not write {self.current}: {err.strerror or err} (the "
                           f"checkpoints there are unchanged; free space or fix the folder, then "
                           f"continue with --resume)") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        self._current_good = True
        for stale in self.folder.glob(f".{CURRENT}.*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)
