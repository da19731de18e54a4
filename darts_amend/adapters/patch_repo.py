"""``darts-amend patch-repo``: turn a DARTS-family checkout (DARTS, PC-DARTS, P-DARTS, DrNAS,
beta-DARTS, DARTS-PT, SmoothDARTS, DARTS-, RobustDARTS) into an Amended-DARTS one.

What it does, in order, and only after every check passed (nothing is written when a check
fails):

1. checks that PATH is a checkout of the named flavor (the files and the markers its scripts
   have);
2. backs up ``architect.py`` to ``architect.py.orig`` (once: an existing backup is never
   overwritten) and writes the drop-in ``architect.py`` (a few lines importing
   ``darts_amend.adapters.<flavor>.Architect``);
3. backs up ``train_search.py`` to ``train_search.py.orig`` (once) and inserts the ``--amend_*``
   argparse flags just before ``args = parser.parse_args()``, inside a marked block that is never
   added twice;
4. scans the checkout's scripts for lines that break on modern PyTorch / numpy and reports each
   with its fix (it does not edit them: they are the user's training scripts);
5. prints the flags to pass and, for P-DARTS, the edit that replaces its inline alpha update.

Writing is all or nothing: every file that will change must be writable (checked while
planning, so ``--dry-run`` says it too), each file is replaced through a temporary file, and a
failure half-way puts every file already written back as it was. ``plan_undo`` / ``apply_undo``
(``darts-amend patch-repo --undo``) restore the checkout byte for byte from the ``.orig``
backups and remove them (and a drop-in that replaced no file).

The logic lives here in functions that return data (``plan_patch``, ``apply_patch``,
``plan_undo``, ``apply_undo``, ``scan_compat``); the ``darts-amend patch-repo`` sub-command that
prints them is ``darts_amend.cli.patch_repo``. What each flavour's checkout looks like and what
is written into it (``FLAVORS``, ``dropin_text``, ``flags_block``, the notes) is
``darts_amend.adapters.flavors``; the names of it that Python users import from here
(docs/integrations.md) are re-exported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

from .flavors import (
    BETA_DARTS_EDIT,
    DROPIN_MARKER,
    FLAGS_BEGIN,
    FLAGS_END,
    FLAVORS,
    PDARTS_EDIT,
    UNROLLED_CHOICE,
    Flavor,
    dropin_text,
    flags_block,
    get_flavor,
)

__all__ = [
    "BETA_DARTS_EDIT",
    "CheckoutError",
    "CompatIssue",
    "FLAVORS",
    "Flavor",
    "PDARTS_EDIT",
    "PatchPlan",
    "UNROLLED_CHOICE",
    "UndoPlan",
    "apply_patch",
    "apply_undo",
    "dropin_text",
    "flags_block",
    "locate_checkout",
    "plan_patch",
    "plan_undo",
    "scan_compat",
]

BACKUP_SUFFIX = ".orig"


class CheckoutError(ValueError):
    """PATH is not a checkout of the requested flavor, or patching it would lose a user's file."""


