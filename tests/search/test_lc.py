"""Deep Layer Cascade baseline (Table 3): receptive radius, cover histograms, mixed-prediction stats, MACs."""

import numpy as np
import pytest

from mess_edge.errors import MessError
from mess_edge.search.costs import make_cost_table
from mess_edge.search.lc import cover_histogram, lc_point, lc_search, lc_stats, upsample_nearest, window_min
from mess_edge.search.memo import Memo, load_memo, save_memo


def test_receptive_radius_hand_computed():
    torch = pytest.importorskip("torch")
    from torch import nn

    from mess_edge.calibrate.memoise import receptive_radius

    seq = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1),               # +1 (scale 1)
                        nn.Conv2d(4, 4, 3, stride=2, padding=1),     # +1 (scale 1), then scale 2
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2),   # +2 * 1 * 2 = 4
                        nn.Conv2d(4, 4, 5, padding=2),               # +2 * 2 = 4
                        nn.Conv2d(4, 4, 1))                          # +0
    x = torch.zeros(1, 4, 32, 32)
    assert receptive_radius(seq, x, seq) == 10
    assert receptive_radius(seq, x, seq, cap=7) == 7
    pooled = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1))
    assert receptive_radius(pooled, x, pooled) == 32  # global context: capped at max(h, w)
    mp = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    assert receptive_radius(mp, x, mp) == 1 + 2


def _window_min_loop(c, r):
    out = np.empty_like(c)
    h, w = c.shape
    for i in range(h):
        for j in range(w):
            out[i, j] = c[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].min()
    return out


def test_cover_histogram_matches_plain_loop():
    rng = np.random.default_rng(0)
    conf = rng.random((3, 7, 9)).astype(np.float32)
    conf[0, 2, 3] = 1.0
    edges = np.linspace(0, 1, 11)
    edges32 = edges.astype(np.float32)
    for r in (0, 1, 2, 5, 8, 20):
        ref = np.stack([_window_min_loop(c, r) for c in conf])
        np.testing.assert_array_equal(window_min(conf, r), ref)
        hist = cover_histogram(conf, r, edges)
        assert hist.dtype == np.int32 and hist.shape == (3, 10)
        for n in range(3):
            for j in range(10):  # not the last edge: its bin also holds 1.0 (memo convention)
                assert hist[n, :j].sum() == np.sum(ref[n] < edges32[j])
            assert hist[n].sum() == 63


