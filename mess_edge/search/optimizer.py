"""The configuration search of eqs. 5 and 6: exhaustive over the gridded space, pruned on cost (numpy only).

Every configuration's cost is computed first (cheap: Table 1 over counts of images still running). Then:
- eq. 5 (min cost s.t. mIoU >= threshold): batches of configurations (the families of families.py) are scored in
  increasing order of their cheapest configuration; once a feasible configuration is known only the rows and
  columns of a family that hold a cheaper-or-equal one are scored, and the search stops at the first family
  whose cheapest configuration costs more (branch and bound, so the optimum is exact);
- eq. 6 (max mIoU s.t. cost <= budget): only configurations within the budget are scored.
Ties break deterministically: eq. 5 by lower cost, then higher mIoU, then fewer exits, then enumeration order;
eq. 6 by higher mIoU, then lower cost, then fewer exits, then enumeration order.
"""

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.families import families
from mess_edge.search.space import Context, Grid, assign_images, resolve_max_exits


@dataclass(frozen=True)
class Objective:
    """Exactly one of: min_miou (eq. 5, fraction), max_drop (eq. 5, fraction below final-only), budget (eq. 6)."""

    min_miou: Optional[float] = None  # mIoU threshold, fraction in [0, 1]
    max_drop: Optional[float] = None  # allowed mIoU drop from final-only's calibration mIoU, fraction (0.01 = 1 pp)
    budget: Optional[float] = None  # cost budget in the cost table's unit (ms or GMACs)

    def __post_init__(self):
        given = [v for v in (self.min_miou, self.max_drop, self.budget) if v is not None]
        if len(given) != 1:
            raise MessError("got {} objectives; expected exactly one of --max-drop, --min-miou, --budget-ms, "
                            "--budget-gmacs".format(len(given)))
        if self.min_miou is not None and not 0 <= self.min_miou <= 1:
            raise MessError("got --min-miou {:g}; expected a percentage in [0, 100]".format(self.min_miou * 100))
        if (self.max_drop is not None and self.max_drop < 0) or (self.budget is not None and self.budget < 0):
            raise MessError("got a negative --max-drop or budget; expected >= 0")

    @property
    def kind(self):
        return "max_miou" if self.budget is not None else "min_cost"