# (regex, what breaks, the change). Checked line by line on the checkout's *.py files.
_COMPAT_RULES: tuple[tuple[str, str, str], ...] = (
    (
        r"\.cuda\(\s*async\s*=",
        "SyntaxError on Python >= 3.7 (`async` is a keyword)",
        "use `.cuda(non_blocking=True)`, or `.to(device, non_blocking=True)` to also run on CPU",
    ),
    (
        r"\.data\[0\]",
        "IndexError: invalid index of a 0-dim tensor (PyTorch >= 0.5)",
        "use `.item()`",
    ),
    (
        r"np\.sum\((?!\s*\[).*\bfor\b.*\bin\b",
        "TypeError with numpy >= 2: np.sum() of a generator",
        "use the builtin `sum(...)` (or np.sum over a list)",
    ),
    (
        r"\]\.view\(-1\)",
        "RuntimeError: view() of a non-contiguous slice (PyTorch >= 1.x)",
        "use `.reshape(-1)`",
    ),
    (
        r"volatile\s*=\s*True",
        "no effect since PyTorch 0.4 (UserWarning): evaluation builds autograd graphs",
        "drop `Variable(...)` and wrap the evaluation loop in `with torch.no_grad():`",
    ),
    (
        r"torch\.cuda\.\w*Tensor\(",
        "needs a CUDA device",
        "create the tensor on the input's device, e.g. `torch.empty(n, 1, 1, 1, device=x.device)`",
    ),
    (
        r"torch\.cuda\.is_available\(\)",
        "the script exits when there is no GPU",
        "remove the `sys.exit(1)` branch to run on CPU, and pick `device = torch.device('cuda' if "
        "torch.cuda.is_available() else 'cpu')`",
    ),
    (
        r"torch\.cuda\.set_device\(",
        "fails without CUDA",
        "guard it with `if torch.cuda.is_available():`",
    ),
    (
        r"\.cuda\(",
        "fails without a GPU",
        "use `.to(device)` with the device chosen once at start-up",
    ),
    (
        r"\.get_lr\(\)",
        "since PyTorch 1.4, get_lr() after scheduler.step() re-applies the schedule "
        "(wrong value, UserWarning); the DARTS loops pass this lr as the unrolled step's xi",
        "use `scheduler.get_last_lr()[0]`",
    ),
    (
        r"nn\.utils\.clip_grad_norm\(",
        "deprecated (FutureWarning)",
        "use `nn.utils.clip_grad_norm_`",
    ),
    (
        r"torch\.load\((?!.*map_location)",
        "GPU-saved checkpoints do not load on a CPU-only machine",
        "pass `map_location=device` (and `weights_only=True` for state dicts)",
    ),
)


@dataclasses.dataclass(frozen=True)
class CompatIssue:
    path: Path
    line: int
    text: str
    problem: str
    fix: str


@dataclasses.dataclass
class PatchPlan:
    """What ``apply_patch`` will do; every field is decided before anything is written."""

    flavor: Flavor
    directory: Path  # the folder holding train_search.py
    architect: Path
    architect_action: str  # "write" | "update" | "keep"
    architect_backup: Path | None  # backup to create (None: none needed or one exists already)
    search_script: Path
    flags_action: str  # "insert" | "keep"
    search_backup: Path | None
    new_search_text: str | None

    @property
    def changes_anything(self) -> bool:
        return self.architect_action != "keep" or self.flags_action != "keep"




def _inside(directory: Path, relative: str) -> Path:
    """``directory / relative`` with ``..`` folded (the forks keep the architect elsewhere)."""
    return Path(os.path.normpath(directory / relative))


