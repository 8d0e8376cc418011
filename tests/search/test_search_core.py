"""Configuration search on hand-made memos whose optimum is worked out by hand; Table 1; the mIoU arithmetic.

The hand memo: 2 exit points, 2 classes, 4 images of 10 + 10 pixels, 4 confidence bins, 4 native pixels.
An exit either gets an image right (confusion diag [10, 10]) or wrong (everything labelled class 0), so the
mIoU depends only on r, the images right: r=4 -> 1.0, r=3 -> 0.775, r=2 -> 0.58333.
  head 0 (exit 0, arch c0b0r0h0, cost 0.25): right on images 0, 1
  head 1 (exit 0, arch c1b1r0h0, cost 0.50): right on images 0, 1, 2
  head 2 (exit 1, arch c0b0r0h0, cost 0.25): right on images 0, 1, 2, confidently wrong on image 3
  final (cost 2.0): right on all. Segments cost 1.0 each, so final-only costs 4.0 GMACs.
Image confidence at th_pix 0.5 | 0.75 (bins [0, .25, .5, .75, 1]):
  head 0: img0 1|1, img1 1|.5, img2 .5|0, img3 0|0
  head 1: img0 1|1, img1 1|1, img2 1|.5, img3 0|0
  head 2: img0 1|1, img1 1|1, img2 1|1, img3 1|.5
"""

import numpy as np
import pytest

from mess_edge import metrics
from mess_edge.errors import MessError
from mess_edge.search import (Grid, Memo, Objective, cost_anytime, cost_budgeted, cost_final_only,
                              cost_input_dependent, cost_upsample, instance_dict, make_cost_table, miou_from_stats,
                              search, simulate)
from mess_edge.search.costs import backbone_spans
from mess_edge.search.reference import reference_miou

RIGHT = np.array([[10, 0], [0, 10]])
WRONG = np.array([[10, 0], [10, 0]])
HIST = {1.0: [0, 0, 0, 4], 0.5: [0, 0, 2, 2], 0.25: [0, 2, 2, 0], 0.0: [4, 0, 0, 0]}
GRID = Grid(th_img=(0.5, 1.0), th_pix=(0.5, 0.75))


def hist_row(c50, c75):
    """4-pixel histogram with confidence c50 at th_pix 0.5 and c75 at 0.75."""
    hi = int(round(c75 * 4))
    mid = int(round(c50 * 4)) - hi
    return [4 - hi - mid, 0, mid, hi]


def hand_memo(raw_silent=False):
    right = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    conf = [[(1, 1), (1, .5), (.5, 0), (0, 0)], [(1, 1), (1, 1), (1, .5), (0, 0)],
            [(1, 1), (1, 1), (1, 1), (1, .5)], [(1, 1)] * 4]
    confusion = np.array([[RIGHT if r else WRONG for r in row] for row in right], dtype=np.int64)
    hist = np.array([[hist_row(*c) for c in row] for row in conf], dtype=np.int64)
    hist_raw = hist.copy()
    if raw_silent:  # without edge enhancement heads 0 and 1 are never confident
        hist_raw[:2] = [4, 0, 0, 0]
    meta = {"format": "mess-edge-memo/1", "checkpoint_sha256": "ab" * 32, "num_classes": 2, "n_images": 4,
            "input_hw": [8, 8], "exit_points": [0, 1]}
    return Memo(confusion=confusion, hist_edge=hist, hist_raw=hist_raw, hist_bins=np.linspace(0, 1, 5),
                mean_conf=np.array([[.9, .9, .6, .2], [.9, .9, .9, .2], [.9, .9, .9, .9], [.9] * 4], np.float32),
                n_pixels=np.full((4, 4), 4), head_exit=np.array([0, 0, 1]),
                head_arch=np.array([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]), meta=meta)


HAND_COSTS = make_cost_table("macs", [1.0, 1.0], [0.25, 0.5, 0.25], 2.0)
M3, M2 = 0.775, (4 / 6 + 0.5) / 2


