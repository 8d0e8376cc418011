"""Small real ONNX graph folders in the exporter's format (docs/artifacts.md manifest.json), built with
onnx.helper only (no torch, so tests that time onnxruntime can use them in-process).

``make_onnx_dir(out_dir, ...)`` writes one graph per segment, per head, the final exit, one upsample graph
per logits resolution and the monolithic final-only graph, all sharing the same random weights, so the
chain segments -> final (which ends in its upsample) computes exactly what the monolithic graph computes.
"""

import hashlib
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DEFAULT_ARCHS = ({"crm": 0, "blocks": 0, "rdi": 0, "head": 0}, {"crm": 1, "blocks": 1, "rdi": 0, "head": 0})


class _Graph(object):
    """Collects nodes and the initializers they use; conv layers draw weights from a shared table."""

    def __init__(self, params):
        self.params, self.nodes, self.inits, self.macs, self.n = params, [], {}, 0, 0

    def _name(self, stem):
        self.n += 1
        return "{}_{}".format(stem, self.n)

    def conv(self, layer, x, hw, stride=1, relu=True):
        w, b = self.params[layer]
        cout, cin, k, _ = w.shape
        for arr, suffix in ((w, ".w"), (b, ".b")):
            self.inits[layer + suffix] = numpy_helper.from_array(arr, layer + suffix)
        y = self._name(layer)
        self.nodes.append(helper.make_node("Conv", [x, layer + ".w", layer + ".b"], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        hw = (hw[0] // stride, hw[1] // stride)
        self.macs += cout * cin * k * k * hw[0] * hw[1]
        if relu:
            y2 = self._name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [y2]))
            y = y2
        return y, hw

    def const(self, name, arr):
        self.inits[name] = numpy_helper.from_array(arr, name)
        return name

    def node(self, op, inputs, out=None, **attrs):
        out = out or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def confidence(self, logits, th_pix, out="confidence"):
        """Eq. 7 without edge enhancement: fraction of pixels whose top-1 softmax probability >= th_pix."""
        p = self.node("Softmax", [logits], axis=1)
        top = self.node("ReduceMax", [p], axes=[1], keepdims=0)
        ok = self.node("GreaterOrEqual", [top, th_pix])
        return self.node("ReduceMean", [self.node("Cast", [ok], to=TensorProto.FLOAT)], out, axes=[1, 2],
                         keepdims=0)

    def upsample(self, logits, c, out_hw, out="labels"):
        sizes = self.const("up_sizes_{}".format(self.n), np.array([1, c, out_hw[0], out_hw[1]], np.int64))
        up = self.node("Resize", [logits, "", "", sizes], mode="linear",
                       coordinate_transformation_mode="half_pixel")
        idx = self.node("ArgMax", [up], axis=1, keepdims=0)
        return self.node("Cast", [idx], out, to=TensorProto.INT32)

    def save(self, path, name, inputs, outputs):
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(self.inits.values()))
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fixture")
        model.ir_version = 8  # readable by onnxruntime 1.14+ (JetPack 5's)
        onnx.checker.check_model(model)
        onnx.save(model, path)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _io(name, shape, dtype="float32"):
    return {"name": name, "shape": list(shape), "dtype": dtype}


