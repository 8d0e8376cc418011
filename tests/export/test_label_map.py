"""The MatMul label map (export's default) against the plain per-pixel bilinear loop, F.interpolate and ONNX
Resize run by onnxruntime, on fresh random logits; and what the export and quantize make of it."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mess_edge.export.graphs import LabelMap  # noqa: E402
from mess_edge.export.label_map import interpolation_matrix, upsample_reference  # noqa: E402

SHAPES = [((4, 4), (32, 32)), ((5, 7), (13, 20)), ((16, 16), (128, 128)), ((3, 9), (3, 4)), ((1, 6), (8, 6))]


@pytest.mark.parametrize("in_hw,out_hw", SHAPES)
def test_matrices_match_the_per_pixel_loop(in_hw, out_hw):
    rng = np.random.default_rng(sum(in_hw) * 100 + sum(out_hw))
    x = rng.standard_normal((3,) + in_hw)
    a_h, a_w = interpolation_matrix(in_hw[0], out_hw[0]), interpolation_matrix(in_hw[1], out_hw[1])
    assert a_h.shape == (out_hw[0], in_hw[0]) and np.allclose(a_h.sum(1), 1.0, atol=1e-6)
    got = np.einsum("Hh,chw,Ww->cHW", a_h.astype(np.float64), x, a_w.astype(np.float64))
    assert np.abs(got - upsample_reference(x, out_hw)).max() < 1e-6


@pytest.mark.parametrize("in_hw,out_hw", SHAPES)
def test_matmul_form_matches_f_interpolate(in_hw, out_hw):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 5, in_hw[0], in_hw[1], generator=gen) * 3
    mm, rs = LabelMap(in_hw, out_hw, "matmul"), LabelMap(in_hw, out_hw, "resize")
    with torch.no_grad():
        assert (mm.upsample(x) - rs.upsample(x)).abs().max().item() < 1e-5
        assert (mm(x) == rs(x)).float().mean().item() > 0.999
    assert mm(x).dtype == torch.int32 and tuple(mm(x).shape) == (1,) + out_hw


def _onnx_session(module, x):
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["logits"],
                      output_names=["labels"])
    model = onnx.load_from_string(buf.getvalue())
    return [n.op_type for n in model.graph.node], ort.InferenceSession(buf.getvalue(),
                                                                     providers=["CPUExecutionProvider"])


def test_onnx_matmul_and_resize_graphs_give_the_same_labels():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 11, 16, 16, generator=gen)
    ops_mm, mm = _onnx_session(LabelMap((16, 16), (128, 128), "matmul").eval(), x)
    ops_rs, rs = _onnx_session(LabelMap((16, 16), (128, 128), "resize").eval(), x)
    assert ops_mm.count("MatMul") == 2 and "Resize" not in ops_mm and "Resize" in ops_rs
    rng = np.random.default_rng(11)  # fresh inputs, not the export's
    differ = 0
    for _ in range(4):
        z = (rng.standard_normal((1, 11, 16, 16)) * 3).astype(np.float32)
        a, b = mm.run(None, {"logits": z})[0], rs.run(None, {"logits": z})[0]
        ref = upsample_reference(z[0].astype(np.float64), (128, 128)).argmax(0)
        assert a.dtype == np.int32 and a.shape == (1, 128, 128)
        assert (a[0] == ref).mean() > 0.9999 and (b[0] == ref).mean() > 0.9999
        differ += int((a != b).sum())
    assert differ <= 4  # argmax ties under float rounding only


def test_bad_form_is_refused():
    with pytest.raises(ValueError, match="label-map form 'nearest'"):
        LabelMap((4, 4), (8, 8), "nearest")
