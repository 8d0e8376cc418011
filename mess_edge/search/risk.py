"""A search whose accuracy constraint holds on new images, not just the calibration ones (numpy only).

The plain search (optimizer.search) picks the cheapest configuration whose *calibration* mIoU meets eq. 5; of
~10^5 configurations the cheapest that passes is the one whose calibration images flattered it most, so on new
images its drop overshoots (issue 13: 1.6-2.3 pp for a 1 pp budget). Here the choice is risk-controlled in the
Learn-then-Test way (Angelopoulos et al. 2021), by Pareto Testing (Laufer-Goldshtein et al. 2023), as in
"Fast yet Safe" (Jazbec et al. 2024):

1. the calibration images are split (seeded) into an *ordering* half and a *testing* half;
2. on the ordering half every configuration is scored and the Pareto front (cost vs mIoU) is kept, restricted
   to points whose drop there is within budget, ordered from safest (most accurate) to fastest;
3. on the testing half, in that fixed order, H0 "the drop on new images exceeds max_drop" is tested for each
   point with a paired per-image bootstrap upper confidence bound at level 1 - delta; the sequence stops at
   the first point whose bound exceeds max_drop. Fixed-sequence testing needs no multiplicity correction, and
   because the order came from images the test never sees, every certified point holds its budget with
   probability >= 1 - delta simultaneously (family-wise);
4. of the certified points, the ones that also pass the plain constraint on all calibration images are kept
   (picking inside a certified set keeps the guarantee) and the cheapest on all calibration images wins.
   Final-only never drops, so it is always certified: the controlled choice is never riskier, and since it is
   one of the plain search's feasible configurations, never cheaper than the plain choice.

mIoU is a ratio of sums over images (per class, TP / (TP + FP + FN)), so the bootstrap resamples images and
re-sums their per-image stats (memo.stats); the bound is on the population drop final-only minus configuration,
both computed on the same resample. The bootstrap is asymptotic (no finite-sample guarantee as Hoeffding's has),
but a Hoeffding bound on a ratio of per-image sums is loose to the point of certifying nothing on 250 images.
"""

import time
from dataclasses import dataclass

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.families import families
from mess_edge.search.memo import Memo, miou_from_stats
from mess_edge.search.optimizer import Space, build_result, pareto_mask, _pick
from mess_edge.search.space import Context, Grid, assign_images, resolve_max_exits

PROMISES = ("new-images", "calibration")


@dataclass(frozen=True)
class Promise:
    """What the chosen instance is promised to do, as instance.json records it."""

    kind: str  # "new-images" (risk-controlled) or "calibration" (the plain search)
    delta: float = 0.1  # new-images: the promise fails with probability <= delta
    n_bootstrap: int = 1000  # new-images: bootstrap resamples of the testing half
    order_fraction: float = 0.5  # new-images: share of the calibration images that orders the candidates
    seed: int = 0  # new-images: the split and the resamples

    def __post_init__(self):
        if self.kind not in PROMISES:
            raise MessError("got --promise {!r}; expected one of {}".format(self.kind, ", ".join(PROMISES)))
        if not (isinstance(self.delta, (int, float)) and 0.0 < self.delta < 1.0):
            raise MessError("got --delta {}; expected a probability in (0, 1), the chance the promise may fail; "
                            "try --delta 0.1".format(self.delta))
        if self.n_bootstrap < 10 or not 0.0 < self.order_fraction < 1.0:
            raise MessError("got n_bootstrap {} and order_fraction {}; expected >= 10 and in (0, 1)".format(
                self.n_bootstrap, self.order_fraction))


def subset_memo(memo, idx):
    """The Memo of images ``idx`` (int array) of ``memo``; LC arrays are left out (the search does not read them)."""
    idx = np.asarray(idx, dtype=np.int64)
    meta = dict(memo.meta, n_images=int(len(idx)))
    return Memo(confusion=memo.confusion[:, idx], hist_edge=memo.hist_edge[:, idx], hist_raw=memo.hist_raw[:, idx],
                hist_bins=memo.hist_bins, mean_conf=memo.mean_conf[:, idx], n_pixels=memo.n_pixels[:, idx],
                head_exit=memo.head_exit, head_arch=memo.head_arch, meta=meta)