def make_onnx_dir(out_dir, input_hw=(32, 32), widths=(8, 16), num_classes=4, depth=1, archs=DEFAULT_ARCHS,
                  final_blocks=1, seed=0):
    """Write the graphs and manifest.json into ``out_dir``; return the manifest dict.

    Segment k: a stride-2 conv to widths[k] then ``depth - 1`` 3x3 convs (exit point k at stride 2^(k+1)).
    Heads: per exit point, one per arch (crm: 1x1 reduce to width / 2^crm, blocks: 3x3 convs, then 1x1 to
    classes). Final: ``final_blocks`` 3x3 convs on the last feature, then 1x1 to classes.
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.RandomState(seed)
    H, W = input_hw
    C = num_classes

    params = {}

    def p(layer, cin, cout, k):
        if layer not in params:
            std = np.sqrt(2.0 / (cin * k * k))
            params[layer] = ((rng.randn(cout, cin, k, k) * std).astype(np.float32),
                             (rng.randn(cout) * 0.01).astype(np.float32))
        return layer

    graphs, exit_points, shapes = [], [], []
    cin, hw = 3, (H, W)
    for k, w in enumerate(widths):
        for j in range(depth):
            p("seg{}.{}".format(k, j), cin if j == 0 else w, w, 3)
        cin, hw = w, (hw[0] // 2, hw[1] // 2)
        shapes.append((w, hw))
    for j in range(final_blocks):
        p("final.{}".format(j), widths[-1], widths[-1], 3)
    p("final.cls", widths[-1], C, 1)

    def add_segment(g, k, x):
        hw = (H, W) if k == 0 else shapes[k - 1][1]
        for j in range(depth):
            x, hw = g.conv("seg{}.{}".format(k, j), x, hw, stride=2 if j == 0 else 1)
        return x

    def add_final(g, x):
        hw = shapes[-1][1]
        for j in range(final_blocks):
            x, hw = g.conv("final.{}".format(j), x, hw)
        return g.conv("final.cls", x, hw, relu=False)[0]

    def entry(name, role, g, path, inputs, outputs, **extra):
        e = {"name": name, "role": role}
        e.update(extra)
        e.update({"file": os.path.basename(path), "sha256": _sha(path), "gmacs": g.macs / 1e9,
                  "inputs": [_io(*i) for i in inputs], "outputs": [_io(*o) for o in outputs]})
        graphs.append(e)

    image = ("image", [1, 3, H, W])
    for k, (w, fhw) in enumerate(shapes):
        g = _Graph(params)
        x_in = image if k == 0 else ("feat_in", [1, shapes[k - 1][0]] + list(shapes[k - 1][1]))
        g.nodes.append(helper.make_node("Identity", [add_segment(g, k, x_in[0])], ["feat"]))
        path = os.path.join(out_dir, "segment_{}.onnx".format(k))
        feat = ("feat", [1, w] + list(fhw))
        g.save(path, "segment_{}".format(k), [(x_in[0], TensorProto.FLOAT, x_in[1])],
               [(feat[0], TensorProto.FLOAT, feat[1])])
        entry("segment_{}".format(k), "segment", g, path, [x_in], [feat], index=k)
        exit_points.append({"index": k, "block": (k + 1) * depth, "stride": 2 ** (k + 1), "channels": w,
                            "cum_gmacs_fraction": None})
    th = ("th_pix", [1])
    logit_hws = set()
    for e, (w, fhw) in enumerate(shapes):
        for arch in archs:
            name = "head_e{}_c{crm}b{blocks}r{rdi}h{head}".format(e, **arch)
            g = _Graph(params)
            x, hw, width = "feat", fhw, max(1, w >> arch["crm"])
            x, hw = g.conv(p(name + ".crm", w, width, 1), x, hw)
            for j in range(arch["blocks"]):
                x, hw = g.conv(p("{}.b{}".format(name, j), width, width, 3), x, hw)
            logits = g.conv(p(name + ".cls", width, C, 1), x, hw, relu=False)[0]
            g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
            g.confidence("logits", "th_pix")
            path = os.path.join(out_dir, name + ".onnx")
            ins = [("feat", [1, w] + list(fhw)), th]
            outs = [("logits", [1, C] + list(fhw)), ("confidence", [1])]
            g.save(path, name, [(n, TensorProto.FLOAT, s) for n, s in ins],
                   [(n, TensorProto.FLOAT, s) for n, s in outs])
            entry(name, "head", g, path, ins, outs, exit=e, arch=dict(arch))
            logit_hws.add(tuple(fhw))
    # The final graph runs the final exit and its upsample: feature -> labels (no confidence).
    g = _Graph(params)
    g.upsample(add_final(g, "feat"), C, (H, W))
    w, fhw = shapes[-1]
    ins = [("feat", [1, w] + list(fhw))]
    path = os.path.join(out_dir, "final.onnx")
    g.save(path, "final", [("feat", TensorProto.FLOAT, ins[0][1])], [("labels", TensorProto.INT32, [1, H, W])])
    entry("final", "final", g, path, ins, [("labels", [1, H, W], "int32")])
    for hw in sorted(logit_hws, reverse=True):
        g = _Graph(params)
        g.upsample("logits", C, (H, W))
        name = "upsample_{}x{}".format(*hw)
        path = os.path.join(out_dir, name + ".onnx")
        ins, outs = [("logits", [1, C] + list(hw))], [("labels", [1, H, W])]
        g.save(path, name, [("logits", TensorProto.FLOAT, ins[0][1])], [("labels", TensorProto.INT32, [1, H, W])])
        entry(name, "upsample", g, path, ins, [outs[0] + ("int32",)])
    g = _Graph(params)
    x = "image"
    for k in range(len(widths)):
        x = add_segment(g, k, x)
    g.upsample(add_final(g, x), C, (H, W))
    path = os.path.join(out_dir, "monolithic.onnx")
    g.save(path, "monolithic", [("image", TensorProto.FLOAT, [1, 3, H, W])], [("labels", TensorProto.INT32, [1, H, W])])
    entry("monolithic", "monolithic", g, path, [image], [("labels", [1, H, W], "int32")])

    seg_macs = np.cumsum([gr["gmacs"] for gr in graphs if gr["role"] == "segment"])
    total = seg_macs[-1] + next(gr["gmacs"] for gr in graphs if gr["role"] == "final")
    for ep, cum in zip(exit_points, seg_macs):
        ep["cum_gmacs_fraction"] = float(cum / total)
    manifest = {"format": "mess-edge-manifest/1", "preset": "fixture", "num_classes": C,
                "classes": ["background"] + [str(i) for i in range(C - 1)], "input_hw": [H, W],
                "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": "RGB",
                                  "scale": 255.0},
                "checkpoint_sha256": hashlib.sha256(b"fixture-%d" % seed).hexdigest(), "opset": OPSET,
                "exit_points": exit_points, "graphs": graphs, "parity": {}}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def write_split_instance(engines, frames, path, exits=("head_e0_c1b1r0h0", "head_e1_c1b1r0h0"), **extra):
    """An input-dependent instance.json over ``exits`` (exit points 0, 1, ...) whose first threshold is set
    between the middle two image confidences of ``frames`` (preprocessed), so about half of them leave there and
    no later exit fires (th_img 1.0: only a frame confident on every pixel would). Writes it to ``path``; returns
    the dict. ``extra``: more instance fields."""
    from mess_edge.run.chain import ReferenceChain

    inst = dict({"format": "mess-edge-instance/1", "setting": "input-dependent", "final": True, "th_pix": 0.6,
                 "policy": "edge", "manifest_sha256": engines.sidecar["manifest_sha256"],
                 "exits": [{"exit": k, "graph": g, "arch": {}, "th_img": 1.0} for k, g in enumerate(exits)]}, **extra)
    with ReferenceChain(engines, inst) as ref:
        conf = sorted(ref.outputs(x)[0][2] for x in frames)
    n = len(conf) // 2
    inst["exits"][0]["th_img"] = (conf[n - 1] + conf[n]) / 2.0
    with open(path, "w") as f:
        json.dump(inst, f)
    return inst