def run(setting, objective, **kw):
    return search(hand_memo(kw.pop("raw_silent", False)), HAND_COSTS, setting, objective, grid=GRID, **kw)


def test_miou_counts_match_plain_loop_and_nanmean():
    rng = np.random.default_rng(0)
    for _ in range(50):
        conf = rng.integers(0, 20, (5, 5)) * (rng.random((5, 5)) < 0.5)
        conf[2, :] = 0
        conf[:, 2] = 0  # a class with an empty union is left out
        stats = np.r_[np.diag(conf), conf.sum(1), conf.sum(0)]
        tp, union = np.diag(conf), conf.sum(1) + conf.sum(0) - np.diag(conf)
        with np.errstate(invalid="ignore"):
            expected = np.nanmean(tp / union)
        assert miou_from_stats(stats) == pytest.approx(expected, abs=1e-12)
        assert miou_from_stats(stats.astype(np.float32)) == reference_miou(conf)
        assert miou_from_stats(stats) == pytest.approx(metrics.miou(conf), abs=1e-12)
    assert np.isnan(miou_from_stats(np.zeros(6)))
    assert hand_memo().head_miou().tolist() == pytest.approx([M2, M3, M3, 1.0])


def test_table1_formulas_on_hand_numbers():
    span = backbone_spans([1.0, 2.0, 3.0], 4.0)  # graphs 0..2 the segments, 3 the final
    assert span[1, 3] == 5.0 and span[2, 4] == 7.0 and span[3, 3] == 0.0
    assert cost_final_only(span) == 10.0
    assert cost_budgeted(span, 1, 0.5) == 3.5
    assert cost_anytime(span, [(0, 0.5), (2, 0.25)]) == 10.75
    # 1 * (seg0 + 0.5) + 0.6 * (seg1 + seg2 + 0.25) + 0.2 * final
    assert cost_input_dependent(span, [(0, 0.5), (2, 0.25)], [0.6, 0.2]) == pytest.approx(1.5 + 3.15 + 0.8)
    assert cost_input_dependent(span, [], []) == 10.0
    assert cost_upsample([0.4, 0.4, 0.2], [0.1, 0.1, 0.2]) == pytest.approx(0.12)


def test_table1_reads_measured_stretches_in_place_of_sums():
    """A stretch (graphs first..last as one fused graph) replaces the sum of its pieces, and only that span."""
    # Fused: segments 1-2 cost 4.5 (not 5), segment 2 + final 6.0 (not 7), everything 9.0 (not 10).
    span = backbone_spans([1.0, 2.0, 3.0], 4.0, [(1, 2, 4.5), (2, 3, 6.0), (0, 3, 9.0)])
    assert (span[1, 3], span[2, 4], span[0, 4]) == (4.5, 6.0, 9.0)
    assert (span[0, 3], span[1, 4]) == (6.0, 9.0)  # not measured: still the sums
    assert cost_final_only(span) == 9.0
    assert cost_budgeted(span, 2, 0.5) == 6.5  # segments 0..2: no stretch, the sum
    # anytime at exits 0 and 1: seg0 + h + seg1 + h + (seg2 + final fused)
    assert cost_anytime(span, [(0, 0.5), (1, 0.25)]) == 1.0 + 0.5 + 2.0 + 0.25 + 6.0
    # 1 * (seg0 + 0.5) + 0.6 * (fused seg1-2 + 0.25) + 0.2 * final
    assert cost_input_dependent(span, [(0, 0.5), (2, 0.25)], [0.6, 0.2]) == pytest.approx(1.5 + 0.6 * 4.75 + 0.8)
    table = make_cost_table("latency", [1.0, 2.0, 3.0], [0.5], 4.0, 0.1, stretches=[(0, 3, 9.0)])
    assert table.final_only() == 9.1 and table.stretches == ((0, 3, 9.0),)
    assert make_cost_table("latency", [1.0, 2.0, 3.0], [0.5], 4.0, 0.1).final_only() == 10.1
    for bad in [(2, 2, 1.0), (0, 4, 1.0), (1, 0, 1.0)]:
        with pytest.raises(MessError, match="expected 0 <= first < last <= 3"):
            make_cost_table("latency", [1.0, 2.0, 3.0], [0.5], 4.0, stretches=[bad])
    with pytest.raises(MessError, match="negative or non-finite"):
        make_cost_table("latency", [1.0, 2.0, 3.0], [0.5], 4.0, stretches=[(0, 1, -1.0)])


