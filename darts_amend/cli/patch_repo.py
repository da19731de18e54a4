"""``darts-amend patch-repo``: the command-line face of :mod:`darts_amend.adapters.patch_repo`.

The checks and edits live in the library module (functions that return data); this module
registers the sub-command and prints what they did, as only the CLI writes output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from darts_amend.adapters.flavors import FLAVORS, PDARTS_EDIT
from darts_amend.adapters.patch_repo import (
    CheckoutError,
    apply_patch,
    apply_undo,
    plan_patch,
    plan_undo,
    scan_compat,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``patch-repo`` on the CLI's sub-parsers; the CLI dispatches to ``run``."""
    parser = subparsers.add_parser(
        "patch-repo",
        help="swap the architect of a DARTS-family checkout (DARTS, PC-DARTS, P-DARTS, DrNAS, "
        "beta-DARTS, DARTS-PT, SmoothDARTS, DARTS-, RobustDARTS) for Amended-DARTS",
        description="Back up the checkout's architect.py, write darts-amend's drop-in, "
        "add the --amend_* "
        "flags to train_search.py (once), and report script lines that break on modern "
        "PyTorch / numpy.",
    )
    parser.add_argument(
        "path", help="the checkout (repository root; for quark0/darts the cnn/ folder works too)"
    )
    parser.add_argument(
        "--flavor",
        type=_flavor,
        choices=sorted(FLAVORS),
        help="which upstream repository PATH is a checkout of (needed unless --undo; "
        "'_' and '-' are the same: beta_darts = beta-darts)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the checkout (also that every file to change is writable) and show what "
        "would change, without writing anything",
    )
    parser.add_argument(
        "--undo",
        action="store_true",
        help="restore the checkout as it was before patch-repo, byte for byte, from the .orig "
        "backups (which are removed); all files or none",
    )
    parser.set_defaults(func=run)
    return parser


def _flavor(value: str) -> str:
    """The flavour name whatever the separator: the adapters and integrations/ folders spell
    them with '_' (beta_darts), the flavours partly with '-' (beta-darts); both are accepted.
    An unknown name is returned unchanged for argparse's 'invalid choice' error."""
    key = value.strip().lower().replace("_", "-")
    by_key = {name.replace("_", "-"): name for name in FLAVORS}
    return by_key.get(key, value)


def run(args: argparse.Namespace) -> int:
    """Execute ``patch-repo``; 0 on success (also when already patched), 2 when PATH is refused."""
    if getattr(args, "undo", False):
        return _undo(args)
    if args.flavor is None:
        print("darts-amend: error: patch-repo needs --flavor (or --undo) (see 'darts-amend "
              "patch-repo --help')", file=sys.stderr)
        return 2
    try:
        plan = plan_patch(args.path, args.flavor)
    except (CheckoutError, OSError) as exc:
        print(f"darts-amend patch-repo: refusing: {_one_line(exc)}", file=sys.stderr)
        return 2
    f = plan.flavor
    if args.dry_run:
        print(f"dry run: {plan.directory} is a {f.repo} checkout; nothing written.")
        if plan.architect_action != "keep":
            print(
                f"  would {plan.architect_action} {plan.architect}"
                + (f" (backup {plan.architect_backup.name})" if plan.architect_backup else "")
            )
        if plan.flags_action == "insert":
            print(f"  would add the --amend_* flags to {plan.search_script}")
        if not plan.changes_anything:
            print("  already patched")
    else:
        try:
            done = apply_patch(plan)
        except CheckoutError as exc:
            print(f"darts-amend patch-repo: refusing: {_one_line(exc)}", file=sys.stderr)
            return 2
        if done:
            print(f"patched {plan.directory} ({f.repo}):")
            for line in done:
                print(f"  {line}")
        else:
            print(f"{plan.directory} is already patched ({f.repo}): nothing to do")
    issues = scan_compat(plan.directory)
    if issues:
        print(
            f"\n{len(issues)} line(s) that break or misbehave on modern PyTorch / numpy "
            "(not edited):"
        )
        for issue in issues:
            print(
                f"  {issue.path.name}:{issue.line}: {issue.text}\n"
                f"      {issue.problem}\n      fix: {issue.fix}"
            )
    if f.name == "pdarts":
        print("\nP-DARTS has no architect: make this edit by hand.\n" + PDARTS_EDIT)
    if f.notes:
        print("\n" + f.notes.rstrip("\n"))
    command = f.run_command.format(dir=plan.directory)
    # the forks' commands start at the repository root: fold "<dir>/../.." into a plain path
    command = re.sub(r"^cd (\S+)", lambda m: "cd " + os.path.normpath(m.group(1)), command)
    print("\nthen run:\n  " + command)
    from darts_amend.estimators import ESTIMATORS

    print(
        "options: --amend_eta ETA (0 = first-order DARTS), "
        f"--amend_estimator {{{','.join(ESTIMATORS)}}}, "
        "--amend_mode {exact,finite_difference,forward_difference}, "
        "--amend_chunks K, --amend_second_order_batch M, "
        "--amend_common_random_numbers {auto,on,off}"
    )
    if f.name != "pdarts":
        print("second-order DARTS through darts-amend: --amend_estimator unrolled --unrolled")
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _undo(args: argparse.Namespace) -> int:
    try:
        plan = plan_undo(args.path, args.flavor)
        if not plan.changes:
            print(f"{plan.directory} is not patched: nothing to undo")
            return 0
        if args.dry_run:
            print(f"dry run: would undo patch-repo in {plan.directory}; nothing written.")
            lines = [f"would undo: {line}" for line in plan.lines]
        else:
            lines = apply_undo(plan)
            print(f"undid patch-repo in {plan.directory}:")
    except (CheckoutError, OSError) as exc:
        print(f"darts-amend patch-repo: refusing: {_one_line(exc)}", file=sys.stderr)
        return 2
    for line in lines + plan.notes:
        print(f"  {line}")
    return 0
