"""Brute-force reference of the search: Python loops over configurations, full confusion matrices summed.

Slow and obvious on purpose: the tests hold the vectorised search (space.py, families.py, optimizer.py) to it on random
small memos. It shares with the fast path only the definitions (Table 1's formulas, the threshold grids, the
objective, the enumeration order), never the arithmetic over the memo.
"""

import itertools

import numpy as np

from mess_edge.search.costs import cost_anytime, cost_budgeted, cost_final_only, cost_input_dependent, cost_upsample
from mess_edge.search.space import DEFAULT_MAX_EXITS_INPUT_DEPENDENT, Config, Grid, pixel_bins


def reference_miou(confusion):
    """mIoU (fraction) of one C x C confusion matrix (rows = truth); classes with an empty union are skipped."""
    total, count = 0.0, 0
    for c in range(confusion.shape[0]):
        tp = int(confusion[c, c])
        union = int(confusion[c, :].sum()) + int(confusion[:, c].sum()) - tp
        if union > 0:
            total += tp / union
            count += 1
    return total / count if count else float("nan")


def reference_confidence(memo, policy, th_pix, h, i):
    """Image confidence of head h on image i: fraction of pixels with confidence >= th_pix (or mean_conf)."""
    if policy == "mean":
        return float(memo.mean_conf[h, i])
    hist = memo.hist_edge if policy == "edge" else memo.hist_raw
    j = int(np.argmin(np.abs(memo.hist_bins - th_pix)))
    return int(hist[h, i, j:].sum()) / int(memo.n_pixels[h, i])


def enumerate_configs(memo, n_points, setting, max_exits=None, policy="edge", grid=None):
    """Every configuration of ``setting`` in the canonical order (see space.py)."""
    grid = Grid() if grid is None else grid
    heads_at = [[h for h in range(memo.n_heads) if memo.head_exit[h] == p] for p in range(n_points)]
    points = [p for p in range(n_points) if heads_at[p]]
    if setting in ("final-only", "budgeted", "input-dependent"):
        yield Config((), (), None, True)
    if setting == "budgeted":
        for h in range(memo.n_heads):
            yield Config((h,), (), None, False)
    if setting not in ("anytime", "input-dependent"):
        return
    if max_exits is None:
        max_exits = len(points) if setting == "anytime" else DEFAULT_MAX_EXITS_INPUT_DEPENDENT
    th_pix = [None if b is None else float(memo.hist_bins[b]) for b in pixel_bins(memo, grid, policy)]
    for k in range(1, min(max_exits, len(points)) + 1):
        for chosen in itertools.combinations(points, k):
            if setting == "anytime":
                for heads in itertools.product(*[heads_at[p] for p in chosen]):
                    yield Config(tuple(heads), (), None, True)
                continue
            for pix in th_pix:
                axes = [[(h, t) for h in heads_at[p] for t in grid.th_img] for p in chosen]
                for options in itertools.product(*axes):
                    yield Config(tuple(h for h, _ in options), tuple(float(t) for _, t in options), pix, True)


def reference_score(memo, costs, setting, config, policy="edge", anytime_accuracy="final"):
    """(cost, mIoU fraction) of one configuration, image by image."""
    n_img, final = memo.n_images, memo.n_heads
    span = costs.span
    exits = [(int(memo.head_exit[h]), costs.head[h]) for h in config.heads]
    if setting == "anytime":
        cost = cost_anytime(span, exits) + costs.upsample[final]
        mious = [reference_miou(memo.confusion[h].sum(axis=0)) for h in list(config.heads) + [final]]
        return cost, (mious[-1] if anytime_accuracy == "final" else min(mious))
    if not config.final:  # budgeted, stopping at an early exit
        h = config.heads[0]
        cost = cost_budgeted(span, int(memo.head_exit[h]), costs.head[h]) + costs.upsample[h]
        return cost, reference_miou(memo.confusion[h].sum(axis=0))
    taken = []
    for i in range(n_img):
        exit_taken = final
        for h, th in zip(config.heads, config.th_img):
            if reference_confidence(memo, policy, config.th_pix, h, i) >= th:
                exit_taken = h
                break
        taken.append(exit_taken)
    total = np.zeros(memo.confusion.shape[2:], dtype=np.int64)
    for i, h in enumerate(taken):
        total += memo.confusion[h, i]
    if not config.heads:
        return cost_final_only(span) + costs.upsample[final], reference_miou(total)
    remaining, still = [], n_img
    for h in config.heads:
        still -= taken.count(h)
        remaining.append(still / n_img)
    fractions, p_prev = [], 1.0
    for p in remaining:
        fractions.append(p_prev - p)
        p_prev = p
    fractions.append(p_prev)
    ups = [costs.upsample[h] for h in config.heads] + [costs.upsample[final]]
    cost = cost_input_dependent(span, exits, remaining) + cost_upsample(fractions, ups)
    return cost, reference_miou(total)


def brute_force_search(memo, costs, setting, objective, max_exits=None, policy="edge", grid=None,
                       anytime_accuracy="final"):
    """(best Config or None, its cost, its mIoU, [(cost, mIoU)] of every configuration in canonical order)."""
    configs = list(enumerate_configs(memo, len(costs.segment), setting, max_exits, policy, grid))
    scored = [reference_score(memo, costs, setting, c, policy, anytime_accuracy) for c in configs]
    final_miou = reference_miou(memo.confusion[memo.n_heads].sum(axis=0))

    def n_exits(c):
        return len(c.heads)

    def acc(m):
        return -np.inf if m != m else m

    if objective.budget is not None:
        ok = [i for i, (c, _) in enumerate(scored) if c <= objective.budget]
        key = lambda i: (-acc(scored[i][1]), scored[i][0], n_exits(configs[i]), i)  # noqa: E731
    else:
        th = objective.min_miou if objective.min_miou is not None else final_miou - objective.max_drop
        ok = [i for i, (_, m) in enumerate(scored) if acc(m) >= th]
        key = lambda i: (scored[i][0], -acc(scored[i][1]), n_exits(configs[i]), i)  # noqa: E731
    if not ok:
        return None, None, None, scored
    best = min(ok, key=key)
    return configs[best], scored[best][0], scored[best][1], scored
