"""The label-map upsample (logits at the exit's resolution -> int32 labels at the input size) in two ONNX forms.

The exported upsample (and the tail of the final graph) is ONNX Resize (linear, half_pixel) + ArgMax over the
classes. Bilinear interpolation is separable and linear, so the same values come from two MatMuls with
constant interpolation matrices: A_h [H, h] @ logits [C, h, w] @ A_w^T [w, W] (each row of A holds the two
half_pixel weights, clamped at the border like Resize). The MatMul form does ~h/4 times more multiply-adds
but runs through ONNX Runtime's GEMM. This script times both on onnxruntime (CPU) side by side, interleaved,
on fresh random logits, and counts label disagreements (float rounding only: ties of the argmax).

The export uses the MatMul form by default (``mess-edge export --label-map matmul``, matrices from
``mess_edge/export/label_map.py``; ``--label-map resize`` keeps Resize): worth 0.07-0.25 ms of a 2-4 ms frame
at the presets' 16x16 -> 128x128 (Resize itself takes 0.27 or 0.42 ms from one run to the next there) and
1.3-1.6 ms at 32x32 -> 256x256.

    python benchmarks/upsample_forms.py [--threads 2] [--seconds 3]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import save  # noqa: E402
from mess_edge.export.label_map import interpolation_matrix  # noqa: E402

SHAPES = ((11, 16, 128), (11, 8, 128), (21, 32, 256), (19, 32, 512), (19, 64, 512))  # (classes, h = w, H = W)


def graphs(c, n, size):
    """{form: serialized ONNX model}: float32 [1, c, n, n] -> int32 labels [1, size, size]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, inits):
        g = helper.make_graph(nodes, "upsample", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, size, size])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m.SerializeToString()

    tail = [helper.make_node("ArgMax", ["u"], ["labels64"], axis=1, keepdims=0),
            helper.make_node("Cast", ["labels64"], ["y"], to=TensorProto.INT32)]
    a = interpolation_matrix(n, size)
    return {"resize": model([helper.make_node("Resize", ["x", "", "", "sizes"], ["u"], mode="linear",
                                              coordinate_transformation_mode="half_pixel")] + tail,
                            {"sizes": np.array([1, c, size, size], np.int64)}),
            "matmul": model([helper.make_node("MatMul", ["x", "awt"], ["t"]),
                             helper.make_node("MatMul", ["a", "t"], ["u"])] + tail,
                            {"a": a, "awt": np.ascontiguousarray(a.T)})}


def measure(c, n, size, threads, seconds):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]) for k, m in graphs(c, n, size).items()}
    rng = np.random.default_rng(c * 1000 + n)
    xs = [(rng.standard_normal((1, c, n, n)) * 3).astype(np.float32) for _ in range(8)]
    differ = sum(int((sessions["resize"].run(None, {"x": x})[0] != sessions["matmul"].run(None, {"x": x})[0]).sum())
                 for x in xs)
    t_end = time.perf_counter() + 1.0  # untimed: thread pool and clock up to speed
    while time.perf_counter() < t_end:
        for s in sessions.values():
            s.run(None, {"x": xs[0]})
    times = {k: [] for k in sessions}
    t_end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end or i < 20:
        order = list(sessions) if i % 2 else list(sessions)[::-1]  # alternate: neither always runs second
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, {"x": xs[i % len(xs)]})
            times[k].append(time.perf_counter() - t0)
        i += 1
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return {"classes": c, "logits_hw": n, "out_hw": size, "resize_ms": med["resize"], "matmul_ms": med["matmul"],
            "speedup": med["resize"] / med["matmul"], "labels_differ": differ, "labels": len(xs) * size * size,
            "pairs": len(times["resize"])}


def main():
    sys.modules["torch"] = None  # onnxruntime must not share the process with torch's thread pool
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per shape")
    a = p.parse_args()
    rows = [measure(c, n, size, a.threads, a.seconds) for c, n, size in SHAPES]
    md = ["# Label-map upsample: ONNX Resize + ArgMax vs two MatMuls + ArgMax (onnxruntime CPU, {} threads)".format(
        a.threads), "", "Median ms per call, interleaved; speedup = Resize / MatMul. Labels that differ: argmax ties "
          "under float rounding.", "", "| classes | logits | output | Resize ms | MatMul ms | speedup | labels that "
          "differ |", "|---:|---:|---:|---:|---:|---:|---:|"]
    md += ["| {classes} | {logits_hw}x{logits_hw} | {out_hw}x{out_hw} | {resize_ms:.3f} | {matmul_ms:.3f} | "
           "**{speedup:.2f}x** | {labels_differ} of {labels} |".format(**r) for r in rows]
    md += ["", "1-min load average at the end: {:.2f}.".format(os.getloadavg()[0])]
    head = "MatMul form vs Resize: " + ", ".join("{:.2f}x at {}->{}".format(r["speedup"], r["logits_hw"], r["out_hw"])
                                                 for r in rows)
    save("upsample_forms", {"args": vars(a), "rows": rows, "headline": head}, "\n".join(md))


if __name__ == "__main__":
    main()
