"""The exit policy's confidence (eqs. 7-9): definition, fast numpy mirror, and the ONNX gate in every head.

Chain of equalities held here: Canny-based reference == fast numpy mirror (edge masks exactly; image
confidence up to softmax rounding, at most one pixel) and fast numpy mirror == the exported ONNX graph run by
onnxruntime (raw path exactly, edge path within one pixel of float ties), plus hand-computed cases.
"""

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mess_edge import confidence as cf  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402
from mess_edge.model.gate import ConfidenceGate, HeadWithGate  # noqa: E402

SHAPES = [(11, 16, 16), (21, 64, 64)]

# Ops the gate (and the small conv head used here) may export to: all in TensorRT 8.5's ONNX parser
# (onnx-tensorrt docs/operators.md), none of the ones TENSORRT.md sec. 6.2 warns about (TopK with a tensor K,
# dilated MaxPool, NonZero, opset-18 Reduce* with axes as an input).
ALLOWED_OPS = {
    "ReduceMax", "ReduceMean", "Sub", "Exp", "Div", "Mul", "Log", "GreaterOrEqual", "Greater", "Cast", "ArgMax",
    "MaxPool", "Neg", "Add", "AveragePool", "Where", "Constant", "Unsqueeze", "Squeeze",
    "Conv", "Relu",  # the test head
}


def blobby_logits(rng, num_classes, h, w):
    """Realistic logits: smooth random fields per class, so the argmax is a piecewise-constant blob map."""
    cells = int(rng.integers(2, 7))
    low = rng.standard_normal((num_classes, cells, cells)).astype(np.float32)
    up = np.stack([cv2.resize(plane, (w, h), interpolation=cv2.INTER_CUBIC) for plane in low])
    noise = 0.1 * rng.standard_normal(up.shape).astype(np.float32)
    return (float(rng.uniform(2.0, 8.0)) * up + noise).astype(np.float32)


def random_logits(rng, shape, blobby):
    if blobby:
        return blobby_logits(rng, *shape)
    return (float(rng.uniform(0.5, 3.0)) * rng.standard_normal(shape)).astype(np.float32)


