"""Risk-controlled search (mess_edge.search.risk): the bootstrap bound, the controlled choice, the CLI promise."""

import json

import numpy as np
import pytest

from mess_edge.cli import main
from mess_edge.errors import MessError
from mess_edge.search.optimizer import Objective, search
from mess_edge.search.risk import Promise, controlled_search, subset_memo, ucb_drop
from mess_edge.search.synthetic import random_costs, random_memo


def image_stats(tp, gt, pred):
    """[I, 3] per-image stats of one class: (TP, ground-truth pixels, predicted pixels)."""
    return np.stack([tp, gt, pred], axis=1).astype(np.float64)


def test_ucb_equals_the_drop_when_every_image_is_alike():
    # Every image identical: every resample has the same IoU, so the bound is the exact drop (0.8 - 0.6).
    ref = image_stats(np.full(50, 80), np.full(50, 100), np.full(50, 80))  # IoU 80 / 100
    cfg = image_stats(np.full(50, 60), np.full(50, 100), np.full(50, 60))  # IoU 60 / 100
    assert ucb_drop(ref, cfg, 0.1) == pytest.approx(0.2, abs=1e-12)
    assert ucb_drop(ref, ref, 0.1) == 0.0
    assert ucb_drop(0.7, cfg, 0.1) == pytest.approx(0.1, abs=1e-12)  # a fixed reference (--min-miou)


def test_ucb_covers_the_population_drop_at_level_one_minus_delta():
    # Population: a config that gets a share p_i of each image's pixels right and predicts nothing else
    # (IoU = TP / GT), against a perfect reference: the population drop is 1 - sum(TP) / sum(GT). The bound
    # must lie above it in ~90 % of calibration draws (>= 80 of 100 allows for the bootstrap's slack).
    rng = np.random.default_rng(3)
    big = 200000
    gt_pop, p_pop = rng.integers(50, 150, big), rng.beta(8, 2, big)
    tp = p_pop * gt_pop
    true_drop = 1 - tp.sum() / gt_pop.sum()
    covered = 0
    for t in range(100):
        i = rng.integers(0, big, 100)
        ref = image_stats(gt_pop[i], gt_pop[i], gt_pop[i])
        cfg = image_stats(tp[i], gt_pop[i], tp[i])  # the missed pixels go to another class: FN only
        covered += ucb_drop(ref, cfg, 0.1, n_bootstrap=400, seed=t) >= true_drop
    assert covered >= 80


@pytest.fixture(scope="module")
def space():
    memo = random_memo(n_points=3, heads_per_point=4, n_images=300, seed=1)
    return memo, random_costs(memo, 3, seed=1)


@pytest.mark.parametrize("max_drop", [0.005, 0.01, 0.02])
def test_controlled_choice_is_never_faster_but_riskier(space, max_drop):
    memo, costs = space
    objective = Objective(max_drop=max_drop)
    plain = search(memo, costs, "input-dependent", objective)
    ctrl, report = controlled_search(memo, costs, "input-dependent", objective, Promise("new-images"))
    assert ctrl.cost >= plain.cost - 1e-12
    assert ctrl.final_only_miou - ctrl.miou <= max_drop + 1e-12  # still passes the plain constraint
    assert report["ucb_drop_pp"] <= max_drop * 100 + 1e-9
    assert report["n_order_images"] + report["n_test_images"] == 300 and report["n_certified"] >= 1


def test_an_impossible_drop_certifies_final_only(space):
    memo, costs = space
    ctrl, report = controlled_search(memo, costs, "input-dependent", Objective(max_drop=0.0), Promise("new-images"))
    assert ctrl.description == "final" and report["ucb_drop_pp"] == 0.0


def test_subset_memo_keeps_the_images_asked_for(space):
    memo, _ = space
    sub = subset_memo(memo, [3, 7])
    assert sub.n_images == 2 and np.array_equal(sub.confusion[:, 1], memo.confusion[:, 7])


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.5, 1.5])
def test_bad_delta_is_refused(delta):
    with pytest.raises(MessError, match=r"got --delta .*; expected a probability in \(0, 1\)"):
        Promise("new-images", delta=delta)


def _files(tmp_path):
    from mess_edge.artifacts import write_json_atomic
    from mess_edge.search.memo import save_memo
    from test_search_files import CKPT, N_POINTS, make_manifest

    memo = random_memo(n_points=N_POINTS, heads_per_point=3, n_images=120, n_classes=3, n_bins=20, gt_pixels=200,
                       native_pixels=16, seed=3, checkpoint_sha256=CKPT)
    paths = {k: str(tmp_path / v) for k, v in (("memo", "memo.npz"), ("manifest", "manifest.json"))}
    save_memo(paths["memo"], memo)
    write_json_atomic(paths["manifest"], make_manifest(memo))
    return paths


def run_cli(capsys, *args):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_states_its_promise_and_records_it(tmp_path, capsys):
    p = _files(tmp_path)
    out = str(tmp_path / "inst.json")
    base = ["search", "--memo", p["memo"], "--manifest", p["manifest"], "--setting", "input-dependent",
            "--max-drop", "1"]
    code, text = run_cli(capsys, *base, "--out", out)
    assert code == 0, text
    assert ("promise          test mIoU drop <= 1 pp on new images with probability >= 0.9 (Learn-then-Test, "
            "120 calibration images)") in text
    with open(out) as f:
        inst = json.load(f)
    assert inst["promise"]["kind"] == "new-images" and inst["promise"]["delta"] == 0.1
    assert inst["promise"]["n_order_images"] == 60 and inst["expected_cost"] >= inst["promise"]["plain_expected_cost"]
    out2 = str(tmp_path / "plain.json")
    code, text = run_cli(capsys, *base, "--promise", "calibration", "--delta", "0.2", "--out", out2)
    assert code == 0, text
    assert "promise          drop <= 1 pp on the calibration images only (120 images)" in text
    with open(out2) as f:
        assert json.load(f)["promise"] == {"kind": "calibration", "n_calibration_images": 120}


def test_cli_bad_delta_is_one_line(tmp_path, capsys):
    p = _files(tmp_path)
    code, text = run_cli(capsys, "search", "--memo", p["memo"], "--manifest", p["manifest"], "--setting",
                         "input-dependent", "--max-drop", "1", "--delta", "1.5", "--out", str(tmp_path / "i.json"))
    assert code == 2
    assert text.strip() == ("error: got --delta 1.5; expected a probability in (0, 1), the chance the promise may "
                            "fail; try --delta 0.1")
    code, text = run_cli(capsys, "search", "--memo", p["memo"], "--manifest", p["manifest"], "--setting",
                         "input-dependent", "--budget-gmacs", "1", "--promise", "new-images", "--out",
                         str(tmp_path / "i.json"))
    assert code == 2 and "got --promise new-images with a cost budget" in text and text.count("\n") == 1
