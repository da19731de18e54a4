# darts-amend drop-in for Meituan-AutoML/DARTS- (https://github.com/Meituan-AutoML/DARTS-).
# Written by `darts-amend patch-repo` (or copied from darts-amend's integrations/
# folder); the original file, if there was one, is kept next to it as architect.py.orig.
"""Amended-DARTS architect with the upstream interface, backed by
darts_amend.adapters.darts.

Flags read from args: --amend_eta (amending coefficient, default 0.1; 0 = first-order
DARTS), --amend_estimator (default amended; `unrolled` together with --unrolled is
second-order DARTS), --amend_mode (exact | finite_difference | forward_difference),
--amend_chunks K and --amend_second_order_batch M (cost of the Hessian products),
--amend_common_random_numbers auto|on|off (one random sample per estimate).
Needs darts-amend in this environment: `pip install /path/to/darts-amend` (a checkout).
"""
from darts_amend.adapters.darts import Architect

__all__ = ["Architect"]
