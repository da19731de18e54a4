"""``python -m darts_amend.cli`` = the ``darts-amend`` command (e.g. under torchrun)."""
from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
