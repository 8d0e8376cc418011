"""The pieces of benchmarks/lut_fidelity.py, flops_vs_latency.py and run_all.py that can be checked without a
real export: Spearman against a plain loop, Table 1 predictions of forced paths against hand sums on a
hand-made latency table, and the runner's bookkeeping."""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import calibration_size as cs  # noqa: E402
from benchmarks import exit_cost_by_size as ecs  # noqa: E402
from benchmarks import flops_vs_latency as fvl  # noqa: E402
from benchmarks import lut_fidelity as lf  # noqa: E402
from benchmarks import run_all  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402
from mess_edge.search import costs_from_lut  # noqa: E402
from mess_edge.search.memo import arch_dict, head_graph_name  # noqa: E402
from mess_edge.search.optimizer import Objective, search  # noqa: E402
from mess_edge.search.risk import subset_memo  # noqa: E402
from mess_edge.search.synthetic import random_costs, random_memo  # noqa: E402


# -- Spearman ------------------------------------------------------------------------------------------------

def ranks_loop(a):
    """Average 1-based ranks the obvious way: 1 + (values below) + (ties, self excluded) / 2."""
    return [1 + sum(b < v for b in a) + (sum(b == v for b in a) - 1) / 2.0 for v in a]


def spearman_loop(x, y):
    rx, ry = ranks_loop(list(x)), ranks_loop(list(y))
    n = len(rx)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


@pytest.mark.parametrize("seed", range(6))
def test_spearman_matches_a_rank_loop_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    x = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
    y = x * rng.uniform(-1, 1) + rng.integers(0, 4, n)
    np.testing.assert_allclose(fvl.average_ranks(x), ranks_loop(list(x)), rtol=0, atol=1e-12)
    assert fvl.spearman(x, y) == pytest.approx(spearman_loop(x, y), abs=1e-12)


