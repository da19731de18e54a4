"""The ``darts-amend`` command line."""
from __future__ import annotations


def main(argv=None) -> int:  # replaced by the CLI issue
    raise SystemExit("darts-amend: no sub-commands yet")