def mid_threshold(rng, logits, kind):
    """A th_pix inside the confidence distribution (fraction neither 0 nor 1), halfway between two distinct
    pixel confidences so that no pixel sits at a float tie with it."""
    values = np.unique(cf.confidence_map_fast(logits, kind)[0])
    k = int(rng.integers(len(values) // 5, 4 * len(values) // 5))
    return np.float32(0.5 * (float(values[k]) + float(values[k + 1])))


def export_session(module, args, input_names, output_names):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=17,
                          input_names=input_names, output_names=output_names)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return model, ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


_GATES = {}


def gate_session(kind, edge, shape):
    key = (kind, edge, shape)
    if key not in _GATES:
        logits = torch.zeros((1,) + shape)
        _GATES[key] = export_session(ConfidenceGate(edge=edge, kind=kind), (logits, torch.zeros(1)),
                                     ["logits", "th_pix"], ["confidence"])
    return _GATES[key]


# ------------------------------------------------------------------------------ ONNX graph == fast mirror


@pytest.mark.parametrize("kind", ["top1", "entropy"])
@pytest.mark.parametrize("shape", SHAPES)
def test_onnx_gate_equals_fast_mirror(kind, shape):
    _, edge_sess = gate_session(kind, True, shape)
    _, raw_sess = gate_session(kind, False, shape)
    n = shape[1] * shape[2]
    rng = np.random.default_rng(1000 + shape[0])
    fractions = []
    for seed in range(6):
        logits = random_logits(rng, shape, blobby=seed % 3 != 2)
        th = mid_threshold(rng, logits, kind)
        feed = {"logits": logits[None], "th_pix": np.array([th], np.float32)}
        c_edge = edge_sess.run(None, feed)[0]
        c_raw = raw_sess.run(None, feed)[0]
        assert c_edge.shape == (1,) and c_edge.dtype == np.float32
        # Raw path: the same float32 comparisons, exact. Edge path: a pixel at a float tie may flip.
        assert c_raw[0] * n == cf.image_confidence_fast(logits, th, edge=False, kind=kind) * n
        assert abs(c_edge[0] * n - cf.image_confidence_fast(logits, th, edge=True, kind=kind) * n) <= 1
        fractions.append(float(c_edge[0]))
    assert 0.05 < np.median(fractions) < 0.95  # the thresholds exercised both outcomes


# ------------------------------------------------------------------------------ fast == Canny reference


@pytest.mark.parametrize("blobby", [True, False])
@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_edge_mask_reference_equals_morphology(stride, blobby):
    """Canny at full resolution + a band of width os, pooled to native pixels == the 3x3 label test."""
    rng = np.random.default_rng(stride)
    for _ in range(12):
        num_classes, h, w = int(rng.integers(2, 22)), int(rng.integers(5, 40)), int(rng.integers(5, 40))
        if blobby:
            labels = blobby_logits(rng, num_classes, h, w).argmax(axis=0)
        else:
            labels = rng.integers(0, num_classes, (h, w))
        ref = cf.edge_mask_reference(labels, stride)
        assert ref.dtype == bool and ref.shape == (h, w)
        np.testing.assert_array_equal(ref, cf.edge_mask_fast(labels))


@pytest.mark.parametrize("kind", ["top1", "entropy"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_equals_canny_reference(kind, shape):
    """Bound asserted: |c_fast - c_ref| <= 1 / (h w) for thresholds off float ties (observed: 0).

    The masks are equal, so only float64 (reference) vs float32 (mirror) confidences can differ, by ~1e-7.
    """
    rng = np.random.default_rng(7 + shape[0])
    n = shape[1] * shape[2]
    worst = 0.0
    for seed in range(4):
        logits = blobby_logits(rng, *shape)
        th = mid_threshold(rng, logits, kind)
        for stride in (8, 16):
            c_ref = cf.image_confidence_reference(logits, th, edge=True, kind=kind, stride=stride)
            c_fast = cf.image_confidence_fast(logits, th, edge=True, kind=kind)
            worst = max(worst, abs(c_ref - c_fast))
        assert abs(cf.image_confidence_reference(logits, th, edge=False, kind=kind)
                   - cf.image_confidence_fast(logits, th, edge=False, kind=kind)) <= 1.0 / n
        # The enhanced map itself, value by value.
        raw, enhanced = cf.confidence_map_fast(logits, kind)
        conf_ref = cf.pixel_confidence(logits, kind)
        np.testing.assert_allclose(raw, conf_ref, atol=2e-6)
        mask = cf.edge_mask_reference(logits.argmax(axis=0), 8)
        assert 0 < mask.sum() < n
        np.testing.assert_allclose(enhanced, cf.enhance_reference(conf_ref, mask), atol=2e-6)
    assert worst <= 1.0 / n


# ------------------------------------------------------------------------------ hand-made examples


def two_class_logits(conf, labels):
    """Logits [2, h, w] whose top-1 probability is ``conf`` (> 0.5) and whose argmax is ``labels``."""
    logits = np.zeros((2,) + conf.shape, np.float32)
    margin = np.log(conf / (1.0 - conf))
    for k in (0, 1):
        logits[k][labels == k] = margin[labels == k]
    return logits


def all_paths(logits, th, edge):
    """Image confidence by the reference, the fast mirror and the ONNX graph, as pixel counts."""
    _, sess = export_session(ConfidenceGate(edge=edge), (torch.from_numpy(logits[None]), torch.zeros(1)),
                             ["logits", "th_pix"], ["confidence"])
    graph = sess.run(None, {"logits": logits[None], "th_pix": np.array([th], np.float32)})[0][0]
    fractions = [cf.image_confidence_reference(logits, th, edge=edge), cf.image_confidence_fast(logits, th, edge=edge),
                 float(graph)]
    n = logits.shape[1] * logits.shape[2]
    counts = [f * n for f in fractions]
    assert all(abs(c - round(c)) < 1e-4 for c in counts)
    return [int(round(c)) for c in counts]


def test_single_label_map_gives_the_plain_fraction():
    conf = np.full((8, 8), 0.3 + 0.5, np.float32)  # 0.8 everywhere ...
    conf.flat[::3] = 0.95  # ... but 22 of the 64 pixels
    logits = two_class_logits(conf, np.zeros((8, 8), int))
    for edge in (True, False):  # one label: no semantic edge, enhancement changes nothing
        assert all_paths(logits, 0.9, edge) == [22] * 3
        assert all_paths(logits, 0.5, edge) == [64] * 3


def test_edge_pixels_take_their_window_median_by_hand():
    # v[r, c] = 5 r + c + 1 (1..25); confidence 0.5 + v / 100; columns 0-1 class 1, columns 2-4 class 0, so the
    # edge band is columns 1 and 2. Lower medians of the in-image 5x5 windows, counted by hand:
    #   column 1 (windows cover columns 0-3): rows 0..4 -> v = 7, 9, 12, 14, 17
    #   column 2 (windows cover columns 0-4): rows 0..4 -> v = 8, 10, 13, 15, 18
    v = np.arange(1, 26, dtype=np.float64).reshape(5, 5)
    labels = np.zeros((5, 5), int)
    labels[:, :2] = 1
    logits = two_class_logits((0.5 + v / 100).astype(np.float32), labels)
    expected_mask = np.zeros((5, 5), bool)
    expected_mask[:, 1:3] = True
    np.testing.assert_array_equal(cf.edge_mask_reference(labels, 8), expected_mask)
    np.testing.assert_array_equal(cf.edge_mask_fast(labels), expected_mask)
    expected_v = v.copy()
    expected_v[:, 1] = [7, 9, 12, 14, 17]
    expected_v[:, 2] = [8, 10, 13, 15, 18]
    raw, enhanced = cf.confidence_map_fast(logits)
    np.testing.assert_allclose(enhanced, 0.5 + expected_v / 100, atol=1e-6)
    np.testing.assert_allclose(cf.enhance_reference(raw, expected_mask), 0.5 + expected_v / 100, atol=1e-6)
    # th = 0.595 passes v >= 10: 16 raw pixels; after enhancement 17 (columns 0..4: 3 + 3 + 4 + 3 + 4).
    assert all_paths(logits, 0.595, edge=False) == [16] * 3
    assert all_paths(logits, 0.595, edge=True) == [17] * 3


def test_enhance_reference_border_windows_by_hand():
    conf = np.arange(25, dtype=np.float64).reshape(5, 5) / 100  # conf[r, c] = (5 r + c) / 100
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = mask[0, 0] = mask[0, 1] = mask[0, 2] = True
    out = cf.enhance_reference(conf, mask)
    assert out[2, 2] == 0.12  # all 25 values: the 13th smallest
    assert out[0, 0] == 0.06  # 3x3 in-image corner window {0,1,2,5,6,7,10,11,12}: the 5th smallest
    assert out[0, 1] == 0.06  # 3x4 window {0,1,2,3,5,6,7,8,10,11,12,13}: the lower middle (6th smallest)
    assert out[0, 2] == 0.07  # 3x5 window {0..14}: the 8th smallest
    assert out[4, 4] == conf[4, 4]  # off the mask: unchanged


# ------------------------------------------------------------------------------ memo histograms


def test_histograms_match_image_confidence_at_every_bin_edge():
    rng = np.random.default_rng(3)
    batch = np.stack([blobby_logits(rng, 21, 32, 24) for _ in range(3)])
    batch[2] *= 60.0  # near-certain image: confidences of exactly 1.0 land in the last bin
    hist_edge, hist_raw, mean_conf = cf.confidence_histograms(batch)
    assert hist_edge.shape == hist_raw.shape == (3, cf.HIST_BINS) and hist_edge.dtype == np.int32
    assert mean_conf.shape == (3,) and mean_conf.dtype == np.float32
    assert (hist_edge.sum(axis=1) == 32 * 24).all() and (hist_raw.sum(axis=1) == 32 * 24).all()
    edges32 = cf.hist_bin_edges().astype(np.float32)
    for j in range(cf.HIST_BINS):
        th = edges32[j]
        np.testing.assert_array_equal(hist_edge[:, j:].sum(axis=1) / (32 * 24),
                                      cf.image_confidence_fast(batch, th, edge=True))
        np.testing.assert_array_equal(hist_raw[:, j:].sum(axis=1) / (32 * 24),
                                      cf.image_confidence_fast(batch, th, edge=False))
    raw1, _ = cf.confidence_map_fast(batch[2])
    assert (raw1 == 1.0).sum() > 0 and hist_raw[2, -1] >= (raw1 == 1.0).sum()
    np.testing.assert_allclose(mean_conf[0], cf.pixel_confidence(batch[0]).mean(), rtol=1e-5)
    single = cf.confidence_histograms(batch[1])
    np.testing.assert_array_equal(single[0], hist_edge[1])
    np.testing.assert_array_equal(single[1], hist_raw[1])


# ------------------------------------------------------------------------------ the exported head graph


@pytest.mark.parametrize("kind", ["top1", "entropy"])
def test_head_with_gate_exports_trt_friendly_ops(kind):
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 11, 1))
    module = HeadWithGate(head, ConfidenceGate(kind=kind)).eval()
    feat = torch.randn(1, 8, 16, 16)
    model, sess = export_session(module, (feat, torch.zeros(1)), ["feat", "th_pix"], ["logits", "confidence"])
    ops = [node.op_type for node in model.graph.node]
    print(kind, "gate graph ops:", ops)
    assert set(ops) <= ALLOWED_OPS, set(ops) - ALLOWED_OPS
    assert model.opset_import[0].version == 17
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type.startswith("Reduce"):
            assert "axes" in attrs and len(node.input) == 1, node  # TRT 8.5/8.6 ignore an axes *input*
        if node.op_type == "MaxPool":
            assert all(d == 1 for d in attrs.get("dilations", [1, 1]))
    assert [o.name for o in sess.get_outputs()] == ["logits", "confidence"]
    logits_graph, conf_graph = sess.run(None, {"feat": feat.numpy(), "th_pix": np.array([0.3], np.float32)})
    with torch.no_grad():
        logits_torch, conf_torch = module(feat, torch.tensor([0.3]))
    assert logits_graph.shape == (1, 11, 16, 16) and conf_graph.shape == (1,)
    np.testing.assert_allclose(logits_graph, logits_torch.numpy(), atol=1e-5)
    assert abs(conf_graph[0] - cf.image_confidence_fast(logits_graph[0], 0.3, kind=kind)) <= 1 / 256
    assert abs(conf_graph[0] - float(conf_torch[0])) <= 1 / 256


def test_gate_in_fp16_matches_fp32():
    rng = np.random.default_rng(5)
    gate = ConfidenceGate()
    for _ in range(3):
        logits = torch.from_numpy(blobby_logits(rng, 21, 64, 64))[None]
        th = torch.tensor([float(mid_threshold(rng, logits[0].numpy(), "top1"))])
        c32 = float(gate(logits, th)[0])
        c16 = gate(logits.half(), th)
        assert c16.dtype == torch.float32
        assert abs(float(c16[0]) - c32) <= 0.01  # fp16 moves pixels within ~1e-3 of th_pix only


# ------------------------------------------------------------------------------ user errors, device side


def test_user_errors_are_mess_errors():
    logits = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(MessError, match="got confidence kind 'top5'"):
        cf.image_confidence_fast(logits, 0.5, kind="top5")
    with pytest.raises(MessError, match=r"got logits of shape \(4, 4\); expected \[C, h, w\]"):
        cf.pixel_confidence(np.zeros((4, 4)))
    with pytest.raises(MessError, match="got confidence kind 'max'"):
        ConfidenceGate(kind="max")
    with pytest.raises(MessError, match="got median radius 0"):
        ConfidenceGate(radius=0)


def test_confidence_imports_and_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from mess_edge import confidence as cf\n"
            "z = np.zeros((2, 4, 4), np.float32); z[0, :, :2] = 3.0\n"
            "print(cf.image_confidence_fast(z, 0.9), cf.image_confidence_reference(z, 0.9))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.split() == ["0.5", "0.5"]


def test_one_default_pixel_threshold_everywhere():
    """Profile, bench, export's parity check, INT8 calibration and the chain all feed DEFAULT_TH_PIX; no module
    writes the value out again: the grep catches every form it had before (`th_pix: float = 0.5`,
    `TH_PIX_CHECK = 0.5`, `np.array([0.5], ...)`, `f(..., 0.5)` arguments)."""
    import re

    from mess_edge import confidence
    from mess_edge.profile.commands import profile
    from mess_edge.profile.latency_table import ProfileConfig
    from mess_edge.run import chain

    assert chain.DEFAULT_TH_PIX is confidence.DEFAULT_TH_PIX == 0.5
    assert ProfileConfig().th_pix == confidence.DEFAULT_TH_PIX
    assert [p.default for p in profile.params if p.name == "th_pix"] == [confidence.DEFAULT_TH_PIX]
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mess_edge")
    literal = re.compile(r"th_pix\s*(:\s*\w+\s*)?=\s*0\.5\b|TH_PIX\w*\s*=\s*0\.5\b|\[0\.5\]|\w\(.*,\s*0\.5\s*[,)]")
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    found += ["{}:{}".format(os.path.relpath(path, root), i + 1) for i, line in enumerate(f)
                              if literal.search(line)]
    assert found == ["confidence.py:{}".format(_line_of(confidence, "DEFAULT_TH_PIX = 0.5"))]


def _line_of(module, text):
    with open(module.__file__) as f:
        return next(i + 1 for i, line in enumerate(f) if line.startswith(text))