def test_spearman_known_values():
    assert fvl.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert fvl.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1, 2.5, 2.5, 4; y = 1, 2, 3, 4: rho = 4.5 / sqrt(4.5 * 5)
    assert fvl.spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert np.isnan(fvl.spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no ranking
    with pytest.raises(ValueError):
        fvl.spearman([1, 2], [1, 2, 3])


# -- Table 1 predictions of forced paths on a hand-made table ------------------------------------------------

SEG = [1.0, 0.5, 2.0]   # ms, segment_0..2
FINAL = 4.0             # ms, rest of the backbone + final head + its upsample
UP = 0.25               # ms, upsample of an early exit's logits


def hand_made():
    """(memo, costs, head ms by memo head): 3 exit points x 2 heads, the lut written by hand."""
    memo = random_memo(n_points=3, heads_per_point=2, n_images=8, n_classes=4, gt_pixels=64, native_pixels=16)
    logits = [{"name": "logits", "shape": [1, 4, 4, 4]}, {"name": "confidence", "shape": [1]}]
    graphs = [{"name": "segment_{}".format(k), "role": "segment", "index": k, "gmacs": 1.0} for k in range(3)]
    head_ms = {}
    for h in range(memo.n_heads):
        name = head_graph_name(memo.head_exit[h], memo.head_arch[h])
        graphs.append({"name": name, "role": "head", "exit": int(memo.head_exit[h]),
                       "arch": arch_dict(memo.head_arch[h]), "gmacs": 0.1, "outputs": logits})
        head_ms[h] = 0.125 * (h + 1)
    graphs += [{"name": "final", "role": "final", "gmacs": 2.0, "outputs": [{"name": "labels", "shape": [1, 16, 16]}]},
               {"name": "upsample_4x4", "role": "upsample", "gmacs": 0.0,
                "inputs": [{"name": "logits", "shape": [1, 4, 4, 4]}], "outputs": [{"name": "labels"}]}]
    manifest = {"exit_points": [0, 1, 2], "graphs": graphs}
    lut = {"segments": [{"name": "segment_{}".format(k), "index": k, "median_ms": SEG[k], "mean_ms": SEG[k]}
                        for k in range(3)],
           "heads": [{"name": g["name"], "exit": g["exit"], "arch": g["arch"], "median_ms": head_ms[h],
                      "mean_ms": head_ms[h]}
                     for h, g in enumerate(g for g in graphs if g["role"] == "head")],
           "final": {"name": "final", "median_ms": FINAL, "mean_ms": FINAL},
           "upsamples": [{"name": "upsample_4x4", "median_ms": UP, "mean_ms": UP}]}
    return memo, costs_from_lut(lut, manifest, memo), head_ms


def test_forced_paths_predict_the_hand_sums():
    memo, costs, head_ms = hand_made()
    at = lambda p, k: int(np.flatnonzero(memo.head_exit == p)[k])  # noqa: E731
    final_only = lf.make_instance(memo, [], "final-only")
    assert lf.predict(memo, costs, final_only) == pytest.approx(1.0 + 0.5 + 2.0 + 4.0)
    h = at(1, 1)
    budgeted = lf.make_instance(memo, [h], "budgeted", final=False)  # run to exit 1: seg 0, 1, head, upsample
    assert lf.predict(memo, costs, budgeted) == pytest.approx(1.0 + 0.5 + head_ms[h] + UP)
    a, b = at(0, 0), at(2, 1)
    anytime = lf.make_instance(memo, [a, b], "anytime")  # every segment, both heads, final; no early upsample
    assert lf.predict(memo, costs, anytime) == pytest.approx(1.0 + 0.5 + 2.0 + head_ms[a] + head_ms[b] + 4.0)


def test_forced_paths_price_fused_stretches_from_the_table():
    """With lut "stretches" the prediction reads the fused graphs the chain runs, not the sums of their pieces."""
    memo, _, head_ms = hand_made()
    at = lambda p, k: int(np.flatnonzero(memo.head_exit == p)[k])  # noqa: E731
    lut_costs = hand_made()[1]
    fused = dataclasses.replace(lut_costs, stretches=((0, 3, 6.0), (0, 1, 1.25), (1, 3, 5.5)))
    assert lf.predict(memo, fused, lf.make_instance(memo, [], "final-only")) == 6.0  # not 7.5
    h = at(1, 0)
    budgeted = lf.make_instance(memo, [h], "budgeted", final=False)  # graphs 0..1 fused
    assert lf.predict(memo, fused, budgeted) == pytest.approx(1.25 + head_ms[h] + UP)
    a = at(0, 1)
    anytime = lf.make_instance(memo, [a], "anytime")  # segment 0 | head | segments 1, 2 + final fused
    assert lf.predict(memo, fused, anytime) == pytest.approx(1.0 + head_ms[a] + 5.5)


def test_stage_keys_name_the_fused_stretches_a_chain_ran():
    from types import SimpleNamespace as NS

    plan = NS(segments=["segment_0", "segment_1", "segment_2"], exits=[NS(exit=1)])
    chain = NS(plan=plan, backend=NS(skip={"segment_0", "segment_2"}))  # [0, 1] | head | [2, final]
    assert lf.stage_keys(chain) == {"segment_0": None, "segment_2": None, "segment_1": (0, 1), "final": (2, 3)}
    plan.exits = [NS(exit=0), NS(exit=1), NS(exit=2)]  # every feature read: nothing fused
    assert lf.stage_keys(NS(plan=plan, backend=NS(skip=set()))) == {}


def test_input_dependent_prediction_is_the_mean_of_the_paths_taken():
    memo, costs, head_ms = hand_made()
    a, b = int(np.flatnonzero(memo.head_exit == 0)[0]), int(np.flatnonzero(memo.head_exit == 2)[0])
    inst = lf.make_instance(memo, [a, b], "input-dependent", th_img=[0.5, 0.5], th_pix=0.5)
    ga, gb = inst["exits"][0]["graph"], inst["exits"][1]["graph"]
    path = {ga: 1.0 + head_ms[a] + UP,
            gb: 1.0 + head_ms[a] + 0.5 + 2.0 + head_ms[b] + UP,
            "final": 1.0 + head_ms[a] + 0.5 + 2.0 + head_ms[b] + 4.0}
    taken = [ga, "final", gb, "final", ga, ga, "final", gb]
    assert lf.predict(memo, costs, inst, taken) == pytest.approx(np.mean([path[g] for g in taken]))
    # Without the chain's exits the memo's decide (p_n = the memo's fractions), image by image the same sum.
    by_memo = lf.memo_exits(memo, inst)
    assert lf.predict(memo, costs, inst) == pytest.approx(np.mean([path[g] for g in by_memo]))


def test_error_summary_and_memo_subset():
    s = lf.error_summary([0.01, 0.02, 0.03, 0.04, 0.10])
    assert (s["median"], s["max"]) == (0.03, 0.10) and s["p90"] == pytest.approx(0.076)
    memo = random_memo(n_points=2, heads_per_point=2, n_images=6, n_classes=3, gt_pixels=16, native_pixels=4)
    sub = lf.memo_subset(memo, [1, 4])
    assert sub.n_images == 2 and sub.n_heads == memo.n_heads
    np.testing.assert_array_equal(sub.confusion[:, 1], memo.confusion[:, 4])


def test_synthetic_accuracy_keeps_the_heads_and_images():
    memo = random_memo(n_points=3, heads_per_point=2, n_images=5, n_classes=4, gt_pixels=64, native_pixels=16)
    syn = fvl.synthetic_accuracy(memo, seed=1)
    np.testing.assert_array_equal(syn.head_exit, memo.head_exit)
    np.testing.assert_array_equal(syn.head_arch, memo.head_arch)
    assert syn.confusion.shape == memo.confusion.shape and syn.meta["accuracy"] == "synthetic"
    assert syn.head_miou()[-1] > syn.head_miou()[0]  # the final exit beats the shallowest head


def test_build_reruns_only_what_is_stale(tmp_path, monkeypatch):
    """A built stage is skipped; a table without "stretches", or --reprofile, runs the profile again (only it)."""
    ran = []

    def fake_cli(*args):
        ran.append(args[0])
        if args[0] == "profile":
            with open(os.path.join(args[1], "lut.json"), "w") as f:
                json.dump({"stretches": []}, f)
        else:  # create the stage's output
            out = {"data": "data/digitscenes.json", "train": args[-1], "export": "onnx/manifest.json",
                   "calibrate": "memo.npz", "build": "engines/engine.json"}[args[0]]
            path = out if os.path.isabs(out) else os.path.join(str(tmp_path), out)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()

    monkeypatch.setattr(lf, "cli", fake_cli)
    build = lambda **kw: lf.build_artifacts(str(tmp_path), log=lambda *a: None, **kw)  # noqa: E731
    art = build()
    assert ran == ["data", "train", "train", "export", "calibrate", "build", "profile"]
    assert art.lut_path == os.path.join(str(tmp_path), "engines", "lut.json")
    del ran[:]
    build()
    assert ran == []
    build(redo=("profile",))
    assert ran == ["profile"]
    with open(art.lut_path, "w") as f:
        json.dump({"segments": []}, f)  # a table from before stretches were profiled
    build()
    assert ran == ["profile", "profile"]


def test_presets_run_apart_with_the_other_options():
    argv = ["--preset", "cpu-drn", "--threads", "1", "--preset=cpu-mbv2", "--quick", "--preset", "cpu-mbv2"]
    assert lf.without_option(argv, "--preset") == ["--threads", "1", "--quick"]


def test_artifact_options_must_come_together():
    ns = argparse.Namespace(engines="e", memo=None, onnx=None, lut=None, data=None, work=None, threads=None)
    with pytest.raises(MessError, match="got only --engines; expected --engines DIR and --memo FILE together"):
        lf.resolve_artifacts(ns, "lut_fidelity", 0.3)
    ns = argparse.Namespace(engines=None, memo=None, onnx="o", lut=None, data=None, work=None, threads=None)
    with pytest.raises(MessError, match="got --onnx/--lut without --engines and --memo"):
        lf.resolve_artifacts(ns, "lut_fidelity", 0.3)


# -- exit_cost_by_size ------------------------------------------------------------------------------------------

def test_exit_path_ratios_price_the_chain_as_it_runs():
    t = lambda v: {"median_ms": v + 1, "mean_ms": v}  # noqa: E731 (means are what the search prices)
    lut = {"segments": [t(2.0), t(3.0)], "final": t(5.0), "upsample": t(0.5),
           "heads": [dict(t(1.0), name="head_e0_c0b0r0h0"), dict(t(0.2), name="head_e0_c1b0r0h0"),
                     dict(t(0.4), name="head_e1_c0b0r0h0")],
           "stretches": [dict(t(7.0), **{"from": 0, "to": 2})]}  # segments 0..final fused: 7 ms, not 10
    best, final = ecs.path_ratios(lut)
    assert final == 7.0
    assert best[0] == ("head_e0_c1b0r0h0", pytest.approx((2.0 + 0.2 + 0.5) / 7.0))
    assert best[1] == ("head_e1_c0b0r0h0", pytest.approx((2.0 + 3.0 + 0.4 + 0.5) / 7.0))
    manifest = {"graphs": [{"name": "segment_0", "role": "segment", "gmacs": 1.0},
                           {"name": "segment_1", "role": "segment", "gmacs": 2.0},
                           {"name": "final", "role": "final", "gmacs": 5.0},
                           {"name": "head_e0_c0b0r0h0", "role": "head", "gmacs": 0.5},
                           {"name": "head_e1_c0b0r0h0", "role": "head", "gmacs": 0.1}]}
    macs = ecs.mac_ratios(manifest)
    assert macs[0] == ("head_e0_c0b0r0h0", pytest.approx(1.5 / 8.0))
    assert macs[1] == ("head_e1_c0b0r0h0", pytest.approx(3.1 / 8.0))


# -- run_all bookkeeping ----------------------------------------------------------------------------------------

def test_run_all_finds_quick_support_and_headlines(tmp_path, monkeypatch):
    assert run_all.takes_option("lut_fidelity", "--quick") and run_all.takes_option("flops_vs_latency", "--quick")
    assert not run_all.takes_option("soak", "--quick")
    names = run_all.discover()
    assert names[:2] == ["search_speed", "lut_fidelity"] and "flops_vs_latency" in names and "run_all" not in names
    monkeypatch.setattr(run_all, "RESULTS", str(tmp_path))
    (tmp_path / "a.md").write_text("# A\n\n| x |\n|---|\n\nTargets: 3 ms (met).\n")
    (tmp_path / "b.md").write_text("# B\n\nsome prose\n")
    (tmp_path / "b.json").write_text(json.dumps({"headline": "median 2% (met)"}))
    assert run_all.headline("a")[0] == "Targets: 3 ms (met)."
    assert run_all.headline("b")[0] == "median 2% (met)"
    # when: the date the results record, not the file's mtime (a fresh clone's)
    (tmp_path / "b.json").write_text(json.dumps({"headline": "x", "conditions": {"date": "2026-11-26 19:53"}}))
    assert run_all.headline("b")[2] == "2026-11-26 19:53"
    assert run_all.headline("a")[2] == time.strftime("%Y-%m-%d %H:%M",
                                                     time.localtime(os.path.getmtime(str(tmp_path / "a.md"))))
    assert run_all.headline("a", since=os.path.getmtime(str(tmp_path / "a.md")) + 10) == (None, None, None)


def test_run_all_records_a_failure_and_goes_on(tmp_path, monkeypatch):
    scripts, results = tmp_path / "bench", tmp_path / "results"
    scripts.mkdir()
    results.mkdir()
    (scripts / "bad.py").write_text("import sys\nsys.exit(3)\n")
    (scripts / "good.py").write_text(
        "import json, os, sys\nout = os.environ['BENCH_OUT']\nassert sys.argv[1:] == ['--quick']\n"
        "open(os.path.join(out, 'good.md'), 'w').write('# Good\\n\\nTargets: 1 ms (met).\\n')\n"
        "json.dump({'headline': '1 ms (met)'}, open(os.path.join(out, 'good.json'), 'w'))\n"
        "# takes \"--quick\"\n")
    monkeypatch.setenv("BENCH_OUT", str(results))
    for attr, value in (("HERE", str(scripts)), ("RESULTS", str(results)), ("LOGS", str(tmp_path / "logs"))):
        monkeypatch.setattr(run_all, attr, value)
    assert run_all.main(["--quick", "--only", "bad,good"]) == 1
    summary = (results / "SUMMARY.md").read_text()
    assert "| bad | failed (exit 3) |" in summary
    assert "| good | ok |" in summary and "| 1 ms (met) |" in summary and "### Good" in summary
    assert "| lut_fidelity | absent (no script) |" in summary
    with pytest.raises(SystemExit, match="got --only nope; expected names among bad,good"):
        run_all.main(["--only", "nope"])


def test_run_all_gives_flops_vs_latency_a_trained_export_when_there(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "TRAINED_DRN", str(tmp_path))
    assert "--work" in run_all.command("flops_vs_latency", quick=True)
    for f in ("onnx/manifest.json", "engines/lut.json", "memo_cal.npz"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("{}")
    cmd = run_all.command("flops_vs_latency", quick=True)
    assert cmd[2:] == ["--quick", "--onnx", str(tmp_path / "onnx"), "--engines", str(tmp_path / "engines"),
                       "--memo", str(tmp_path / "memo_cal.npz")]


def test_calibration_size_draws_replay_each_choice_on_the_test_memo():
    pool = random_memo(n_points=3, heads_per_point=2, n_images=160, n_classes=4, gt_pixels=64, native_pixels=16,
                       seed=5)
    test = random_memo(n_points=3, heads_per_point=2, n_images=50, n_classes=4, gt_pixels=64, native_pixels=16,
                       seed=6)
    costs = random_costs(pool, 3, seed=5)
    rows = cs.measure(pool, test, costs, sizes=[80, 160], drops=[1.0, 5.0], draws=2, delta=0.1)
    assert sorted(rows) == sorted((n, d, p) for n in (80, 160) for d in (1.0, 5.0) for p in cs.PROMISES)
    assert all(len(v) == 2 for v in rows.values())
    for k in range(2):  # the plain choice of draw k, found again by hand on the same subset
        idx = np.sort(np.random.default_rng(2000 + k).permutation(160)[:80])
        plain = search(subset_memo(pool, idx), costs, "input-dependent", Objective(max_drop=0.05))
        assert rows[(80, 5.0, "calibration")][k] == pytest.approx(
            (cs.held_out_drop(test, plain, "edge"), plain.final_only_cost / plain.cost))
    whole = search(pool, costs, "input-dependent", Objective(max_drop=0.01))  # N = the pool: every image
    assert rows[(160, 1.0, "calibration")][0][1] == pytest.approx(whole.final_only_cost / whole.cost)
    table = {(r["n_cal"], r["max_drop_pp"], r["promise"]): r for r in cs.table(rows)}
    r = table[(80, 1.0, "new-images")]
    drops = [x[0] for x in rows[(80, 1.0, "new-images")]]
    assert r["within_budget"] == np.mean(np.array(drops) <= 1.0) and r["mean_test_drop_pp"] == pytest.approx(
        np.mean(drops))
    for n in (80, 160):  # the promise never predicts more speedup than the plain choice on the same images
        for d in (1.0, 5.0):
            assert table[(n, d, "new-images")]["mean_predicted_speedup"] <= (
                table[(n, d, "calibration")]["mean_predicted_speedup"] + 1e-9)

