"""Export (graphs, manifest, parity) and calibration (memo) on a tiny trained checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from mess_edge.artifacts import sha256_file  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def exported(tiny_ckpts, tmp_path_factory):
    from mess_edge.export.exporter import export_checkpoint

    out = str(tmp_path_factory.mktemp("onnx") / "onnx")
    export_checkpoint(tiny_ckpts[1], out, log=lambda *a: None)
    with open(os.path.join(out, "manifest.json")) as f:
        return out, json.load(f)


def test_manifest_roles_files_and_checksums(exported, tiny_ckpts):
    out, m = exported
    roles = [g["role"] for g in m["graphs"]]
    n_early = len(m["exit_points"])
    assert roles.count("segment") == n_early and roles.count("head") == 2 * n_early
    assert roles.count("final") == 1 and roles.count("monolithic") == 1 and roles.count("upsample") == 1
    assert m["checkpoint_sha256"] == sha256_file(tiny_ckpts[1]) and m["opset"] == 17
    assert m["input_hw"] == [64, 64] and m["num_classes"] == 11 and len(m["classes"]) == 11
    for g in m["graphs"]:
        assert sha256_file(os.path.join(out, g["file"])) == g["sha256"]
        assert g["gmacs"] >= 0 and g["inputs"] and g["outputs"]
    head = next(g for g in m["graphs"] if g["role"] == "head")
    assert [i["name"] for i in head["inputs"]] == ["feat", "th_pix"]
    assert [o["name"] for o in head["outputs"]] == ["logits", "confidence"]
    assert head["outputs"][0]["shape"] == [1, 11, 8, 8] and head["outputs"][1]["shape"] == [1]
    seg0 = next(g for g in m["graphs"] if g["name"] == "segment_0")
    assert seg0["inputs"][0] == {"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}
    ups = next(g for g in m["graphs"] if g["role"] == "upsample")
    assert ups["outputs"][0] == {"name": "labels", "shape": [1, 64, 64], "dtype": "int32"}


def test_export_parity_targets(exported):
    _, m = exported
    chain = m["parity"]["chain"]
    assert m["parity"]["per_graph_max_abs_diff"] <= 1e-4
    assert chain["final_max_abs_logit_diff"] <= 1e-4 and chain["heads_max_abs_logit_diff"] <= 1e-4
    assert chain["final_label_agreement"] >= 0.9999 and chain["monolithic_label_agreement"] >= 0.9999


def test_label_map_is_two_matmuls_kept_fp32_by_quantize(exported, tmp_path):
    from mess_edge.quantize.quantizer import fp32_nodes, name_nodes, quantize_folder

    out, m = exported
    assert m["label_map"] == "matmul"
    for name in ("final", "monolithic", "upsample_8x8"):
        ops = [n.op_type for n in onnx.load(os.path.join(out, name + ".onnx")).graph.node]
        assert ops[-4:] == ["MatMul", "MatMul", "ArgMax", "Cast"] and "Resize" not in ops, (name, ops)
    final = name_nodes(onnx.load(os.path.join(out, "final.onnx")))
    kept = set(fp32_nodes(final, "final"))
    assert [n.op_type for n in final.graph.node if n.name in kept] == ["MatMul", "MatMul", "ArgMax", "Cast"]
    import cv2

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(calib / "{}.png".format(i)), rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    q = quantize_folder(out, "int8", str(tmp_path / "int8"), str(calib), max_images=4)
    assert {g["name"]: g["fp32_nodes"] for g in q["graphs"]}["final"] == 4
    qfinal = onnx.load(str(tmp_path / "int8" / "final.onnx")).graph
    fp32_consts = {i.name for i in qfinal.initializer if i.data_type == onnx.TensorProto.FLOAT}
    matmuls = [n for n in qfinal.node if n.op_type == "MatMul"]
    # the interpolation matrices stay fp32 initializers (no Q/DQ pair), and nothing re-quantizes the upsample
    assert len(matmuls) == 2 and all(any(i in fp32_consts for i in n.input) for n in matmuls)
    consumers = {i: n.op_type for n in qfinal.node for i in n.input}
    assert all(consumers.get(n.output[0]) != "QuantizeLinear" for n in matmuls)


def test_graphs_are_tensorrt_8_friendly(exported):
    out, m = exported
    for g in m["graphs"]:
        model = onnx.load(os.path.join(out, g["file"]))
        assert model.opset_import[0].version == 17
        for node in model.graph.node:
            if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
                # TensorRT 8.5/8.6 ignore an axes *input* and reduce over everything (TENSORRT.md sec. 6.2).
                assert any(a.name == "axes" for a in node.attribute), (g["name"], node.op_type)
            if node.op_type == "MaxPool":
                dil = [a for a in node.attribute if a.name == "dilations"]
                assert not dil or all(v == 1 for v in dil[0].ints)


def test_memo_matches_device_confidence_and_eval(tiny_ckpts, scenes, exported):
    """The memo's statistics are what the exported head graphs compute on the device."""
    import onnxruntime as ort

    from mess_edge.calibrate.memoise import memoise
    from mess_edge.metrics import miou
    from mess_edge.train.trainer import validate
    from mess_edge.train.checkpoint import build_model, load_checkpoint
    from mess_edge.train.data import SegmentationSet

    memo = memoise(tiny_ckpts[1], scenes, "cal", progress=False)
    assert memo.confusion.shape == (7, 16, 11, 11) and memo.hist_edge.shape == (7, 16, 100)
    assert (memo.n_pixels == 64).all() and (memo.hist_edge.sum(-1) == 64).all()
    net = build_model(load_checkpoint(tiny_ckpts[1]))
    val = validate(net, scenes, "cal")
    assert 100 * miou(memo.confusion[-1].sum(0)) == pytest.approx(val["final"], abs=1e-9)
    assert 100 * miou(memo.confusion[0].sum(0)) == pytest.approx(val["exits"][0]["miou"], abs=1e-9)
    # Head 1's confidence on image 3, from the memo's histogram vs onnxruntime running the exported graphs.
    out, m = exported
    ds = SegmentationSet(scenes, "cal", (64, 64), train=False)
    x = ds[3][0].numpy()[None]
    sess = {g["name"]: ort.InferenceSession(os.path.join(out, g["file"]), providers=["CPUExecutionProvider"])
            for g in m["graphs"] if g["role"] in ("segment", "head")}
    k, arch = int(memo.head_exit[1]), memo.head_arch[1]
    feat = x
    for s in range(k + 1):
        feat = sess["segment_{}".format(s)].run(None, {"image" if s == 0 else "feat_in": feat})[0]
    name = "head_e{}_c{}b{}r{}h{}".format(k, *arch)
    for j in (50, 80, 95):
        th = np.array([memo.hist_bins[j]], np.float32)
        conf = sess[name].run(None, {"feat": feat, "th_pix": th})[1][0]
        assert conf == pytest.approx(memo.hist_edge[1, 3, j:].sum() / 64.0, abs=1e-6)


def test_export_and_calibrate_refuse_bad_paths(tiny_ckpts, tmp_path):
    from mess_edge.export.exporter import export_checkpoint

    precious = tmp_path / "o"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(MessError, match="exists and is not an export folder"):
        export_checkpoint(tiny_ckpts[0], str(precious), log=lambda *a: None)
    assert os.listdir(str(precious)) == ["notes.txt"]  # untouched
    assert [p for p in os.listdir(str(tmp_path)) if p.startswith(".onnx-")] == []  # no half-written folder
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "calibrate", str(tmp_path / "none.pt"), "--data",
                        str(tmp_path), "--out", str(tmp_path / "m.npz")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip() == "error: checkpoint not found: {}".format(tmp_path / "none.pt")
