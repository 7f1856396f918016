"""The default study end to end (target 15 min): opt-in, ``benchmarks/run.py --only end_to_end_default``."""

from __future__ import annotations

from bench_end_to_end import entries
from common import Context

NAME = "end_to_end_default"
OPT_IN = True


def run(ctx: Context) -> list[dict]:
    return entries(ctx, smoke=False, timeout=3 * 3600)
