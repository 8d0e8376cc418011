"""The configuration space of eq. 4 for each inference setting: enumeration and Table 1 costs.

The space is cut into *families* that share a structure: the selected exit points (and, input-dependent, the
pixel threshold). Within a family a configuration is a point of a grid [A_1, ..., A_k], one axis per selected
exit, whose entries are that exit point's trained heads (input-dependent: head x image threshold, head-major).
A family computes the cost of its whole grid at once (``costs``, flat), and the mIoU of any block of it
(``score(rows, cols)`` over the grid seen as [A_1, A_2 * .. * A_k] = ``shape2``). The input-dependent family,
where the work is, lives in dynamic.py.

The grid order (families by number of exits, then exit points, then pixel threshold; inside, axis 1 major) is
the canonical enumeration order; the brute-force reference enumerates in the same order.
"""

import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.costs import cost_final_only
from mess_edge.search.memo import POLICIES

SETTINGS = ("final-only", "budgeted", "anytime", "input-dependent")
ANYTIME_ACCURACY = ("final", "min")  # the final exit's mIoU (default), or the worst of the selected exits + final
DEFAULT_MAX_EXITS_INPUT_DEPENDENT = 2  # 3 exits of 16 heads x 11 thresholds would be ~2e8 configurations per point set


@dataclass(frozen=True)
class Grid:
    """The gridded thresholds of the input-dependent exit policy and the guard on the space size.

    Each selected exit has its own th_img from ``th_img``; one th_pix (snapped to the memo's histogram bin
    edges) is shared by all exits: the memo only holds histograms, so th_pix must be a bin edge anyway, and a
    per-exit th_pix would multiply the space by 10 per exit for little gain. The search is optimal within
    this grid, not between its points.
    """

    th_img: tuple = tuple(round(0.5 + 0.05 * k, 2) for k in range(11))  # image thresholds 0.50..1.00, per exit
    th_pix: tuple = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # pixel thresholds 0.50..0.95, shared by exits
    max_configs: int = 20000000  # refuse spaces larger than this (costs are held for every configuration)


@dataclass(frozen=True)
class Config:
    """One configuration: selected early exits (memo head indices, backbone order) and the exit policy."""

    heads: tuple  # memo head indices
    th_img: tuple  # image threshold per selected exit (input-dependent), else ()
    th_pix: Optional[float]  # shared pixel threshold (input-dependent with edge/raw policy), else None
    final: bool  # False only for a budgeted configuration that stops at an early exit


def pixel_bins(memo, grid, policy):
    """Sorted distinct memo bin indices nearest to grid.th_pix (never the edge 1.0); [None] for policy mean."""
    if policy == "mean":
        return [None]
    edges = memo.hist_bins[:-1]
    return sorted({int(np.argmin(np.abs(edges - t))) for t in grid.th_pix})


class Context:
    """What every family reads: the memo's stats and confidences, the costs, the grids."""

    def __init__(self, memo, costs, policy, grid, anytime_accuracy="final"):
        if policy not in POLICIES:
            raise MessError("got policy {!r}; expected one of {}".format(policy, ", ".join(POLICIES)))
        if anytime_accuracy not in ANYTIME_ACCURACY:
            raise MessError("got anytime accuracy {!r}; expected one of {}".format(anytime_accuracy,
                                                                                  ", ".join(ANYTIME_ACCURACY)))
        n = len(costs.segment)
        if len(costs.head) != memo.n_heads or (memo.n_heads and int(memo.head_exit.max()) >= n):
            raise MessError("got a cost table of {} heads and {} segments for a memo of {} heads at exit points {}; "
                            "expected the same heads; try building the costs from this memo".format(
                                len(costs.head), n, memo.n_heads, sorted(set(memo.head_exit.tolist()))))
        self.memo, self.costs, self.policy, self.grid = memo, costs, policy, grid
        self.anytime_accuracy = anytime_accuracy
        self.n_points, self.n_images, self.final = n, memo.n_images, memo.n_heads
        self.heads_at = [np.flatnonzero(memo.head_exit == p) for p in range(n)]
        self.points = tuple(p for p in range(n) if len(self.heads_at[p]))
        self.span = costs.span  # [N+2, N+2] backbone spans (costs.backbone_spans); column N+1 ends in the final
        self.head_cost = np.asarray(costs.head, dtype=np.float64)
        self.ups = np.asarray(costs.upsample, dtype=np.float64)
        self.final_only_cost = cost_final_only(self.span) + float(self.ups[-1])
        self.head_miou = memo.head_miou()
        self.th_img = np.asarray(grid.th_img, dtype=np.float64)
        self.bins = pixel_bins(memo, grid, policy)
        self.th_pix = [None if b is None else float(memo.hist_bins[b]) for b in self.bins]
        # Sums of pixel counts are exact in float32 below 2**24 (twice BLAS speed); else float64.
        self.dtype = np.float32 if memo.exact_float32() else np.float64
        self.stats = memo.stats(self.dtype)  # [H+1, I, 3C]
        self.stats_t = np.ascontiguousarray(self.stats.transpose(1, 0, 2))  # [I, H+1, 3C]
        self._cache = {}

    def gates(self, point, q):
        """(heads [A], threshold index [A], G bool [A, I]): option a = (head, th_img) at ``point`` lets image i out."""
        key = ("gate", point, q)
        if key not in self._cache:
            heads = np.repeat(self.heads_at[point], len(self.th_img))
            t_idx = np.tile(np.arange(len(self.th_img)), len(self.heads_at[point]))
            conf = self.memo.image_confidence(self.policy, self.bins[q])
            self._cache[key] = (heads, t_idx, conf[heads] >= self.th_img[t_idx][:, None])
        return self._cache[key]

    def leave_sums(self, point, q):
        """E [A, 3C]: stats summed over the images that leave at option a (G[a] @ S[head(a)])."""
        key = ("leave", point, q)
        if key not in self._cache:
            heads, _, g = self.gates(point, q)
            e = np.empty((len(heads), self.stats.shape[2]), dtype=self.dtype)
            for h in np.unique(heads):
                rows = np.flatnonzero(heads == h)
                e[rows] = g[rows].astype(self.dtype) @ self.stats[h]
            self._cache[key] = e
        return self._cache[key]