def _read(path: Path) -> str:
    """The file's text with its line endings as they are (a CRLF file stays CRLF)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckoutError(f"{path} is not UTF-8 text; refusing to edit it") from None


def locate_checkout(path: str | Path, flavor: str) -> Path:
    """The folder of ``path`` holding the flavor's train_search.py; CheckoutError (naming what is
    missing)."""
    f = get_flavor(flavor)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckoutError(f"{root} is not a directory")
    candidates = [root / f.subdir, root] if f.subdir else [root]
    directory = next((c for c in candidates if (c / "train_search.py").is_file()), None)
    where = f"{root}/{f.subdir}" if f.subdir else str(root)
    if directory is None:
        hint = (
            "; it looks like quark0/darts: use --flavor darts"
            if f.name != "darts" and (root / "cnn" / "train_search.py").is_file()
            else ""
        )
        raise CheckoutError(
            f"{where} has no train_search.py: not a {f.repo} checkout (--flavor {f.name}){hint}"
        )
    model_file = directory / f.model_file
    if not model_file.is_file():
        raise CheckoutError(
            f"{directory} has no {f.model_file}: not a {f.repo} checkout (--flavor {f.name})"
        )
    search, model = _read(directory / "train_search.py"), _read(model_file)
    missing = [m for m in f.search_markers if m not in search]
    if missing:
        raise CheckoutError(
            f"{directory / 'train_search.py'} does not look like {f.repo}'s: "
            f"missing {', '.join(repr(m) for m in missing)} (--flavor {f.name})"
        )
    missing = [m for m in f.model_markers if m not in model]
    if missing:
        raise CheckoutError(
            f"{model_file} does not look like {f.repo}'s: missing "
            f"{', '.join(repr(m) for m in missing)} (--flavor {f.name})"
        )
    clash = [m for m in f.model_antimarkers if m in model]
    if clash:
        hint = "; it looks like PC-DARTS: use --flavor pc_darts" if "betas_normal" in clash else ""
        raise CheckoutError(
            f"{model_file} has {', '.join(repr(m) for m in clash)}, which {f.repo} does not{hint}"
        )
    architect = _inside(directory, f.architect_file)
    if f.has_architect and not architect.is_file():
        raise CheckoutError(
            f"{directory} has no {f.architect_file}: not a {f.repo} checkout (--flavor {f.name})"
        )
    if architect.is_file() and not _read(architect).startswith(DROPIN_MARKER):
        text = _read(architect)
        wrong = [m for m in f.architect_markers if m not in text]
        wrong += [m for m in f.architect_antimarkers if m in text]
        if wrong:
            raise CheckoutError(
                f"{architect} does not look like {f.repo}'s (marker {wrong[0]!r}); check "
                f"--flavor (choices: {', '.join(FLAVORS)})"
            )
    return directory


def _backup_for(path: Path, current: str) -> Path | None:
    """The backup to write before replacing ``path`` (None if an identical backup exists); refuses
    to lose data."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if not backup.exists():
        return backup
    if _read(backup) == current:
        return None
    raise CheckoutError(
        f"{path} differs from its backup {backup} and is not darts-amend's version; "
        f"move the backup away (or restore {path.name} from it) and run patch-repo again"
    )


def _insert_flags(text: str, path: Path) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = re.match(r"(\s*)(?:self\.)?args\s*=\s*parser\.parse_args\(", line)
        if match:
            block = flags_block(match.group(1))
            if line.endswith("\r\n"):  # keep the file's line endings
                block = block.replace("\n", "\r\n")
            return "".join(lines[:i]) + block + "".join(lines[i:])
    raise CheckoutError(
        f"{path} has no `args = parser.parse_args()` line to put the --amend_* flags before"
    )


def plan_patch(path: str | Path, flavor: str) -> PatchPlan:
    """Decide everything ``apply_patch`` will do; raises CheckoutError before anything is
    written."""
    f = get_flavor(flavor)
    directory = locate_checkout(path, flavor)
    architect = _inside(directory, f.architect_file)
    wanted = dropin_text(flavor)
    backup: Path | None = None
    if not architect.exists():
        action = "write"
    else:
        current = _read(architect)
        if current == wanted:
            action = "keep"
        elif current.startswith(DROPIN_MARKER):
            action = "update"  # an older drop-in: nothing of the user's to back up
        else:
            if f.has_architect and "class Architect" not in current:
                raise CheckoutError(
                    f"{architect} has no `class Architect`: it is neither {f.repo}'s architect "
                    "nor darts-amend's drop-in; refusing to replace it"
                )
            action = "write"
            backup = _backup_for(architect, current)
    search = directory / f.flags_file
    search_text = _read(search)
    if FLAGS_BEGIN in search_text:
        flags_action, search_backup, new_text = "keep", None, None
    else:
        new_text = _insert_flags(search_text, search)
        flags_action, search_backup = "insert", _backup_for(search, search_text)
    plan = PatchPlan(
        f, directory, architect, action, backup, search, flags_action, search_backup, new_text
    )
    _check_writable(directory, [p for p, _ in _patch_changes(plan)])
    return plan


def _check_writable(directory: Path, paths: list[Path]) -> None:
    """CheckoutError naming the first file or folder that cannot be written (nothing is)."""
    if not paths:
        return
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckoutError(
            f"cannot write to {directory} (no write permission, or a read-only file system); "
            "nothing was changed"
        )
    for path in paths:
        if path.exists() and not os.access(path, os.W_OK):
            raise CheckoutError(
                f"cannot write {path} (no write permission); nothing was changed"
            )