def concat_memos(a, b):
    """One Memo of a's images then b's (same network: heads, classes and bins must agree)."""
    if (a.n_classes != b.n_classes or not np.array_equal(a.head_exit, b.head_exit)
            or not np.array_equal(a.head_arch, b.head_arch) or not np.array_equal(a.hist_bins, b.hist_bins)):
        raise MessError("got memos of different networks (heads, classes or bins differ); expected two splits "
                        "calibrated from one checkpoint")
    cat = {k: np.concatenate([getattr(a, k), getattr(b, k)], axis=1)
           for k in ("confusion", "hist_edge", "hist_raw", "mean_conf", "n_pixels")}
    return Memo(hist_bins=a.hist_bins, head_exit=a.head_exit, head_arch=a.head_arch,
                meta=dict(a.meta, n_images=a.n_images + b.n_images, split="pooled"), **cat)


def bootstrap_weights(n_images, n_bootstrap, seed):
    """float64 [B, I]: how often each image is drawn in each of B resamples of I images with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_bootstrap).astype(np.float64)


def ucb_drop(ref_stats, cfg_stats, delta, weights=None, n_bootstrap=1000, seed=0):
    """Upper (1 - delta) bootstrap bound on mIoU(ref) - mIoU(cfg) over new images (fraction, not pp).

    ref_stats, cfg_stats: [I, 3C] per-image stats (memo.stats layout) of the reference (final-only) and of the
    configuration on the same I images; weights: [B, I] resample counts (bootstrap_weights), shared by both
    so the drop is paired. A float ref_stats is a fixed reference mIoU (fraction), for --min-miou.
    """
    cfg_stats = np.asarray(cfg_stats, dtype=np.float64)
    if weights is None:
        weights = bootstrap_weights(cfg_stats.shape[0], n_bootstrap, seed)
    m_cfg = miou_from_stats(weights @ cfg_stats)
    if np.ndim(ref_stats) == 0:
        m_ref = float(ref_stats)
    else:
        m_ref = miou_from_stats(weights @ np.asarray(ref_stats, dtype=np.float64))
    drop = np.where(np.isnan(m_cfg), np.inf, m_ref - m_cfg)
    # The ceil((1 - delta)(B + 1))-th smallest value: the conservative order statistic of the percentile bound.
    k = min(len(drop), int(np.ceil((1.0 - delta) * (len(drop) + 1)))) - 1
    return float(np.partition(drop, k)[k])


def _image_stats(memo, cfg, policy):
    """[I, 3C]: the stats of the exit each image takes under cfg."""
    taken = assign_images(memo, cfg, policy)
    return memo.stats(np.float64)[taken, np.arange(memo.n_images)]


def _scored_space(memo, costs, setting, policy, grid, anytime_accuracy, max_exits):
    """(Context, Space with every configuration scored, resolved max_exits) on ``memo``."""
    ctx = Context(memo, costs, policy, grid, anytime_accuracy)
    max_exits = resolve_max_exits(ctx, setting, max_exits)
    space = Space(families(ctx, setting, max_exits))
    space.score_all()
    return ctx, space, max_exits


def controlled_search(memo, costs, setting, objective, promise, max_exits=None, policy="edge", grid=None,
                      anytime_accuracy="final"):
    """Risk-controlled eq. 5 (see the module doc): (SearchResult on all of ``memo``, promise report dict).

    objective: optimizer.Objective with max_drop or min_miou (eq. 6 budgets are not an accuracy promise);
    promise: Promise of kind "new-images". The report holds the bound of the chosen configuration (pp), how
    many candidates were tested and certified, and the image counts of the two halves.
    """
    start = time.perf_counter()
    if objective.kind != "min_cost":
        raise MessError("got --promise new-images with a cost budget; expected --max-drop or --min-miou (the "
                        "promise is on mIoU); try --promise calibration with --budget-ms / --budget-gmacs")
    grid = Grid() if grid is None else grid
    n = memo.n_images
    n_order = int(round(n * promise.order_fraction))
    if n_order < 20 or n - n_order < 20:
        raise MessError("got {} calibration images; expected at least 40 for --promise new-images (20 to order the "
                        "candidates, 20 to test them); try a larger calibration split or --promise calibration"
                        .format(n))
    ctx, space, max_exits = _scored_space(memo, costs, setting, policy, grid, anytime_accuracy, max_exits)
    final_miou = float(ctx.head_miou[-1])
    threshold = objective.min_miou if objective.min_miou is not None else final_miou - objective.max_drop
    plain_ok = space.mious >= threshold  # NaN compares False

    perm = np.random.default_rng(promise.seed).permutation(n)
    order_memo, test_memo = subset_memo(memo, np.sort(perm[:n_order])), subset_memo(memo, np.sort(perm[n_order:]))
    octx, ospace, _ = _scored_space(order_memo, costs, setting, policy, grid, anytime_accuracy, max_exits)
    assert len(ospace.costs) == len(space.costs)  # same grid, same enumeration order: indices match
    o_final = float(octx.head_miou[-1])
    o_threshold = objective.min_miou if objective.min_miou is not None else o_final - objective.max_drop
    front = np.flatnonzero(pareto_mask(ospace.costs, ospace.mious) & (ospace.mious >= o_threshold))
    front = front[np.lexsort((front, ospace.costs[front], -ospace.mious[front]))]  # safest first

    weights = bootstrap_weights(test_memo.n_images, promise.n_bootstrap, promise.seed + 1)
    final_stats = test_memo.stats(np.float64)[-1]
    ref = final_stats if objective.max_drop is not None else objective.min_miou
    allowed = objective.max_drop if objective.max_drop is not None else 0.0
    # Same-bits final-only (no early exit) needs no test: its drop is zero on every image set.
    final_idx = [int(i) for i in np.flatnonzero(space.n_exits == 0)]
    certified, bounds, tested = [], {}, 0
    if objective.max_drop is not None:
        certified += final_idx
        bounds.update({i: 0.0 for i in final_idx})
    for i in front:
        if i in bounds:
            continue
        tested += 1
        b = _bound(test_memo, ospace.config(int(i)), policy, setting, anytime_accuracy, ref, promise.delta, weights)
        if b > allowed:
            break  # fixed-sequence testing: the first failure ends it
        certified.append(int(i))
        bounds[int(i)] = b
    keep = np.array([i for i in certified if plain_ok[i]], dtype=np.int64)
    if len(keep) == 0:
        raise MessError("no {} configuration is certified to reach {:.2f} mIoU on new images with probability >= "
                        "{:g} ({} tested on {} images); try a lower --min-miou, a larger --delta or --promise "
                        "calibration".format(setting, threshold * 100, 1 - promise.delta, tested, test_memo.n_images))
    best = _pick(keep, space.costs, space.mious, space.n_exits, "min_cost")
    result = build_result(ctx, space, best, setting, objective, threshold, max_exits, False, start)
    report = {"kind": "new-images", "delta": float(promise.delta), "method": "learn-then-test, pareto testing, "
              "paired per-image bootstrap", "n_calibration_images": n, "n_order_images": order_memo.n_images,
              "n_test_images": test_memo.n_images, "n_bootstrap": promise.n_bootstrap, "seed": promise.seed,
              "n_tested": tested, "n_certified": len(certified),
              "ucb_drop_pp": float(bounds[best]) * 100.0 if objective.max_drop is not None else None,
              "lcb_miou": None if objective.max_drop is not None else (objective.min_miou - bounds[best]) * 100.0}
    return result, report


def _bound(memo, cfg, policy, setting, anytime_accuracy, ref, delta, weights):
    """ucb_drop of cfg on memo; anytime reads the final's (or the worst selected exit's) mIoU, not a mix."""
    if setting != "anytime":
        return ucb_drop(ref, _image_stats(memo, cfg, policy), delta, weights)
    stats = memo.stats(np.float64)
    heads = [memo.n_heads] + (list(cfg.heads) if anytime_accuracy == "min" else [])
    return max(ucb_drop(ref, stats[h], delta, weights) for h in heads)


def promise_dict(kind, n_images, report=None):
    """instance.json's "promise": the controlled report, or the plain search's calibration-only promise."""
    if kind == "new-images":
        return dict(report)
    return {"kind": "calibration", "n_calibration_images": int(n_images)}


def promise_line(result, promise):
    """The one line `mess-edge search` prints about what it promises."""
    o = result.objective
    if o.kind == "max_miou":
        what = "cost <= {:g} {}".format(o.budget, result.cost_unit)
    elif o.max_drop is not None:
        what = "mIoU drop <= {:g} pp".format(o.max_drop * 100)
    else:
        what = "mIoU >= {:g}".format(o.min_miou * 100)
    if promise["kind"] == "new-images":
        return ("promise          test {} on new images with probability >= {:g} (Learn-then-Test, {} calibration "
                "images)".format(what, 1 - promise["delta"], promise["n_calibration_images"]))
    why = " ({})".format(promise["why"]) if promise.get("why") else ""
    return "promise          {} on the calibration images only ({} images){}".format(
        what.replace("mIoU drop", "drop"), promise["n_calibration_images"], why)