def test_search_and_simulate_price_instances_with_stretches():
    """Fusing exits 0..1 of the hand network into one 1.2 graph (not 2.0) makes final-only 3.2 and the
    instance carries the stretch, so simulate() without the table prices it the same."""
    costs = make_cost_table("macs", [1.0, 1.0], [0.25, 0.5, 0.25], 2.0, stretches=[(0, 2, 3.2), (1, 2, 2.5)])
    memo = hand_memo()
    r = search(memo, costs, "final-only", Objective(max_drop=0.0), grid=GRID)
    assert (r.cost, r.final_only_cost) == (3.2, 3.2)
    # budgeted at head 1 (exit 0): seg0 + 0.5, no stretch involved
    r = search(memo, costs, "budgeted", Objective(min_miou=0.7), grid=GRID)
    assert (r.config.heads, r.cost) == ((1,), 1.5)
    # anytime head 0 then final: seg0 + 0.25 + fused (seg1 + final) 2.5
    r = search(memo, costs, "anytime", Objective(max_drop=0.0), grid=GRID, max_exits=1)
    assert r.cost == pytest.approx(1.0 + 0.25 + 2.5)
    inst = instance_dict(r, memo, costs)
    assert inst["cost_table"]["stretches"] == [{"from": 0, "to": 2, "cost": 3.2}, {"from": 1, "to": 2, "cost": 2.5}]
    assert simulate(memo, inst)["expected_cost"] == simulate(memo, inst, costs)["expected_cost"] == r.cost


def test_final_only():
    r = run("final-only", Objective(max_drop=0.0))
    assert (r.config.heads, r.config.final, r.cost, r.miou) == ((), True, 4.0, 1.0)
    with pytest.raises(MessError, match="no final-only configuration costs <= 3 gmacs; the cheapest is final"):
        run("final-only", Objective(budget=3.0))


@pytest.mark.parametrize("objective, head, cost, miou", [
    (Objective(min_miou=0.7), 1, 1.5, M3),  # head 1 beats head 2 (same mIoU, 2.25)
    (Objective(min_miou=0.5), 0, 1.25, M2),
    (Objective(max_drop=0.0), None, 4.0, 1.0),  # only the final exit reaches 100
    (Objective(budget=3.0), 1, 1.5, M3),  # heads 1 and 2 tie on mIoU: the cheaper wins
    (Objective(budget=1.3), 0, 1.25, M2),
])
def test_budgeted(objective, head, cost, miou):
    r = run("budgeted", objective)
    assert r.config.heads == (() if head is None else (head,))
    assert r.config.final == (head is None)
    assert (r.cost, r.miou) == (pytest.approx(cost), pytest.approx(miou))


def test_budgeted_infeasible_names_the_cheapest():
    with pytest.raises(MessError, match=r"no budgeted configuration costs <= 1 gmacs; the cheapest is e0:c0b0r0h0 "
                                        r"at 58\.33 mIoU, cost 1\.25 gmacs"):
        run("budgeted", Objective(budget=1.0))