def axis_view(values, j, k):
    """Reshape a 1-D array for axis j of a k-axis grid."""
    return np.reshape(values, [1] * j + [-1] + [1] * (k - j - 1))


class FinalOnly:
    """The final exit alone (final-only; also the budgeted and input-dependent spaces' no-early-exit option)."""

    k, size, shape2 = 0, 1, (1, 1)

    def __init__(self, ctx):
        self.ctx = ctx

    def costs(self):
        return np.array([self.ctx.final_only_cost])

    def score(self, rows, cols):
        return np.full((len(rows), len(cols)), self.ctx.head_miou[-1])

    def config(self, j):
        return Config((), (), None, True)

    def descriptions(self):
        return ["final"]


class Budgeted:
    """One early exit, every trained head: cost(b_1:K_n) + head + its upsample; mIoU of that head on all images."""

    k = 1

    def __init__(self, ctx):
        self.ctx, self.size, self.shape2 = ctx, ctx.final, (ctx.final, 1)

    def costs(self):
        c = self.ctx
        return c.span[0, c.memo.head_exit + 1] + c.head_cost + c.ups[:-1]

    def score(self, rows, cols):
        return np.repeat(self.ctx.head_miou[rows][:, None], len(cols), axis=1)

    def config(self, j):
        return Config((int(j),), (), None, False)

    def descriptions(self):
        return [self.ctx.memo.head_label(h) for h in range(self.size)]


class Anytime:
    """One head at each of ``points``, then the final: Table 1's anytime cost; mIoU per ctx.anytime_accuracy."""

    def __init__(self, ctx, points):
        self.ctx, self.points, self.k = ctx, points, len(points)
        self.axes = [ctx.heads_at[p] for p in points]
        self.shape = tuple(len(a) for a in self.axes)
        self.size = int(np.prod(self.shape))
        self.shape2 = (self.shape[0], self.size // self.shape[0])

    def costs(self):
        c = self.ctx
        # Same operations, in the same order, as costs.cost_anytime (+ the final's upsample).
        total, prev = 0.0, -1
        for j, (n, a) in enumerate(zip(self.points, self.axes)):
            total = total + axis_view(c.span[prev + 1, n + 1] + c.head_cost[a], j, self.k)
            prev = n
        total = total + c.span[prev + 1, -1]
        return np.broadcast_to(total + c.ups[-1], self.shape).ravel()

    def score(self, rows, cols):
        c = self.ctx
        worst = np.full((len(rows), len(cols)), c.head_miou[-1])
        if c.anytime_accuracy == "final":
            return worst
        worst = np.minimum(worst, c.head_miou[self.axes[0][rows]][:, None])
        for j, i in enumerate(np.unravel_index(cols, self.shape[1:]) if self.k > 1 else ()):
            worst = np.minimum(worst, c.head_miou[self.axes[j + 1][i]][None, :])
        return worst

    def config(self, j):
        ix = np.unravel_index(int(j), self.shape)
        return Config(tuple(int(a[i]) for a, i in zip(self.axes, ix)), (), None, True)

    def descriptions(self):
        labels = [[self.ctx.memo.head_label(h) for h in a] for a in self.axes]
        return ["+".join(p) for p in itertools.product(*labels)]


def resolve_max_exits(ctx, setting, max_exits):
    """The early-exit cap in force: None means all exit points (anytime) or 2 (input-dependent); else >= 1."""
    if setting not in ("anytime", "input-dependent"):
        return 1 if setting == "budgeted" else 0
    if max_exits is None:
        return len(ctx.points) if setting == "anytime" else DEFAULT_MAX_EXITS_INPUT_DEPENDENT
    if max_exits < 1:
        raise MessError("got --max-exits {}; expected at least 1".format(max_exits))
    return int(max_exits)


def assign_images(memo, config, policy):
    """int64 [I]: the exit (memo head index, H = final) each image takes under ``config`` (eq. 7 policy)."""
    taken = np.full(memo.n_images, memo.n_heads if config.final or not config.heads else config.heads[0])
    if not config.th_img:
        return taken
    conf = memo.image_confidence(policy, None if config.th_pix is None else memo.bin_index(config.th_pix))
    running = np.ones(memo.n_images, dtype=bool)
    for h, th in zip(config.heads, config.th_img):
        out = running & (conf[h] >= th)
        taken[out] = h
        running &= ~out
    return taken