def _patch_changes(plan: PatchPlan) -> list[tuple[Path, bytes | None]]:
    """The files a plan writes, with their new bytes, in order (backups first)."""
    changes: list[tuple[Path, bytes | None]] = []
    if plan.architect_action != "keep":
        if plan.architect_backup is not None:
            changes.append((plan.architect_backup, plan.architect.read_bytes()))
        changes.append((plan.architect, dropin_text(plan.flavor.name).encode("utf-8")))
    if plan.flags_action == "insert":
        assert plan.new_search_text is not None
        if plan.search_backup is not None:
            changes.append((plan.search_backup, plan.search_script.read_bytes()))
        changes.append((plan.search_script, plan.new_search_text.encode("utf-8")))
    return changes


def _replace(path: Path, data: bytes, mode_from: Path | None) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it (keeping the mode of
    ``mode_from`` when it exists)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode_from is not None and mode_from.exists():
            shutil.copymode(mode_from, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_all_or_none(changes: list[tuple[Path, bytes | None, Path | None]]) -> None:
    """Carry out ``(path, new bytes or None to delete, take the mode of)``; on any failure put
    every file already changed back as it was and raise CheckoutError."""
    done: list[tuple[Path, bytes | None, int]] = []
    try:
        for path, data, mode_from in changes:
            old = path.read_bytes() if path.exists() else None
            mode = path.stat().st_mode if old is not None else 0
            if data is None:
                path.unlink(missing_ok=True)
            else:
                _replace(path, data, mode_from if mode_from is not None else path)
            done.append((path, old, mode))
    except OSError as err:
        for path, old, mode in reversed(done):
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    _replace(path, old, None)
                    os.chmod(path, mode)
            except OSError:  # pragma: no cover - the folder broke under us
                pass
        failed = getattr(err, "filename", None) or "a file"
        raise CheckoutError(
            f"could not write {failed}: {err.strerror or err}; the files already written were "
            "put back, nothing was changed"
        ) from None


def apply_patch(plan: PatchPlan) -> list[str]:
    """Carry out a plan, all files or none (CheckoutError, every file as it was); returns one
    line per change made (empty when the checkout was already patched)."""
    done: list[str] = []
    changes: list[tuple[Path, bytes | None, Path | None]] = []
    for path, data in _patch_changes(plan):
        source = plan.architect if path == plan.architect_backup else (
            plan.search_script if path == plan.search_backup else None)
        changes.append((path, data, source))
        if source is not None:
            done.append(f"backed up {source.name} -> {path.name}")
        elif path == plan.architect:
            done.append(
                f"{'updated' if plan.architect_action == 'update' else 'wrote'} drop-in "
                f"{plan.architect}"
            )
        else:
            done.append(
                f"added --amend_eta/--amend_estimator/--amend_mode to {plan.search_script}"
            )
    _write_all_or_none(changes)
    return done


@dataclasses.dataclass
class UndoPlan:
    """What ``apply_undo`` will do: ``changes`` are (file, bytes to restore or None to delete,
    the file whose mode to keep), ``lines`` say it in words, ``notes`` what stays."""

    directory: Path
    changes: list[tuple[Path, bytes | None, Path | None]]
    lines: list[str]
    notes: list[str]


def _undo_directory(path: str | Path, flavor: str | None) -> Path:
    if flavor is not None:
        return locate_checkout(path, flavor)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckoutError(f"{root} is not a directory")
    return root


_SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", "data", "runs"}


def _patched_files(root: Path) -> list[Path]:
    """The files under ``root`` that patch-repo may have written: drop-ins, files with the flags
    block, and the targets of ``.orig`` backups (a fork keeps them in several folders)."""
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(".py" + BACKUP_SUFFIX):
                found.add(path.with_name(name[: -len(BACKUP_SUFFIX)]))
            elif name.endswith(".py"):
                text = _read(path)
                if text.startswith(DROPIN_MARKER) or FLAGS_BEGIN in text:
                    found.add(path)
    return sorted(found)


def _dropin_flavor(text: str) -> Flavor | None:
    match = re.search(r"^from darts_amend\.adapters\.(\w+) import Architect", text, re.M)
    return next((f for f in FLAVORS.values() if match and f.module == match.group(1)), None)


def _remove_flags(text: str) -> str | None:
    """``text`` without the inserted flags block (None when it has no complete block)."""
    lines = text.splitlines(keepends=True)
    begin = next((i for i, ln in enumerate(lines) if ln.strip() == FLAGS_BEGIN), None)
    end = next((i for i, ln in enumerate(lines) if ln.strip() == FLAGS_END), None)
    if begin is None or end is None or end < begin:
        return None
    return "".join(lines[:begin] + lines[end + 1:])


def plan_undo(path: str | Path, flavor: str | None = None) -> UndoPlan:
    """Decide how to restore a patched checkout as it was before ``patch-repo``; raises
    CheckoutError (nothing written) when a file cannot be restored without losing a change.

    Flavour-agnostic: every drop-in, every file holding the ``--amend_*`` flags block and every
    ``.orig`` backup under the checkout (forks keep their architect and flags files in different
    folders) is restored from its backup, stripped of the block, or removed when patch-repo
    created it."""
    directory = _undo_directory(path, flavor)
    root = Path(path).expanduser() if flavor is not None else directory
    changes: list[tuple[Path, bytes | None, Path | None]] = []
    lines: list[str] = []
    notes: list[str] = []
    for target in _patched_files(root):
        rel = target.relative_to(root).as_posix()
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        old = backup.read_bytes() if backup.exists() else None
        text = _read(target) if target.exists() else None
        stripped = None if text is None else _remove_flags(text)
        if text is not None and text.startswith(DROPIN_MARKER):
            if old is not None:
                changes += [(target, old, backup), (backup, None, None)]
                lines.append(f"restored {rel} from {backup.name}")
            else:
                f = _dropin_flavor(text)
                if f is None or f.has_architect:
                    raise CheckoutError(
                        f"{target} is darts-amend's drop-in but there is no {backup.name} to "
                        f"restore; get the upstream file back with git (git checkout {rel})"
                    )
                changes.append((target, None, None))
                lines.append(f"removed drop-in {rel} ({f.repo} has no {target.name})")
        elif stripped is not None:
            data = stripped.encode("utf-8")
            if old is not None and old == data:
                changes += [(target, old, target), (backup, None, None)]
                lines.append(f"restored {rel} from {backup.name}")
            else:
                changes.append((target, data, target))
                lines.append(f"removed the --amend_* flags from {rel}")
                if old is not None:
                    notes.append(f"kept {backup.name}: {rel} was edited after patching, so the "
                                 "backup is not the file any more")
        elif old is not None:
            if text is None:
                changes += [(target, old, backup), (backup, None, None)]
                lines.append(f"restored {rel} from {backup.name}")
            elif target.read_bytes() == old:  # restored by hand already
                changes.append((backup, None, None))
                lines.append(f"removed {backup.name} (identical to {target.name})")
            else:
                raise CheckoutError(
                    f"{target} is not darts-amend's and differs from {backup.name}; "
                    "refusing to choose between them"
                )
    _check_writable(directory, [p for p, _, _ in changes])
    return UndoPlan(directory, changes, lines, notes)


def apply_undo(plan: UndoPlan) -> list[str]:
    """Carry out an undo plan, all files or none; returns its lines (empty: nothing to undo)."""
    _write_all_or_none(plan.changes)
    return list(plan.lines)


def scan_compat(directory: str | Path) -> list[CompatIssue]:
    """Lines of the checkout's scripts that break (or silently change) on modern PyTorch / numpy."""
    issues: list[CompatIssue] = []
    for path in sorted(Path(directory).glob("*.py")):
        text = _read(path)
        if text.startswith(DROPIN_MARKER):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            code = line.split("#", 1)[0]
            for pattern, problem, fix in _COMPAT_RULES:
                if re.search(pattern, code):
                    issues.append(CompatIssue(path, number, line.strip(), problem, fix))
                    break  # one report per line: the first rule is the most severe
    return issues