def test_anytime_final_accuracy_and_min_accuracy():
    # Accuracy = the final's (1.0) for every set: the cheapest set wins; heads 0 and 2 tie at 4.25, order decides.
    r = run("anytime", Objective(min_miou=0.9))
    assert (r.config.heads, r.cost, r.miou) == ((0,), 4.25, 1.0)
    assert r.exit_miou == pytest.approx((M2, 1.0))
    # Worst exit must reach 0.7: head 2 alone (4.25) beats head 1 (4.5) and every pair.
    r = run("anytime", Objective(min_miou=0.7), anytime_accuracy="min")
    assert (r.config.heads, r.cost, r.miou) == ((2,), 4.25, pytest.approx(M3))
    r = run("anytime", Objective(budget=4.6), anytime_accuracy="min")
    assert (r.config.heads, r.cost) == ((2,), 4.25)
    # Nothing reaches 90: heads 1 and 2 tie as the most accurate (77.5); the cheaper, head 2, is named.
    with pytest.raises(MessError, match=r"no anytime configuration reaches 90\.00 mIoU \(final-only 100\.00\); the most "
                                        r"accurate is e1:c0b0r0h0 > final at 77\.50 mIoU, cost 4\.25 gmacs"):
        run("anytime", Objective(min_miou=0.9), anytime_accuracy="min")


def test_input_dependent_min_cost():
    # 100 mIoU: head 1 alone lets images 0-2 out (all right) and image 3 run on: 1.5 + 0.25 * 3 = 2.25.
    # (th_img 0.5 and 1.0, th_pix 0.5 and 0.75 tie there; the enumeration order picks th_img 0.5, th_pix 0.5.)
    r = run("input-dependent", Objective(max_drop=0.0))
    assert (r.config.heads, r.config.th_img, r.config.th_pix) == ((1,), (0.5,), 0.5)
    assert (r.cost, r.miou) == (2.25, 1.0)
    assert r.exit_fractions == (0.75, 0.25)
    # 70 mIoU: head 1 then head 2, image 3 leaves wrongly at head 2: 1.5 + 0.25 * 1.25 = 1.8125.
    r = run("input-dependent", Objective(min_miou=0.7))
    assert (r.config.heads, r.config.th_img, r.config.th_pix) == ((1, 2), (0.5, 0.5), 0.5)
    assert (r.cost, r.miou, r.exit_fractions) == (1.8125, pytest.approx(M3), (0.75, 0.25, 0.0))
    assert r.n_evaluated < r.n_configs  # costlier families were pruned


def test_input_dependent_max_miou_and_infeasible():
    r = run("input-dependent", Objective(budget=2.3))
    assert (r.config.heads, r.config.th_img, r.cost, r.miou) == ((1,), (0.5,), 2.25, 1.0)
    r = run("input-dependent", Objective(budget=2.0))
    assert (r.config.heads, r.cost, r.miou) == ((1, 2), 1.8125, pytest.approx(M3))
    with pytest.raises(MessError, match=r"costs <= 1\.5 gmacs; the cheapest is e0:c0b0r0h0@0\.50 > e1:c0b0r0h0@0\.50 "
                                        r"> final \(th_pix 0\.50\) at 58\.33 mIoU, cost 1\.562 gmacs"):
        run("input-dependent", Objective(budget=1.5))


def test_input_dependent_policies_differ():
    # Without edge enhancement heads 0 and 1 never pass: only head 2 at th_pix 0.75, th_img 1 keeps 100 mIoU.
    r = run("input-dependent", Objective(max_drop=0.0), policy="raw", raw_silent=True)
    assert (r.config.heads, r.config.th_img, r.config.th_pix, r.cost) == ((2,), (1.0,), 0.75, 2.75)
    # Mean confidence (no pixel threshold): head 1 passes images 0-2 at th_img 0.5 (0.9 vs image 3's 0.2).
    r = run("input-dependent", Objective(max_drop=0.0), policy="mean")
    assert (r.config.heads, r.config.th_img, r.config.th_pix, r.cost) == ((1,), (0.5,), None, 2.25)


