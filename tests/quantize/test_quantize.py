"""mess-edge quantize: INT8 (Q/DQ) and FP16 folders built, profiled and chained by real onnxruntime, their labels
against the FP32 chain's, the manifest's records, and the one-line errors for what does not fit."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from _fixtures import make_onnx_dir
from mess_edge.build.builder import build_engines
from mess_edge.build.engine_set import load_engines
from mess_edge.errors import MessError
from mess_edge.profile.latency_table import ProfileConfig, profile_engines
from mess_edge.quantize.quantizer import name_nodes, quantize_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ProfileConfig(min_iters=5, min_seconds=0.005, warmup_s=0.0)


def _smooth_images(rng, n, hw):
    """uint8 BGR [h, w, 3] images with structure (blurred noise), closer to photos than white noise."""
    import cv2

    out = []
    for _ in range(n):
        x = rng.integers(0, 256, (hw[0] // 4, hw[1] // 4, 3)).astype(np.uint8)
        out.append(cv2.resize(x, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))
    return out


def _write_images(folder, images):
    import cv2

    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(os.path.join(folder, "{:03d}.png".format(i)), im)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("quantize")
    fp32 = str(base / "onnx")
    make_onnx_dir(fp32)
    rng = np.random.default_rng(0)
    calib = _write_images(str(base / "calib"), _smooth_images(rng, 16, (32, 32)))
    int8 = str(base / "onnx-int8")
    fp16 = str(base / "onnx-fp16")
    quantize_folder(fp32, "int8", int8, calib)
    quantize_folder(fp32, "fp16", fp16)
    engines = {p: build_engines(d, "ort", out_dir=str(base / ("engines-" + p)))
               for p, d in (("fp32", fp32), ("int8", int8), ("fp16", fp16))}
    return {"fp32": fp32, "int8": int8, "fp16": fp16, "calib": calib, "engines": engines, "base": base,
            "test": _smooth_images(np.random.default_rng(1), 8, (32, 32))}


def test_manifest_records_precision_and_calibration(folders):
    m = json.load(open(os.path.join(folders["int8"], "manifest.json")))
    src = json.load(open(os.path.join(folders["fp32"], "manifest.json")))
    assert m["precision"] == "int8" and m["format"] == src["format"]
    cal = m["calibration"]
    assert cal["n_images"] == 16 and len(cal["sha256"]) == 64 and cal["path"] == os.path.abspath(folders["calib"])
    assert cal["preprocessing"]["implementation"] == "mess_edge.run.preprocess.Preprocessor"
    assert cal["preprocessing"]["input_hw"] == [32, 32] and cal["inputs_from"] == "quantized segments"
    by = {g["name"]: g for g in m["graphs"]}
    assert [g["name"] for g in m["graphs"]] == [g["name"] for g in src["graphs"]]
    assert by["upsample_8x8"]["precision"] == "fp32" and by["segment_0"]["precision"] == "int8"
    ops = [n.op_type for n in onnx.load(os.path.join(folders["int8"], "segment_1.onnx")).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    head = onnx.load(os.path.join(folders["int8"], "head_e0_c1b1r0h0.onnx"))
    # the gate (everything after the logits) has no Q/DQ node: the exit decision is computed in fp32
    after = [n.op_type for n in head.graph.node][[n.op_type for n in head.graph.node].index("Softmax"):]
    assert after == ["Softmax", "ReduceMax", "GreaterOrEqual", "Cast", "ReduceMean"]
    assert by["head_e0_c1b1r0h0"]["fp32_nodes"] == 5
    f16 = json.load(open(os.path.join(folders["fp16"], "manifest.json")))
    assert f16["precision"] == "fp16" and f16["calibration"] is None
    g = onnx.load(os.path.join(folders["fp16"], "segment_0.onnx"))
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in and out
    assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer)


def test_build_and_profile_record_the_precision(folders):
    for p, eng in folders["engines"].items():
        e = load_engines(eng)
        assert e.precision == p and e.sidecar["graph_precision"] == p
        assert {g["name"]: g["precision"] for g in e.graphs}["upsample_16x16"] == "fp32"
    lut = profile_engines(folders["engines"]["int8"], out=str(folders["base"] / "lut-int8.json"), config=FAST)
    assert lut["precision"] == "int8" and lut["conditions"]["precision"] == "int8"
    assert len(lut["heads"]) == 4 and all(h["median_ms"] > 0 for h in lut["heads"])


def _chain_labels(engine_dir, frames, instance):
    from mess_edge.run.chain import Chain
    from mess_edge.run.preprocess import Preprocessor

    e = load_engines(engine_dir)
    pre = Preprocessor(e.manifest["input_hw"], e.manifest["normalization"])
    with Chain(e, instance) as chain:
        return [chain.run(pre(f).copy()) for f in frames]


def test_int8_and_fp16_chains_agree_with_fp32(folders):
    final_only = {"format": "mess-edge-instance/1", "setting": "final-only", "exits": [], "final": True}
    want = [r.labels for r in _chain_labels(folders["engines"]["fp32"], folders["test"], final_only)]
    for p, least in (("int8", 0.9), ("fp16", 0.99)):
        got = [r.labels for r in _chain_labels(folders["engines"][p], folders["test"], final_only)]
        agree = np.mean([np.mean(a == b) for a, b in zip(got, want)])
        assert agree >= least, (p, agree)
    e = load_engines(folders["engines"]["int8"])
    budgeted = {"format": "mess-edge-instance/1", "setting": "budgeted", "final": False, "th_pix": 0.5,
                "manifest_sha256": e.sidecar["manifest_sha256"],
                "exits": [{"exit": 1, "graph": "head_e1_c1b1r0h0", "arch": {}, "th_img": 0.0}]}
    out = _chain_labels(folders["engines"]["int8"], folders["test"], budgeted)
    assert [r.exit for r in out] == [1] * len(out) and out[0].labels.shape == (32, 32)


def test_precision_and_calibration_mismatches_are_one_line_errors(folders, tmp_path):
    with pytest.raises(MessError, match=r"got --precision fp32 for graphs made at int8 .*expected int8"):
        build_engines(folders["int8"], "ort", "fp32", out_dir=str(tmp_path / "e"))
    with pytest.raises(MessError, match=r"with graphs already at int8 .*expected the fp32 graphs"):
        quantize_folder(folders["int8"], "fp16", str(tmp_path / "again"))
    big = _write_images(str(tmp_path / "big"), _smooth_images(np.random.default_rng(2), 2, (48, 48)))
    with pytest.raises(MessError, match=r"calibration image .*000.png is 48x48; expected 32x32"):
        quantize_folder(folders["fp32"], "int8", str(tmp_path / "q"), big)
    assert not os.path.exists(str(tmp_path / "q"))  # nothing half-written
    quantize_folder(folders["fp32"], "int8", str(tmp_path / "q"), big, max_images=2, allow_resize=True)
    assert json.load(open(str(tmp_path / "q" / "manifest.json")))["calibration"]["preprocessing"]["resize"] \
        == "cv2.INTER_LINEAR"
    with pytest.raises(MessError, match="without --calib-data"):
        quantize_folder(folders["fp32"], "int8", str(tmp_path / "q2"))
    cmd = [sys.executable, "-m", "mess_edge.cli", "build", folders["int8"], "--backend", "ort", "--precision",
           "fp16", "--out", str(tmp_path / "e2")]
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: got --precision fp16 for graphs made at int8")
    cmd = [sys.executable, "-m", "mess_edge.cli", "quantize", folders["fp32"], "--precision", "int8", "--calib-data",
           big, "--out", str(tmp_path / "q3")]
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is 48x48; expected 32x32" in r.stderr


def test_uint8_activations_are_for_onnx_runtime_only(folders, tmp_path):
    q = str(tmp_path / "u8")
    m = quantize_folder(folders["fp32"], "int8", q, folders["calib"], activations="uint8")
    assert m["calibration"]["activations"] == "uint8" and m["calibration"]["symmetric"] is False
    head = onnx.load(os.path.join(q, "segment_1.onnx"))
    zero_points = [i for i in head.graph.initializer if i.name.endswith("zero_point")]
    assert any(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    e = build_engines(q, "ort", out_dir=str(tmp_path / "e"))
    final_only = {"format": "mess-edge-instance/1", "setting": "final-only", "exits": [], "final": True}
    got = [r.labels for r in _chain_labels(e, folders["test"], final_only)]
    want = [r.labels for r in _chain_labels(folders["engines"]["fp32"], folders["test"], final_only)]
    assert np.mean([np.mean(a == b) for a, b in zip(got, want)]) >= 0.9
    with pytest.raises(MessError, match="quantized with uint8 activations .*expected symmetric int8 Q/DQ"):
        build_engines(q, "trt", out_dir=str(tmp_path / "t"))


def test_fp32_heads_copies_the_heads_and_quantizes_the_rest(folders, tmp_path):
    q = str(tmp_path / "heads-fp32")
    m = quantize_folder(folders["fp32"], "int8", q, folders["calib"], fp32_heads=True)
    assert m["fp32_heads"] is True and m["precision"] == "int8"
    by = {g["name"]: g for g in m["graphs"]}
    heads = [g for g in m["graphs"] if g["role"] == "head"]
    assert len(heads) == 4 and all(g["precision"] == "fp32" and g["sha256"] == g["fp32_sha256"] for g in heads)
    assert by["segment_0"]["precision"] == "int8" and by["final"]["precision"] == "int8"
    e = load_engines(build_engines(q, "ort", out_dir=str(tmp_path / "e")))
    assert {g["name"]: g["precision"] for g in e.graphs}["head_e1_c1b1r0h0"] == "fp32"
    budgeted = {"format": "mess-edge-instance/1", "setting": "budgeted", "final": False, "th_pix": 0.5,
                "manifest_sha256": e.sidecar["manifest_sha256"],
                "exits": [{"exit": 1, "graph": "head_e1_c1b1r0h0", "arch": {}, "th_img": 0.0}]}
    out = _chain_labels(e.dir, folders["test"], budgeted)
    assert [r.exit for r in out] == [1] * len(out)
    assert not json.load(open(os.path.join(folders["int8"], "manifest.json")))["fp32_heads"]


def _image_readers(path):
    return sorted(n.op_type for n in onnx.load(path).graph.node if "image" in n.input)


def test_the_convolution_reading_the_image_stays_fp32_unless_asked(folders, tmp_path):
    # default: segment 0's and the monolithic graph's first Conv take the fp32 image and fp32 weights
    m = json.load(open(os.path.join(folders["int8"], "manifest.json")))
    assert m["fp32_first_conv"] is True
    for name in ("segment_0.onnx", "monolithic.onnx"):
        assert _image_readers(os.path.join(folders["int8"], name)) == ["Conv"]
        first = [n for n in onnx.load(os.path.join(folders["int8"], name)).graph.node if "image" in n.input][0]
        assert not first.input[1].endswith("DequantizeLinear_Output")
    ops = [n.op_type for n in onnx.load(os.path.join(folders["int8"], "monolithic.onnx")).graph.node]
    assert ops.count("QuantizeLinear") >= 3  # the convolutions after the first are quantized
    q = str(tmp_path / "all-int8")
    m = quantize_folder(folders["fp32"], "int8", q, folders["calib"], first_conv_int8=True)
    assert m["fp32_first_conv"] is False
    for name in ("segment_0.onnx", "monolithic.onnx"):
        assert _image_readers(os.path.join(q, name)) == ["QuantizeLinear"]
    by = {g["name"]: g for g in m["graphs"]}
    default = {g["name"]: g for g in json.load(open(os.path.join(folders["int8"], "manifest.json")))["graphs"]}
    assert by["segment_0"]["fp32_nodes"] == default["segment_0"]["fp32_nodes"] - 1
    assert not json.load(open(os.path.join(folders["fp16"], "manifest.json")))["fp32_first_conv"]


def test_fp32_layer_keeps_the_named_node_and_refuses_unknown_ones(folders, tmp_path):
    model = name_nodes(onnx.load(os.path.join(folders["fp32"], "monolithic.onnx")))  # as quantize names them
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) >= 3 and all(convs)
    q = str(tmp_path / "layer")
    m = quantize_folder(folders["fp32"], "int8", q, folders["calib"], fp32_layers={"monolithic": [convs[1]]})
    assert m["fp32_layers"] == {"monolithic": [convs[1]]}
    default = {g["name"]: g for g in json.load(open(os.path.join(folders["int8"], "manifest.json")))["graphs"]}
    by = {g["name"]: g for g in m["graphs"]}
    assert by["monolithic"]["fp32_nodes"] == default["monolithic"]["fp32_nodes"] + 1
    assert by["segment_1"]["sha256"] == default["segment_1"]["sha256"]  # the other graphs as without the option
    nodes = {n.name: n for n in onnx.load(os.path.join(q, "monolithic.onnx")).graph.node}
    assert not nodes[convs[1]].input[1].endswith("DequantizeLinear_Output")  # fp32 weights
    assert nodes[convs[2]].input[1].endswith("DequantizeLinear_Output")
    cmd = [sys.executable, "-m", "mess_edge.cli", "quantize", folders["fp32"], "--precision", "int8", "--calib-data",
           folders["calib"], "--out", str(tmp_path / "bad")]
    for arg, want in (("monolithic:/no/such/Conv", "error: got --fp32-layer monolithic:/no/such/Conv; graph "
                       "monolithic has no node of that name"),
                      ("nograph:x", "error: got --fp32-layer nograph:...; expected one of the graphs final, "),
                      ("justanode", "error: got --fp32-layer 'justanode'; expected GRAPH:NODE")):
        r = subprocess.run(cmd + ["--fp32-layer", arg], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(want), r.stderr
        assert not os.path.exists(str(tmp_path / "bad"))
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "quantize", folders["fp32"], "--precision", "fp16",
                        "--fp32-layer", "monolithic:" + convs[1], "--out", str(tmp_path / "bad")], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and "expected --precision int8" in r.stderr and r.stderr.count("\n") == 1


def _labels(path, role, feed):
    import onnxruntime as ort

    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)
    return out[0].argmax(1) if role == "head" else out[0]


def test_label_disagreement_matches_a_per_image_count(folders):
    from mess_edge.quantize.quantizer import label_disagreement

    rng = np.random.default_rng(7)  # fresh inputs, not the calibration images
    for name, role, feed_of in (
            ("head_e1_c1b1r0h0", "head", lambda: {"feat": rng.standard_normal((1, 16, 8, 8)).astype(np.float32),
                                                  "th_pix": np.array([0.5], np.float32)}),
            ("final", "final", lambda: {"feat": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)})):
        fp32, int8 = (os.path.join(folders[p], name + ".onnx") for p in ("fp32", "int8"))
        shape = [d.dim_value for d in onnx.load(fp32).graph.input[0].type.tensor_type.shape.dim]
        feeds = [feed_of() for _ in range(6)]
        for f in feeds:
            f["feat"] = rng.standard_normal(shape).astype(np.float32)
        want = 100.0 * np.mean([np.mean(_labels(fp32, role, f) != _labels(int8, role, f)) for f in feeds])
        assert label_disagreement(fp32, int8, role, feeds) == pytest.approx(want, abs=1e-9)
        assert label_disagreement(fp32, fp32, role, feeds) == 0.0


def test_fallback_keeps_the_most_helpful_convolution_fp32(folders, tmp_path):
    default = json.load(open(os.path.join(folders["int8"], "manifest.json")))
    assert default["fallback"] == {"disagreement_pct": 4.0, "max_layers": 3}
    by0 = {g["name"]: g for g in default["graphs"]}
    assert {"label_disagreement_pct", "fallback_nodes"} <= set(by0["final"]) and "fallback_nodes" not in by0[
        "segment_1"]
    q = str(tmp_path / "fb")
    # tolerance 0: every graph that relabels any pixel falls back, one convolution at most
    m = quantize_folder(folders["fp32"], "int8", q, folders["calib"], fallback_disagreement_pct=0.0,
                        fallback_max_layers=1)
    fell = [g for g in m["graphs"] if g.get("fallback_nodes")]
    assert fell, "expected at least one graph whose INT8 labels differ from fp32 on the calibration images"
    for g in fell:
        assert len(g["fallback_nodes"]) == 1
        assert g["label_disagreement_pct"] < g["label_disagreement_before_fallback_pct"]
        rules = by0[g["name"]]["fp32_nodes"] - len(by0[g["name"]].get("fallback_nodes", []))
        assert g["fp32_nodes"] == rules + 1
        nodes = {n.name: n for n in name_nodes(onnx.load(os.path.join(q, g["file"]))).graph.node}
        assert not nodes[g["fallback_nodes"][0]].input[1].endswith("DequantizeLinear_Output")
    off = quantize_folder(folders["fp32"], "int8", str(tmp_path / "off"), folders["calib"], fallback_max_layers=0)
    assert all(not g.get("fallback_nodes") for g in off["graphs"])
    assert not os.path.exists(os.path.join(q, fell[0]["file"] + ".trial.onnx"))
