"""The families of a setting's space (space.py's fixed-size ones and dynamic.py's input-dependent ones).

This module sits above both, so neither imports the other.
"""

import itertools

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.dynamic import InputDependent
from mess_edge.search.space import SETTINGS, Anytime, Budgeted, FinalOnly, resolve_max_exits


def families(ctx, setting, max_exits):
    """The families of ``setting``'s space in canonical order; refuses spaces over ctx.grid.max_configs.

    final-only: the final exit. budgeted: the final exit, or one trained head without the final. anytime: 1 to
    max_exits heads (at most one per exit point) plus the final (without an early exit it would be final-only).
    input-dependent: 0 to max_exits heads, each with a th_img, plus the final and one th_pix; the empty set is
    the final-only network, so the search never returns worse than final-only.
    """
    if setting not in SETTINGS:
        raise MessError("got setting {!r}; expected one of {}".format(setting, ", ".join(SETTINGS)))
    if setting == "final-only":
        return [FinalOnly(ctx)]
    if setting == "budgeted":
        return [FinalOnly(ctx)] + ([Budgeted(ctx)] if ctx.final else [])
    if not ctx.points:
        raise MessError("got a memo without early-exit heads; expected at least one for the {} setting; "
                        "try --setting final-only".format(setting))
    max_exits = resolve_max_exits(ctx, setting, max_exits)
    combos = [p for k in range(1, min(max_exits, len(ctx.points)) + 1) for p in itertools.combinations(ctx.points, k)]
    per_option = 1 if setting == "anytime" else len(ctx.th_img)
    n_pix = 1 if setting == "anytime" else len(ctx.bins)
    total = sum(int(np.prod([len(ctx.heads_at[p]) * per_option for p in c])) * n_pix for c in combos)
    if total > ctx.grid.max_configs:
        raise MessError("got {:,} {} configurations with --max-exits {}; expected at most {:,}; try --max-exits {}"
                        .format(total, setting, max_exits, ctx.grid.max_configs, max(1, max_exits - 1)))
    if setting == "anytime":
        return [Anytime(ctx, c) for c in combos]
    return [FinalOnly(ctx)] + [InputDependent(ctx, c, q) for c in combos for q in range(len(ctx.bins))]
