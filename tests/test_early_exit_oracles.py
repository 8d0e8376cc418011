"""The oracles of benchmarks/early_exit.py (benchmarks/_oracles.py), the interpolation of benchmarks/upsample_forms.py
and the gap decomposition of benchmarks/exit_ceilings.py, held to plain
versions on fresh random memos and inputs (no export needed)."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import _oracles as ee  # noqa: E402
from benchmarks import upsample_forms as uf  # noqa: E402
from mess_edge.search.memo import miou_from_stats  # noqa: E402
from mess_edge.search.synthetic import random_memo  # noqa: E402


def pixel_accuracy(memo):
    conf = memo.confusion
    return np.trace(conf, axis1=2, axis2=3) / np.maximum(conf.sum((2, 3)), 1)


def test_strict_oracle_matches_a_plain_loop():
    for seed in range(5):
        memo = random_memo(n_points=3, heads_per_point=3, n_images=30, n_classes=4, gt_pixels=64, native_pixels=16,
                           seed=seed)
        rng = np.random.default_rng(seed)
        cost = np.append(rng.uniform(0.5, 2.0, memo.n_heads), 3.0)
        heads = sorted(rng.choice(memo.n_heads, 4, replace=False).tolist())
        acc = pixel_accuracy(memo)
        want = []
        for i in range(memo.n_images):
            ok = [h for h in heads if acc[h, i] >= acc[memo.n_heads, i]]
            want.append(min(ok, key=lambda h: cost[h]) if ok else memo.n_heads)
        assert ee._strict_oracle(memo, cost, heads).tolist() == want


def test_spend_drop_keeps_the_floor_and_only_gets_cheaper():
    for seed in range(5):
        memo = random_memo(n_points=2, heads_per_point=3, n_images=40, n_classes=4, gt_pixels=64, native_pixels=16,
                           seed=seed)
        cost = np.append(np.random.default_rng(seed).uniform(0.5, 2.0, memo.n_heads), 3.0)
        heads = list(range(memo.n_heads))
        strict = ee._strict_oracle(memo, cost, heads)
        stats = memo.stats(np.float64)
        final = miou_from_stats(stats[memo.n_heads].sum(0))
        for drop in (0.0, 1.0, 5.0):
            taken = ee._spend_drop(memo, cost, strict, drop, heads)
            miou = miou_from_stats(stats[taken, np.arange(memo.n_images)].sum(0))
            assert miou >= final - drop / 100 - 1e-12
            assert np.all(cost[taken] <= cost[strict])
        assert cost[ee._spend_drop(memo, cost, strict, 5.0, heads)].sum() <= cost[
            ee._spend_drop(memo, cost, strict, 1.0, heads)].sum()  # more drop allowed never costs more


def test_spend_drop_on_a_case_worked_by_hand():
    # 3 images, one head at cost 1 (final: 4). Image 0: the head is as good as the final (strict oracle sends
    # it); image 1: the head loses a little; image 2: the head loses everything. A small drop lets image 1 out.
    memo = random_memo(n_points=1, heads_per_point=1, n_images=3, n_classes=2, gt_pixels=100, native_pixels=4)
    conf = np.zeros_like(memo.confusion)
    conf[1, :] = [[50, 0], [0, 50]]  # the final exit: every pixel right on every image
    conf[0, 0] = [[50, 0], [0, 50]]
    conf[0, 1] = [[50, 0], [1, 49]]
    conf[0, 2] = [[0, 50], [50, 0]]
    memo.confusion[...] = conf
    memo._cache.clear()
    cost = np.array([1.0, 4.0])
    strict = ee._strict_oracle(memo, cost, [0])
    assert strict.tolist() == [0, 1, 1]
    assert ee._spend_drop(memo, cost, strict, 0.0, [0]).tolist() == [0, 1, 1]
    assert ee._spend_drop(memo, cost, strict, 1.0, [0]).tolist() == [0, 0, 1]  # ~0.66 pp lost
    assert ee._spend_drop(memo, cost, strict, 100.0, [0]).tolist() == [0, 0, 0]


@pytest.mark.parametrize("n, size", [(16, 128), (8, 128), (5, 37), (7, 7), (12, 8)])
def test_interpolation_matrix_is_bilinear_half_pixel(n, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(n * size).standard_normal((1, 3, n, n)).astype(np.float32)
    a = uf.interpolation_matrix(n, size)
    got = a @ x[0] @ a.T
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                           align_corners=False)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.allclose(a.sum(1), 1.0) and (a >= 0).all()


def test_what_is_left_decomposes_the_gap_to_the_target():
    from benchmarks import exit_ceilings as ec

    # teacher: 40% leave at a path costing 0.5 of the final one, 1.05 when passing: 1 / (0.2 + 0.63) = 1.205x
    row = {"best": {"eq7": {"speedup": 1.10, "test_cut_speedup": 1.15},
                    "teacher": {"speedup": 1.0 / (0.4 * 0.5 + 0.6 * 1.05), "head": "e1:x", "leave_share": 0.4,
                                "cost_ratio": 0.5, "pass_ratio": 1.05},
                    "label-aware": {"speedup": 1.4}}}
    left = ec.what_is_left(row, 1.25)
    assert left["eq7_test_cut"] - left["eq7"] == pytest.approx(0.05)  # the calibration margin
    assert left["teacher"] == pytest.approx(1.2048, abs=1e-4)
    # 1.25x at cost 0.5 needs f with 0.5 f + 1.05 (1 - f) = 0.8: f = 0.25 / 0.55
    assert left["need_share_at_this_cost"] == pytest.approx(0.25 / 0.55)
    # 1.25x with 40% leaving needs 0.4 c + 0.63 = 0.8: c = 0.425
    assert left["need_cost_at_this_share"] == pytest.approx(0.425)
    assert ec.targets_of("cpu-drn-e8") == {1.0: 1.4, 0.1: 1.1} and ec.targets_of("other") == {}
    text = "\n".join(ec._left_lines({"1.0": left}))
    assert "| 1.0 | 1.25x | 1.100x | 1.150x | 1.205x | +0.050x | +0.055x | 40% at e1:x, 45% | 0.50, 0.4" in text
