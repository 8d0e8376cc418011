"""`mess-edge profile`: means beside medians for every entry, and the chain's measured per-frame overhead."""

import json

import numpy as np
import pytest

from _fixtures import make_onnx_dir
from mess_edge.build.builder import build_engines
from mess_edge.build.engine_set import load_engines
from mess_edge.profile.latency_table import ProfileConfig, profile_engines
from mess_edge.profile.overhead import _path_cost
from mess_edge.run.chain import _upsample_for


@pytest.fixture(scope="module")
def lut_and_engines(tmp_path_factory):
    base = tmp_path_factory.mktemp("overhead")
    make_onnx_dir(str(base / "onnx"), widths=(8, 16, 16), num_classes=5)
    eng = build_engines(str(base / "onnx"), "ort", out_dir=str(base / "eng"))
    profile_engines(eng, config=ProfileConfig(min_iters=10, min_seconds=0.2, warmup_s=0.05))
    with open(str(base / "eng" / "lut.json")) as f:
        return json.load(f), load_engines(eng)


def test_every_entry_has_a_mean_and_a_median(lut_and_engines):
    lut, _ = lut_and_engines
    rows = lut["segments"] + lut["heads"] + lut["upsamples"] + lut["stretches"] + [lut["final"], lut["monolithic"],
                                                                                   lut["upsample"]]
    for row in rows:
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"] and row["min_ms"] <= row["mean_ms"] <= row["max_ms"]


def test_overhead_is_chain_time_minus_the_tables_graph_means(lut_and_engines):
    """One path per exit taken: final-only and a single exit per exit point; on ORT overhead = mean wall time
    of Chain.run - the time inside its graphs in the same frames, > 0 (glue costs time)."""
    lut, engines = lut_and_engines
    over, paths = lut["frame_overhead_ms"], lut["frame_overhead_paths"]
    points = sorted({h["exit"] for h in engines.by_role("head")})
    assert sorted(over["exits"]) == [str(p) for p in points] and sorted(paths) == ["exit_{}".format(p) for p in points] + ["final"]
    names = [g["name"] for g in engines.by_role("segment")] + ["final"]
    stretch = [s for s in lut["stretches"] if s["from"] == 0 and s["to"] == len(names) - 1]
    assert paths["final"]["table_ms"] == pytest.approx(stretch[0]["mean_ms"])
    assert over["final"] == pytest.approx(paths["final"]["measured_mean_ms"] - paths["final"]["in_graphs_mean_ms"])
    for p in points:
        row = paths["exit_{}".format(p)]
        assert row["n"] >= 10 and over["exits"][str(p)] == pytest.approx(row["measured_mean_ms"] -
                                                                          row["in_graphs_mean_ms"])
        assert 0 < over["exits"][str(p)] < row["measured_mean_ms"]
    # The exit path's table cost by hand: segments to the point (one fused graph if profiled), head, upsample.
    head = [h for h in engines.by_role("head") if h["exit"] == 0][0]
    up = _upsample_for(engines, head["name"])
    by = {e["name"]: e["mean_ms"] for e in lut["segments"] + lut["heads"] + lut["upsamples"]}
    want = by["segment_0"] + by[head["name"]] + by[up]
    assert _path_cost(lut, names, {head["name"]: up}, 0, head) == pytest.approx(want)
    assert np.isfinite(over["final"]) and over["final"] < 50
