"""The vectorised search against the brute-force reference on random small memos, every setting and objective."""

import numpy as np
import pytest

from mess_edge.search import Grid, Memo, Objective, make_cost_table, search
from mess_edge.search.reference import brute_force_search
from mess_edge.search.synthetic import random_costs, random_memo

GRID = Grid(th_img=(0.3, 0.6, 0.8, 1.0), th_pix=(0.5, 0.7, 0.9))


def chaos_memo(seed, n_points=3, n_heads=5, n_images=9, n_classes=4, n_bins=10):
    """Unstructured memo: random confusions (with empty classes), histograms, and head placement."""
    rng = np.random.default_rng(seed)
    h = n_heads
    confusion = rng.integers(0, 6, (h + 1, n_images, n_classes, n_classes)) * (rng.random((h + 1, n_images, 1, 1)) < 0.9)
    confusion[..., n_classes - 1, :] = 0  # the last class never in the ground truth: empty union when never predicted
    n_pix = rng.integers(1, 6, (h + 1, n_images))
    hist = np.zeros((h + 1, n_images, n_bins), dtype=np.int64)
    for idx in np.ndindex(h + 1, n_images):
        hist[idx] = np.bincount(rng.integers(0, n_bins, n_pix[idx]), minlength=n_bins)
    head_exit = np.sort(rng.choice([0, 2, n_points - 1], h))  # exit point 1 is left without heads
    arch = np.stack([rng.permutation(h), np.zeros(h), np.zeros(h), np.zeros(h)], axis=1).astype(np.int64)
    return Memo(confusion=confusion, hist_edge=hist, hist_raw=hist[:, :, rng.permutation(n_bins)],
                hist_bins=np.linspace(0, 1, n_bins + 1), mean_conf=rng.random((h + 1, n_images)).astype(np.float32),
                n_pixels=n_pix, head_exit=head_exit, head_arch=arch, meta={"num_classes": n_classes})


def objectives(memo, costs):
    final = memo.head_miou()[-1]
    fo = costs.final_only()
    return [Objective(max_drop=0.0), Objective(max_drop=0.03), Objective(min_miou=float(final) * 0.8),
            Objective(min_miou=0.999), Objective(budget=fo * 0.5), Objective(budget=fo * 0.8), Objective(budget=fo),
            Objective(budget=0.01)]


def check(memo, costs, setting, max_exits=None, policy="edge", anytime_accuracy="final"):
    for objective in objectives(memo, costs):
        kw = dict(max_exits=max_exits, policy=policy, grid=GRID, anytime_accuracy=anytime_accuracy)
        best, cost, miou, scored = brute_force_search(memo, costs, setting, objective, **kw)
        for keep in (False, True):
            try:
                r = search(memo, costs, setting, objective, keep_points=keep, **kw)
            except Exception as e:  # noqa: BLE001 - compared with the reference below
                assert best is None, (setting, objective, str(e))
                assert "no {} configuration".format(setting) in str(e)
                continue
            assert best is not None, (setting, objective, r.description)
            assert r.config == best, (setting, objective, policy)
            assert (r.cost, r.miou) == (cost, miou)  # bitwise: same operations in the same order
            if keep:
                assert np.array_equal(r.points.costs, [s[0] for s in scored])
                assert np.array_equal(r.points.mious, [s[1] for s in scored], equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("setting", ["final-only", "budgeted", "anytime", "input-dependent"])
def test_structured_memos_match_brute_force(seed, setting):
    memo = random_memo(n_points=3, heads_per_point=2, n_images=10, n_classes=4, n_bins=10, gt_pixels=60,
                       native_pixels=12, seed=seed)
    costs = random_costs(memo, 3, seed=seed)
    check(memo, costs, setting)
    if setting == "anytime":
        check(memo, costs, setting, anytime_accuracy="min")
        check(memo, costs, setting, max_exits=1, anytime_accuracy="min")


@pytest.mark.parametrize("setting", ["final-only", "budgeted", "anytime", "input-dependent"])
def test_measured_stretches_match_brute_force(setting):
    """With fused-stretch costs (no longer sums of segments) the vectorised costs still equal Table 1's."""
    memo = random_memo(n_points=3, heads_per_point=2, n_images=10, n_classes=4, n_bins=10, gt_pixels=60,
                       native_pixels=12, seed=5)
    costs = random_costs(memo, 3, seed=5, stretches=True)
    assert len(costs.stretches) == 6 and costs.final_only() != random_costs(memo, 3, seed=5).final_only()
    check(memo, costs, setting)
    if setting in ("anytime", "input-dependent"):
        check(memo, costs, setting, max_exits=3)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("policy", ["edge", "raw", "mean"])
def test_chaotic_memos_match_brute_force(seed, policy):
    memo = chaos_memo(seed)
    rng = np.random.default_rng(100 + seed)
    # Costs on a coarse grid of halves so that many configurations tie exactly on cost.
    costs = make_cost_table("latency", rng.integers(1, 4, 3) / 2, rng.integers(0, 3, memo.n_heads) / 2,
                            rng.integers(1, 4) / 2, rng.integers(0, 2, memo.n_heads + 1) / 4)
    check(memo, costs, "input-dependent", policy=policy)
    check(memo, costs, "input-dependent", max_exits=3, policy=policy)
    if policy == "edge":
        check(memo, costs, "budgeted")
        check(memo, costs, "anytime", anytime_accuracy="min")


def test_float64_path_when_float32_would_round():
    """Pixel totals past 2**23 switch the sums to float64; the result still matches the reference bitwise."""
    memo = random_memo(n_points=2, heads_per_point=2, n_images=6, n_classes=3, n_bins=10, gt_pixels=1500000,
                       native_pixels=10, seed=7)
    assert not memo.exact_float32()
    costs = random_costs(memo, 2, seed=7)
    check(memo, costs, "input-dependent")