def test_space_too_large_is_refused():
    with pytest.raises(MessError, match=r"got 28 input-dependent configurations with --max-exits 2; expected at most "
                                        r"20; try --max-exits 1"):
        search(hand_memo(), HAND_COSTS, "input-dependent", Objective(max_drop=0.0),
               grid=Grid(th_img=(0.5, 1.0), th_pix=(0.5, 0.75), max_configs=20))


def test_max_exits_limits_the_space():
    one = run("input-dependent", Objective(min_miou=0.7), max_exits=1, keep_points=True)
    assert one.points.n_exits.max() == 1 and one.max_exits == 1
    # Best single exit at >= 77.5: head 1 th_pix .5 (2.25) vs head 0 pix .5 th .5 (2.0, r=3): head 0 wins.
    assert (one.config.heads, one.config.th_img, one.cost) == ((0,), (0.5,), 2.0)
    assert run("input-dependent", Objective(min_miou=0.7)).max_exits == 2
    with pytest.raises(MessError, match="got --max-exits 0; expected at least 1"):
        run("input-dependent", Objective(min_miou=0.7), max_exits=0)


def test_simulate_replays_the_instance():
    memo = hand_memo()
    for setting, objective in [("input-dependent", Objective(min_miou=0.7)), ("budgeted", Objective(min_miou=0.7)),
                               ("anytime", Objective(min_miou=0.7)), ("final-only", Objective(max_drop=0))]:
        r = search(memo, HAND_COSTS, setting, objective, grid=GRID)
        inst = instance_dict(r, memo, HAND_COSTS)
        for sim in (simulate(memo, inst, HAND_COSTS), simulate(memo, inst)):  # costs given, or the instance's own
            assert sim["miou"] == pytest.approx(r.miou * 100)
            assert sim["expected_cost"] == pytest.approx(r.cost)
            assert list(sim["exit_fractions"].values()) == pytest.approx(list(r.exit_fractions))
    assert inst["setting"] == "final-only" and inst["exits"] == [] and inst["calibration_miou"] == 100.0
    r = search(memo, HAND_COSTS, "input-dependent", Objective(min_miou=0.7), grid=GRID)
    inst = instance_dict(r, memo, HAND_COSTS)
    assert inst["exits"] == [
        {"exit": 0, "arch": {"crm": 1, "blocks": 1, "rdi": 0, "head": 0}, "graph": "head_e0_c1b1r0h0", "th_img": 0.5},
        {"exit": 1, "arch": {"crm": 0, "blocks": 0, "rdi": 0, "head": 0}, "graph": "head_e1_c0b0r0h0", "th_img": 0.5}]
    assert (inst["th_pix"], inst["final"], inst["expected_cost"], inst["final_only_cost"]) == (0.5, True, 1.8125, 4.0)
    assert inst["calibration_miou"] == pytest.approx(77.5) and inst["objective"]["min_miou"] == pytest.approx(70.0)
    sim = simulate(memo, inst)
    assert sim["exit_histogram"] == {"head_e0_c1b1r0h0": 3, "head_e1_c0b0r0h0": 1, "final": 0}
    assert (sim["miou"], sim["expected_cost"], sim["cost_unit"]) == (pytest.approx(77.5), 1.8125, "gmacs")
    # Heads dearer than the whole network: the input-dependent optimum has no early exit and no th_pix.
    dear = make_cost_table("macs", [1.0, 1.0], [9.0, 9.0, 9.0], 2.0)
    r = search(memo, dear, "input-dependent", Objective(max_drop=0.0), grid=GRID)
    inst0 = instance_dict(r, memo, dear)
    assert (inst0["exits"], inst0["th_pix"], inst0["expected_cost"]) == ([], None, 4.0)
    assert simulate(memo, inst0)["exit_histogram"] == {"final": 4}
    inst["exits"][0]["arch"]["crm"] = 3
    with pytest.raises(MessError, match="got instance exit e0:c3b1r0h0 absent from the memo"):
        simulate(memo, inst)