def test_lc_stats_matches_per_pixel_reference():
    rng = np.random.default_rng(1)
    n, c, th = 2, 3, [0.0, 0.5, 0.9]
    conf = rng.random((n, 3, 4)).astype(np.float32)
    head = rng.integers(0, c, (n, 6, 8))
    final = rng.integers(0, c, (n, 6, 8))
    gt = rng.integers(0, c, (n, 6, 8))
    gt[0, 0, :3] = 255
    got = lc_stats(conf, head, final, gt, th, c)
    assert got.dtype == np.int32 and got.shape == (n, 3, 3 * c)
    for i in range(n):
        for t, thr in enumerate(th):
            tp, fp, fn = np.zeros(c, int), np.zeros(c, int), np.zeros(c, int)
            for y in range(6):
                for x in range(8):
                    if gt[i, y, x] == 255:
                        continue
                    p = head[i, y, x] if conf[i, y // 2, x // 2] >= np.float32(thr) else final[i, y, x]
                    if p == gt[i, y, x]:
                        tp[p] += 1
                    else:
                        fp[p] += 1
                        fn[gt[i, y, x]] += 1
            np.testing.assert_array_equal(got[i, t], np.concatenate([tp, fp, fn]))
    np.testing.assert_array_equal(upsample_nearest(np.arange(6).reshape(2, 3), (4, 6))[:, ::2],
                                  [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])


def _hand_memo(with_lc=True):
    c = 2
    confusion = np.zeros((3, 2, c, c), np.int64)
    confusion[:, :, 0, 0] = 3
    confusion[:, :, 1, 1] = 1
    confusion[0, :, 1, 0] = 1  # head 0 errs once per image
    hist = np.zeros((3, 2, 4), np.int64)
    hist[..., 3] = 4
    kw = {}
    if with_lc:
        cover = np.zeros((2, 2, 4), np.int64)
        cover[0, 0] = [1, 1, 1, 1]
        cover[0, 1] = [0, 0, 2, 2]
        cover[1] = [4, 0, 0, 0]
        stats = np.zeros((2, 2, 2, 3 * c), np.int64)
        # t = 0: everything from the head; t = 0.5: final's labels (all right) where unsure
        stats[:, :, 0] = [3, 0, 1, 0, 0, 1]   # TP0 3, TP1 0; FP0 1; FN1 1
        stats[:, :, 1] = [3, 1, 0, 0, 0, 0]
        kw = {"lc_cover_hist": cover, "lc_stats": stats, "lc_th": np.array([0.0, 0.5])}
    return Memo(confusion=confusion, hist_edge=hist, hist_raw=hist, hist_bins=np.linspace(0, 1, 5),
                mean_conf=np.ones((3, 2), np.float32), n_pixels=np.full((3, 2), 4), head_exit=np.array([0, 1]),
                head_arch=np.zeros((2, 4), np.int64), meta={"format": "mess-edge-memo/1", "num_classes": c, "n_images": 2}, **kw)


def test_lc_point_macs_hand_computed():
    memo = _hand_memo()
    costs = make_cost_table("macs", [1.0, 2.0, 4.0], [0.5, 0.25], 8.0, [0.1, 0.1, 0.0])
    p = lc_point(memo, costs, 0, 1)  # t = 0.5 -> bin 2: covers 2/4 and 0/4 -> 0.25
    assert p["deeper_fraction"] == pytest.approx(0.25)
    assert p["macs"] == pytest.approx(1.0 + 0.5 + 0.1 + 0.25 * (2.0 + 4.0 + 8.0))
    assert p["miou"] == pytest.approx(1.0)
    p0 = lc_point(memo, costs, 0, 0)  # t = 0: nothing goes deeper
    assert p0["macs"] == pytest.approx(1.6) and p0["deeper_fraction"] == 0.0
    assert p0["miou"] == pytest.approx((6 / 8 + 0 / 2) / 2)
    p1 = lc_point(memo, costs, 1, 1)  # head 1 at exit 1: every position still covered
    assert p1["macs"] == pytest.approx(1.0 + 2.0 + 0.25 + 0.1 + 1.0 * (4.0 + 8.0))
    res = lc_search(memo, costs, 0.1)
    assert (res["lc"]["head"], res["lc"]["th"]) == (0, 0.5)
    assert res["lc"]["speedup"] == pytest.approx(15.0 / 5.1)
    assert res["final_only_macs"] == pytest.approx(15.0)


def test_old_memo_loads_and_lc_round_trip(tmp_path):
    old = _hand_memo(with_lc=False)
    save_memo(tmp_path / "old.npz", old)
    with np.load(tmp_path / "old.npz") as z:
        assert "lc_stats" not in z.files
    loaded = load_memo(tmp_path / "old.npz")
    assert not loaded.has_lc and loaded.lc_stats is None
    costs = make_cost_table("macs", [1.0, 2.0, 4.0], [0.5, 0.25], 8.0)
    with pytest.raises(MessError, match="without the LC arrays"):
        lc_point(loaded, costs, 0, 0)
    new = _hand_memo()
    save_memo(tmp_path / "new.npz", new)
    back = load_memo(tmp_path / "new.npz")
    assert back.has_lc
    np.testing.assert_array_equal(back.lc_stats, new.lc_stats)
    np.testing.assert_array_equal(back.lc_cover_hist, new.lc_cover_hist)
    assert lc_point(back, costs, 0, 1) == lc_point(new, costs, 0, 1)
    with pytest.raises(MessError, match="expected all of"):
        Memo(**{k: getattr(new, k) for k in ("confusion", "hist_edge", "hist_raw", "hist_bins", "mean_conf",
                                             "n_pixels", "head_exit", "head_arch", "meta")},
             lc_stats=new.lc_stats)
