"""Search inputs on disk: loading, refusing memo/manifest/lut that do not belong together, the CLI end to end."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from mess_edge.artifacts import sha256_file, write_json_atomic
from mess_edge.cli import main
from mess_edge.errors import MessError
from mess_edge.search import load_search_inputs, simulate
from mess_edge.search.memo import arch_dict, head_graph_name, load_memo, save_memo
from mess_edge.search.synthetic import random_memo

CKPT = "c0ffee" * 10 + "abcd"
N_POINTS = 2


def graph(name, role, gmacs, out_hw=None, **extra):
    g = {"name": name, "role": role, "file": name + ".onnx", "sha256": "0" * 64, "gmacs": gmacs, "inputs": [],
         "outputs": []}
    if out_hw is not None:
        g["outputs"] = [{"name": "logits", "shape": [1, 3] + list(out_hw), "dtype": "float32"}]
    g.update(extra)
    return g


def make_manifest(memo, checkpoint=CKPT):
    """A manifest for ``memo``: exit point k at stride 8 * 2**k, one upsample graph per output resolution."""
    hw = {0: (16, 16), 1: (8, 8)}
    graphs = [graph("segment_{}".format(k), "segment", 0.5 + k, index=k) for k in range(N_POINTS)]
    for h in range(memo.n_heads):
        e = int(memo.head_exit[h])
        graphs.append(graph(head_graph_name(e, memo.head_arch[h]), "head", 0.01 * (h + 1), hw[e], exit=e,
                            arch=arch_dict(memo.head_arch[h])))
    final = graph("final", "final", 2.0)  # ends in its own upsample: output "labels", no upsample cost after it
    final["outputs"] = [{"name": "labels", "shape": [1, 128, 128], "dtype": "int32"}]
    graphs.append(final)
    for name, size, gmacs in (("upsample_16x16", 16, 0.004), ("upsample_8x8", 8, 0.002)):
        graphs.append(graph(name, "upsample", gmacs, inputs=[{"name": "logits", "shape": [1, 3, size, size]}]))
    graphs.append(graph("monolithic", "monolithic", 3.5))
    return {"format": "mess-edge-manifest/1", "num_classes": memo.n_classes, "input_hw": [128, 128],
            "checkpoint_sha256": checkpoint, "exit_points": [{"index": k} for k in range(N_POINTS)], "graphs": graphs}


def make_lut(manifest, manifest_sha, drop=None):
    def stats(ms, name):
        return {"name": name, "median_ms": ms, "mean_ms": ms, "p90_ms": ms, "p99_ms": ms, "std_ms": 0.0, "n": 10}

    heads = [dict(stats(0.1 * (i + 1), g["name"]), exit=g["exit"], arch=g["arch"])
             for i, g in enumerate(g for g in manifest["graphs"] if g["role"] == "head") if g["name"] != drop]
    return {"format": "mess-edge-lut/1", "device": {"name": "test"}, "backend": "ort", "precision": "fp32",
            "input_size": [128, 128], "manifest_sha256": manifest_sha, "checkpoint_sha256": CKPT, "conditions": {},
            "segments": [dict(stats(1.0 + k, "segment_{}".format(k)), index=k) for k in range(N_POINTS)],
            "heads": heads, "final": stats(4.0, "final"), "upsample": stats(0.05, "upsample_16x16"),
            "upsamples": [stats(0.05, "upsample_16x16"), stats(0.03, "upsample_8x8")],
            "monolithic": stats(7.0, "monolithic")}


@pytest.fixture()
def files(tmp_path):
    memo = random_memo(n_points=N_POINTS, heads_per_point=3, n_images=30, n_classes=3, n_bins=20, gt_pixels=200,
                       native_pixels=16, seed=3, checkpoint_sha256=CKPT)
    paths = {k: tmp_path / v for k, v in (("memo", "memo.npz"), ("manifest", "manifest.json"), ("lut", "lut.json"))}
    save_memo(paths["memo"], memo)
    manifest = make_manifest(memo)
    write_json_atomic(paths["manifest"], manifest)
    write_json_atomic(paths["lut"], make_lut(manifest, sha256_file(paths["manifest"])))
    return {k: str(v) for k, v in paths.items()}


def test_memo_round_trip_and_cost_tables(files):
    memo = load_memo(files["memo"])
    assert memo.n_heads == 6 and memo.meta["checkpoint_sha256"] == CKPT and memo.hist_edge.shape == (7, 30, 20)
    macs = load_search_inputs(files["memo"], files["manifest"]).costs
    assert (macs.model, macs.unit, macs.segment.tolist(), macs.final) == ("macs", "gmacs", [0.5, 1.5], 2.0)
    assert macs.head.tolist() == pytest.approx([0.01 * (h + 1) for h in range(6)])
    # Heads at exit 0 output 16x16 logits, heads at exit 1 8x8: each gets its own upsample; the final graph
    # ends in labels (its upsample is inside it).
    assert macs.upsample.tolist() == [0.004] * 3 + [0.002] * 3 + [0.0]
    inputs = load_search_inputs(files["memo"], files["manifest"], files["lut"])
    assert (inputs.costs.model, inputs.costs.segment.tolist(), inputs.costs.final) == ("latency", [1.0, 2.0], 4.0)
    assert inputs.costs.upsample.tolist() == [0.05] * 3 + [0.03] * 3 + [0.0]
    # A lut with only the spec's single "upsample" entry uses it for every early exit.
    rewrite(files["lut"], lambda lut: lut.pop("upsamples"))
    inputs = load_search_inputs(files["memo"], files["manifest"], files["lut"])
    assert inputs.costs.upsample.tolist() == [0.05] * 6 + [0.0]
    assert inputs.lut_sha256 == sha256_file(files["lut"]) and inputs.checkpoint_sha256 == CKPT


def test_lut_stretches_replace_the_sums_they_measure(files):
    """lut.json "stretches" (optional): the search prices a fused stretch by its own time, everything else by
    the sum of its pieces (segments 1.0, 2.0; final 4.0); a stretch of other graphs or bad indices is refused."""
    sums = load_search_inputs(files["memo"], files["manifest"], files["lut"]).costs
    assert sums.stretches == () and sums.final_only() == 7.0 and sums.span[1, 3] == 6.0
    fused = [{"from": 0, "to": 2, "graphs": ["segment_0", "segment_1", "final"], "median_ms": 6.0, "mean_ms": 6.2},
             {"from": 1, "to": 2, "median_ms": 5.3, "mean_ms": 5.5}]  # "graphs" optional
    rewrite(files["lut"], lambda lut: lut.update(stretches=fused))
    costs = load_search_inputs(files["memo"], files["manifest"], files["lut"]).costs
    assert costs.stretches == ((0, 2, 6.2), (1, 2, 5.5))
    assert (costs.final_only(), costs.span[1, 3], costs.span[0, 2]) == (6.2, 5.5, 3.0)  # span[0, 2]: still a sum
    assert (costs.segment.tolist(), costs.final) == ([1.0, 2.0], 4.0)
    for bad, match in [({"from": 0, "to": 1, "graphs": ["segment_1", "final"], "mean_ms": 1.0},
                        r"got stretch 0..1 of graphs \['segment_1', 'final'\]; expected \['segment_0', 'segment_1'\]"),
                       ({"from": "0", "to": 2, "mean_ms": 1.0}, "expected integers 0 <= from < to <= 2"),
                       ({"from": 1, "to": 3, "mean_ms": 1.0}, "expected integers 0 <= from < to <= 2"),
                       ({"from": 0, "to": 1}, "and a mean_ms"),
                       ({"from": 0, "to": 1, "median_ms": 1.0}, "without mean_ms.*re-running mess-edge profile")]:
        rewrite(files["lut"], lambda lut: lut.update(stretches=[bad]))
        with pytest.raises(MessError, match=match):
            load_search_inputs(files["memo"], files["manifest"], files["lut"])


def test_lut_prices_means_and_the_chain_overhead_per_exit_taken(files):
    """An expected cost is a mean: the search reads mean_ms, not median_ms. The lut's frame_overhead_ms is paid
    once per image at the exit it takes (exits by exit point), so it lands in upsample, final-only included."""
    def skew(lut):  # medians stay; means rise by 10 %
        for e in lut["segments"] + lut["heads"] + lut["upsamples"] + [lut["final"]]:
            e["mean_ms"] = round(e["median_ms"] * 1.1, 6)
        lut["frame_overhead_ms"] = {"final": 0.25, "exits": {"0": 0.5, "1": 0.75}}

    rewrite(files["lut"], skew)
    costs = load_search_inputs(files["memo"], files["manifest"], files["lut"]).costs
    assert costs.segment.tolist() == [1.1, 2.2] and costs.final == 4.4
    memo_exits = [int(e) for e in load_search_inputs(files["memo"], files["manifest"]).memo.head_exit]
    want = [(0.055 if e == 0 else 0.033) + (0.5, 0.75)[e] for e in memo_exits] + [0.25]
    assert costs.overhead == tuple([(0.5, 0.75)[e] for e in memo_exits] + [0.25])
    assert np.allclose(costs.upsample, want) and costs.final_only() == pytest.approx(1.1 + 2.2 + 4.4 + 0.25)
    rewrite(files["lut"], lambda lut: lut.update(frame_overhead_ms={"final": 0.25, "exits": {"0": 0.5}}))
    with pytest.raises(MessError, match=r"frame_overhead_ms .* covering exit points \[0, 1\]; try mess-edge profile"):
        load_search_inputs(files["memo"], files["manifest"], files["lut"])


def rewrite(path, edit):
    with open(path) as f:
        obj = json.load(f)
    edit(obj)
    write_json_atomic(path, obj)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(checkpoint_sha256="ff" * 32),
     r"got checkpoint_sha256 c0ffeec0ffee in the memo and ffffffffffff in the manifest; expected the same"),
    (lambda m: m.update(input_hw=[64, 64]), r"got input_hw \[128, 128\] in the memo and \[64, 64\] in the manifest"),
    (lambda m: m.update(num_classes=5), r"got num_classes 3 in the memo and 5 in the manifest"),
    (lambda m: m.update(graphs=[g for g in m["graphs"] if g["name"] != "head_e1_c0b0r1h0"]),
     r"got memo head e1:c0b0r1h0 absent from the manifest"),
])
def test_memo_and_manifest_that_do_not_belong_together_are_refused(files, edit, message):
    rewrite(files["manifest"], edit)
    with pytest.raises(MessError, match=message) as e:
        load_search_inputs(files["memo"], files["manifest"])
    assert files["memo"] in str(e.value) and files["manifest"] in str(e.value) and "\n" not in str(e.value)


def test_lut_of_another_manifest_or_missing_a_head_is_refused(files):
    rewrite(files["manifest"], lambda m: m["graphs"][0].update(gmacs=0.6))  # now the lut's sha256 is stale
    with pytest.raises(MessError, match=r"lut .*lut.json and manifest .*manifest.json do not belong together: got "
                                        r"manifest_sha256 [0-9a-f]{12} in the lut and [0-9a-f]{12} for the manifest"):
        load_search_inputs(files["memo"], files["manifest"], files["lut"])
    with open(files["manifest"]) as f:
        manifest = json.load(f)
    write_json_atomic(files["lut"], make_lut(manifest, sha256_file(files["manifest"]), drop="head_e0_c0b0r1h0"))
    with pytest.raises(MessError, match=r"lut .*lut.json and manifest .*manifest.json: got no mean_ms for graph "
                                        r"head_e0_c0b0r1h0"):
        load_search_inputs(files["memo"], files["manifest"], files["lut"])


def test_broken_memo_files_are_refused(tmp_path, files):
    with np.load(files["memo"]) as z:
        arrays = dict(z)
    bad = dict(arrays, hist_edge=arrays["hist_edge"][:, :5])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(MessError, match=r"bad.npz: got hist_edge of shape \(7, 5, 20\) with confusion \(7, 30, 3, 3\)"):
        load_memo(str(tmp_path / "bad.npz"))
    del arrays["n_pixels"]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(MessError, match=r"short.npz lacks n_pixels; expected a memo written by mess-edge calibrate"):
        load_memo(str(tmp_path / "short.npz"))


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def test_cli_end_to_end_latency_with_pareto_and_plot(files, tmp_path, capsys):
    out, pareto, plot = (str(tmp_path / n) for n in ("inst.json", "front.csv", "front.png"))
    code, text = cli(capsys, "search", "--memo", files["memo"], "--manifest", files["manifest"], "--lut", files["lut"],
                     "--setting", "input-dependent", "--budget-ms", "5.5", "--pareto", pareto, "--plot", plot,
                     "--out", out)
    assert code == 0, text
    with open(out) as f:
        inst = json.load(f)
    assert (inst["format"], inst["setting"], inst["cost_model"], inst["cost_unit"]) == (
        "mess-edge-instance/1", "input-dependent", "latency", "ms")
    assert inst["memo_sha256"] == sha256_file(files["memo"]) and inst["lut_sha256"] == sha256_file(files["lut"])
    assert inst["manifest_sha256"] == sha256_file(files["manifest"]) and inst["checkpoint_sha256"] == CKPT
    assert inst["expected_cost"] <= 5.5 < inst["final_only_cost"] and inst["objective"]["budget"] == 5.5
    sim = simulate(load_memo(files["memo"]), inst)
    assert sim["miou"] == pytest.approx(inst["calibration_miou"])
    assert sim["expected_cost"] == pytest.approx(inst["expected_cost"]) and sim["cost_unit"] == "ms"
    assert "speedup" in text and "calibration mIoU" in text and "configurations" in text
    with open(pareto) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == inst["search"]["n_configs"] == 1 + 2 * 3 * 11 * 10 + 3 * 3 * 11 * 11 * 10
    chosen = [r for r in rows if r["chosen"] == "1"]
    assert len(chosen) == 1 and float(chosen[0]["cost_ms"]) == pytest.approx(inst["expected_cost"], rel=1e-5)
    front = sorted({(float(r["cost_ms"]), float(r["miou_percent"])) for r in rows if r["pareto"] == "1"})
    assert len(front) > 3 and all(b[0] > a[0] and b[1] > a[1] for a, b in zip(front, front[1:]))  # rises with cost
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_macs_and_user_mistakes(files, tmp_path, capsys):
    out = str(tmp_path / "inst.json")
    base = ["search", "--memo", files["memo"], "--manifest", files["manifest"], "--out", out]
    code, text = cli(capsys, *base, "--setting", "budgeted", "--max-drop", "5")
    assert code == 0, text
    with open(out) as f:
        inst = json.load(f)
    assert (inst["cost_model"], inst["lut_sha256"], inst["objective"]["max_drop_pp"]) == ("macs", None, 5.0)
    assert inst["calibration_miou"] >= inst["final_only_miou"] - 5.0
    code, text = cli(capsys, *base, "--setting", "budgeted", "--budget-ms", "3")
    assert code == 2 and "error: got --budget-ms without --lut; expected a latency table" in text
    code, text = cli(capsys, *base, "--setting", "budgeted", "--budget-gmacs", "3", "--max-drop", "1")
    assert code == 2 and "error: got --max-drop and --budget-gmacs; expected exactly one of" in text
    code, text = cli(capsys, *base, "--setting", "input-dependent", "--budget-gmacs", "0.1")
    assert code == 2 and "error: no input-dependent configuration costs <= 0.1 gmacs; the cheapest is" in text
    rewrite(files["manifest"], lambda m: m.update(checkpoint_sha256="ff" * 32))
    code, text = cli(capsys, *base, "--setting", "budgeted", "--max-drop", "1")
    assert code == 2 and "do not belong together: got checkpoint_sha256" in text and files["memo"] in text


def test_search_imports_without_torch_or_matplotlib():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mess_edge.search, mess_edge.search.commands, mess_edge.search.driver, mess_edge.search.reference\n"
            "assert 'matplotlib' not in sys.modules and 'torch' not in [m for m in sys.modules if sys.modules[m]]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