@dataclass(frozen=True, eq=False)
class DesignPoints:
    """Every configuration of the space, scored (kept when asked, for --pareto and --plot)."""

    costs: np.ndarray  # float64 [n], cost unit
    mious: np.ndarray  # float64 [n], fractions
    n_exits: np.ndarray  # int64 [n], early exits
    descriptions: list  # [n] str
    pareto: np.ndarray  # bool [n], not dominated (no other point as cheap and as accurate, one strictly)
    chosen: int  # index of the chosen configuration


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The chosen configuration and what the search knows about it."""

    setting: str
    policy: str  # image confidence: "edge", "raw" or "mean"
    objective: Objective
    threshold_miou: Optional[float]  # eq. 5's resolved mIoU threshold (fraction), else None
    config: object  # space.Config
    description: str
    cost: float  # expected cost per image, cost unit
    miou: float  # calibration mIoU, fraction (anytime: per anytime_accuracy)
    exit_fractions: tuple  # fraction of images taking each selected exit, then the final (if part of it)
    exit_miou: tuple  # each selected exit's own mIoU on all images, then the final's (if part of it)
    final_only_cost: float
    final_only_miou: float
    cost_model: str
    cost_unit: str
    n_configs: int  # size of the space (costs computed)
    n_evaluated: int  # configurations whose mIoU was computed
    seconds: float
    max_exits: Optional[int]
    anytime_accuracy: str
    th_img_grid: tuple
    th_pix_grid: tuple
    points: Optional[DesignPoints] = None


def _pick(idx, costs, mious, n_exits, kind):
    """The winner among global indices ``idx`` under the tie rules of the module doc."""
    m = np.where(np.isnan(mious[idx]), -np.inf, mious[idx])
    if kind == "min_cost":
        order = np.lexsort((idx, n_exits[idx], -m, costs[idx]))
    else:
        order = np.lexsort((idx, n_exits[idx], costs[idx], -m))
    return int(idx[order[0]])


def pareto_mask(costs, mious):
    """bool [n]: points no other point dominates (cost <= and mIoU >=, one strictly)."""
    m = np.where(np.isnan(mious), -np.inf, mious)
    order = np.lexsort((-m, costs))
    c, v = costs[order], m[order]
    new_cost = np.r_[True, c[1:] != c[:-1]]
    group = np.cumsum(new_cost) - 1
    best_in_group = np.maximum.reduceat(v, np.flatnonzero(new_cost))
    before = np.r_[-np.inf, np.maximum.accumulate(best_in_group)[:-1]]  # best mIoU at a strictly lower cost
    keep = (v == best_in_group[group]) & (v > before[group])
    mask = np.zeros(len(costs), dtype=bool)
    mask[order] = keep
    return mask


class Space:
    """The families of a space, their costs, and the mIoU of the configurations scored so far (global indices)."""

    def __init__(self, fams):
        self.fams = fams
        self.offsets = np.cumsum([0] + [f.size for f in fams])
        self.costs = np.concatenate([f.costs() for f in fams])
        self.n_exits = np.concatenate([np.full(f.size, f.k, dtype=np.int64) for f in fams])
        self.mious = np.full(len(self.costs), np.nan)
        self.scored = np.zeros(len(self.costs), dtype=bool)

    def family_costs(self, f):
        """Costs of family f as its [A_1, rest] grid (a view)."""
        return self.costs[self.offsets[f]:self.offsets[f + 1]].reshape(self.fams[f].shape2)

    def score(self, f, bound=None):
        """Score family f: every configuration, or (bound) the rows and columns holding one of cost <= bound.

        The block rows x cols is scored whole: one matrix product is cheaper than picking single cells.
        """
        c2 = self.family_costs(f)
        rows, cols = np.arange(c2.shape[0]), np.arange(c2.shape[1])
        if bound is not None:
            rows = np.flatnonzero(c2.min(axis=1) <= bound)
            cols = np.flatnonzero(c2.min(axis=0) <= bound)
        if len(rows) == 0 or len(cols) == 0:
            return
        flat = (self.offsets[f] + rows[:, None] * c2.shape[1] + cols[None, :]).ravel()
        todo = ~self.scored[flat]
        if not todo.any():
            return
        self.mious[flat] = self.fams[f].score(rows, cols).ravel()
        self.scored[flat] = True

    def score_all(self):
        for f in range(len(self.fams)):
            self.score(f)

    def score_one(self, i):
        f = int(np.searchsorted(self.offsets, i, side="right") - 1)
        r, c = divmod(int(i - self.offsets[f]), self.fams[f].shape2[1])
        self.mious[i] = self.fams[f].score(np.array([r]), np.array([c]))[0, 0]
        self.scored[i] = True

    def config(self, i):
        f = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.fams[f].config(int(i - self.offsets[f]))

    def descriptions(self):
        return [d for f in self.fams for d in f.descriptions()]


def describe(memo, config):
    """"final", "e1:c1b2r0h0", "e1:c1b2r0h0@0.85 > final (th_pix 0.90)"."""
    if not config.heads:
        return "final"
    parts = [memo.head_label(h) + ("@{:.2f}".format(t) if config.th_img else "")
             for h, t in zip(config.heads, config.th_img or [None] * len(config.heads))]
    if config.final:
        parts.append("final")
    tail = " (th_pix {:.2f})".format(config.th_pix) if config.th_pix is not None else ""
    return " > ".join(parts) + tail


def _choose(space, objective, threshold, kind):
    """(global index of the optimum, None) or (None, index of the closest configuration) when none is feasible."""
    costs = space.costs
    fam_min = np.array([space.family_costs(f).min() for f in range(len(space.fams))])
    if kind == "max_miou":
        for f in np.flatnonzero(fam_min <= objective.budget):
            space.score(f, bound=objective.budget)
        feasible = np.flatnonzero(space.scored & (costs <= objective.budget))
        if len(feasible):
            return _pick(feasible, costs, space.mious, space.n_exits, kind), None
        cheapest = int(np.argmin(costs))
        space.score_one(cheapest)
        return None, cheapest
    # Eq. 5, branch and bound on cost: families in increasing order of their cheapest configuration; once a
    # feasible configuration of cost c* is known, only rows/columns holding a configuration of cost <= c* are
    # scored, and the search stops at the first family whose cheapest configuration costs more than c*.
    best = np.inf
    for f in np.lexsort((np.arange(len(fam_min)), fam_min)):
        if fam_min[f] > best:
            break
        space.score(f, bound=None if np.isinf(best) else best)
        lo, hi = space.offsets[f], space.offsets[f + 1]
        ok = space.scored[lo:hi] & (space.mious[lo:hi] >= threshold)
        if ok.any():
            best = min(best, float(costs[lo:hi][ok].min()))
    feasible = np.flatnonzero(space.scored & (space.mious >= threshold))
    if len(feasible):
        return _pick(feasible, costs, space.mious, space.n_exits, kind), None
    return None, _pick(np.flatnonzero(space.scored), costs, space.mious, space.n_exits, "max_miou")


def search(memo, costs, setting, objective, max_exits=None, policy="edge", grid=None, keep_points=False,
           anytime_accuracy="final"):
    """Exhaustive configuration search (pure: memo + cost table in, SearchResult out; no files).

    memo: Memo; costs: CostTable aligned with the memo's heads; setting: one of space.SETTINGS; objective:
    Objective; max_exits: cap on early exits (None: all exit points for anytime, 2 for input-dependent);
    policy: image confidence "edge" | "raw" | "mean"; grid: space.Grid of thresholds (default Grid());
    keep_points: score every configuration and return them (for the Pareto front); anytime_accuracy: "final"
    (anytime returns the newest output, the final's when the deadline allows) or "min" (the worst exit's).
    """
    start = time.perf_counter()
    grid = Grid() if grid is None else grid
    ctx = Context(memo, costs, policy, grid, anytime_accuracy)
    max_exits = resolve_max_exits(ctx, setting, max_exits)
    space = Space(families(ctx, setting, max_exits))
    final_miou = float(ctx.head_miou[-1])
    threshold = None
    if objective.kind == "min_cost":
        threshold = objective.min_miou if objective.min_miou is not None else final_miou - objective.max_drop
    if keep_points:
        space.score_all()
    best, closest = _choose(space, objective, threshold, objective.kind)
    if best is None:
        cfg = space.config(closest)
        what = "{} at {:.2f} mIoU, cost {:.4g} {}".format(describe(memo, cfg), space.mious[closest] * 100,
                                                         space.costs[closest], costs.unit)
        if objective.kind == "min_cost":
            raise MessError("no {} configuration reaches {:.2f} mIoU (final-only {:.2f}); the most accurate is {}; "
                            "try a lower --min-miou or a larger --max-drop".format(
                                setting, threshold * 100, final_miou * 100, what))
        raise MessError("no {} configuration costs <= {:.4g} {}; the cheapest is {}; try a larger budget".format(
            setting, objective.budget, costs.unit, what))
    return build_result(ctx, space, best, setting, objective, threshold, max_exits, keep_points, start)


def build_result(ctx, space, best, setting, objective, threshold, max_exits, keep_points, start):
    """The SearchResult of configuration ``best`` (a global index of ``space``, scored) on ctx's memo."""
    memo, costs, policy, anytime_accuracy = ctx.memo, ctx.costs, ctx.policy, ctx.anytime_accuracy
    final_miou = float(ctx.head_miou[-1])
    cfg = space.config(best)
    taken = assign_images(memo, cfg, policy)
    exits = list(cfg.heads) + ([memo.n_heads] if cfg.final else [])
    points = None
    if keep_points:
        points = DesignPoints(space.costs, space.mious, space.n_exits, space.descriptions(),
                              pareto_mask(space.costs, space.mious), best)
    return SearchResult(
        setting=setting, policy=policy, objective=objective, threshold_miou=threshold, config=cfg,
        description=describe(memo, cfg), cost=float(space.costs[best]), miou=float(space.mious[best]),
        exit_fractions=tuple(float(np.mean(taken == h)) for h in exits),
        exit_miou=tuple(float(ctx.head_miou[h]) for h in exits),
        final_only_cost=float(ctx.final_only_cost), final_only_miou=final_miou, cost_model=costs.model,
        cost_unit=costs.unit, n_configs=len(space.costs), n_evaluated=int(space.scored.sum()),
        seconds=time.perf_counter() - start, max_exits=max_exits, anytime_accuracy=anytime_accuracy,
        th_img_grid=tuple(float(t) for t in ctx.th_img) if setting == "input-dependent" else (),
        th_pix_grid=tuple(t for t in ctx.th_pix if t is not None) if setting == "input-dependent" else (),
        points=points)
