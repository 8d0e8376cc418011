"""Where symmetric INT8 loses accuracy: per graph, then per convolution of the graph that loses most.

The final exit's mIoU through the chain of segments -> final graph (ONNX Runtime, CPU), on cal-split images
that the scales were not fitted on (images ``calib_images`` .. ``calib_images + n_eval - 1`` of the cal split;
the first ``calib_images`` calibrate; test images are never used, so the ranking can choose layers honestly):

1. FP32, every graph INT8 with every convolution quantized (``quantize --int8-first-conv``), and each graph
   alone at INT8 with the others FP32;
2. for the graph that loses most alone: each of its convolutions kept FP32 in turn, the rest INT8 (the per-layer
   fallback, ``quantize --fp32-layer GRAPH:NODE``), ranked by what it recovers;
3. quantize's default (the convolution that reads the image kept FP32) for comparison;
4. each exit head alone at INT8 on the FP32 features (its own mIoU through the upsample graph), and for the head
   that loses most, each of its convolutions kept FP32 in turn.

Each graph is quantized the way ``mess-edge quantize`` does it (quantizer._quantize_int8: QDQ, symmetric INT8,
per-channel weights, minmax, each segment calibrated on the outputs of the INT8 segments before it).

    python benchmarks/int8_sensitivity.py [--model cpu-mbv2-e8]   # reuses runs/precision-<model>/{data,onnx}
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, cli, save  # noqa: E402


class Chain(object):
    """segments -> final through onnxruntime, each graph from ``files`` (name -> path) or the fp32 folder."""

    def __init__(self, onnx_dir, manifest):
        self.dir, self.manifest = onnx_dir, manifest
        self.by = {g["name"]: g for g in manifest["graphs"]}
        segments = sorted((g for g in manifest["graphs"] if g["role"] == "segment"), key=lambda g: g["index"])
        self.order = [g["name"] for g in segments] + ["final"]

    def path(self, files, name):
        return files.get(name) or os.path.join(self.dir, self.by[name]["file"])

    def miou(self, files, images, labels):
        import numpy as np
        import onnxruntime as ort

        from mess_edge.metrics import confusion_matrix, miou

        so = ort.SessionOptions()
        so.log_severity_level = 3
        sessions = [ort.InferenceSession(self.path(files, n), so, providers=["CPUExecutionProvider"])
                    for n in self.order]
        k = int(self.manifest["num_classes"])
        conf = np.zeros((k, k), np.int64)
        for x, y in zip(images, labels):
            for i, s in enumerate(sessions):
                x = s.run(None, {s.get_inputs()[0].name: x})[0]
            conf += confusion_matrix(x[0], y, k)
        return float(100 * miou(conf))


class HeadEval(object):
    """An exit head's mIoU (logits -> the exit's upsample graph -> labels) on the FP32 features of the images."""

    def __init__(self, chain, images):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.chain, self.so, self.ort = chain, so, ort
        segments = [ort.InferenceSession(chain.path({}, n), so, providers=["CPUExecutionProvider"])
                    for n in chain.order[:-1]]
        self.features = []  # [exit][image]
        xs = list(images)
        for s in segments:
            xs = [s.run(None, {s.get_inputs()[0].name: x})[0] for x in xs]
            self.features.append(xs)
        ups = {tuple(g["logits_hw"]): g["name"] for g in chain.manifest["graphs"] if g["role"] == "upsample"}
        self.upsample = {hw: ort.InferenceSession(chain.path({}, n), so, providers=["CPUExecutionProvider"])
                         for hw, n in ups.items()}

    def miou(self, path, exit_index, labels):
        import numpy as np

        from mess_edge.confidence import DEFAULT_TH_PIX
        from mess_edge.metrics import confusion_matrix, miou

        s = self.ort.InferenceSession(path, self.so, providers=["CPUExecutionProvider"])
        k = int(self.chain.manifest["num_classes"])
        conf = np.zeros((k, k), np.int64)
        th = np.array([DEFAULT_TH_PIX], np.float32)
        for f, y in zip(self.features[exit_index], labels):
            logits = s.run(["logits"], {"feat": f, "th_pix": th})[0]
            up = self.upsample[tuple(logits.shape[2:])]
            conf += confusion_matrix(up.run(None, {"logits": logits})[0][0], y, k)
        return float(100 * miou(conf))


def quantize_graph(chain, name, dst, calib, files, extra_fp32=(), first_conv_int8=True):
    """Graph ``name`` at INT8 into ``dst``, calibrated on the outputs of the graphs in ``files`` (INT8 ones)."""
    from mess_edge.quantize import quantizer
    from mess_edge.runtime.calib_data import graph_feeds, ort_graph_runner

    if not os.path.isfile(dst):
        run = ort_graph_runner(lambda n: chain.path(files, n))
        g = chain.by[name]
        quantizer._quantize_int8(chain.path({}, name), dst + ".tmp", g["role"],
                                 graph_feeds(chain.manifest, g, calib, run), "minmax", "int8", first_conv_int8,
                                 extra_fp32)
        os.replace(dst + ".tmp", dst)
    return dst


def eval_set(data, manifest, start, n):
    """Preprocessed images and label maps of cal images start .. start + n - 1."""
    import cv2
    import numpy as np
    from PIL import Image

    from mess_edge.data.voc import VocDataset
    from mess_edge.run.preprocess import Preprocessor

    ds = VocDataset(data, "cal")
    if len(ds) < start + n:
        sys.exit("the cal split of {} has {} images; expected at least {} (--calib-images + --n-eval)".format(
            data, len(ds), start + n))
    pre = Preprocessor(tuple(manifest["input_hw"]), manifest["normalization"])
    images = [pre(cv2.imread(ds.image_path(i), cv2.IMREAD_COLOR), out=pre.new_buffer()) for i in
              range(start, start + n)]
    labels = [np.array(Image.open(ds.label_path(i))) for i in range(start, start + n)]
    return images, labels


def measure(onnx_dir, data, work, calib_images, n_eval, log):
    import onnx

    from mess_edge.quantize import quantizer
    from mess_edge.runtime.calib_data import CalibrationSet

    manifest = json.load(open(os.path.join(onnx_dir, "manifest.json")))
    chain = Chain(onnx_dir, manifest)
    calib = CalibrationSet(data, manifest, calib_images)
    images, labels = eval_set(data, manifest, calib_images, n_eval)
    q = os.path.join(work, "graphs")
    os.makedirs(q, exist_ok=True)
    t0 = time.time()
    fp32 = chain.miou({}, images, labels)
    every = {}
    for name in chain.order:  # in chain order: each on the INT8 graphs before it, as quantize does
        every[name] = quantize_graph(chain, name, os.path.join(q, name + "-int8.onnx"), calib, dict(every))
    all_int8 = chain.miou(every, images, labels)
    log("fp32 {:.2f}, all int8 {:.2f}".format(fp32, all_int8))
    alone = {name: chain.miou({name: every[name]}, images, labels) for name in chain.order}
    worst = min(alone, key=alone.get)
    model = quantizer.name_nodes(onnx.load(chain.path({}, worst)))
    convs = [(n.name, n.input[0] == "image") for n in model.graph.node if n.op_type in quantizer.CONV_OPS]
    before = {n: every[n] for n in chain.order[:chain.order.index(worst)]}
    rows = []
    for k, (node, reads_image) in enumerate(convs):
        path = quantize_graph(chain, worst, os.path.join(q, "{}-fp32-{}.onnx".format(worst, k)), calib, before,
                              extra_fp32=[node])
        got = chain.miou(dict(every, **{worst: path}), images, labels)
        rows.append({"node": node, "reads_image": reads_image, "miou": got, "recovered_pp": got - all_int8})
        log("{:>3} {:<48} {:.2f}".format(k, node, got))
    default = {}
    for name in chain.order:
        default[name] = quantize_graph(chain, name, os.path.join(q, name + "-default.onnx"), calib, dict(default),
                                       first_conv_int8=False)
    heads, per_head_node = measure_heads(chain, images, labels, calib, q, log)
    return {"fp32": fp32, "all_int8": all_int8, "alone": alone, "worst_graph": worst, "per_node": rows,
            "default": chain.miou(default, images, labels), "heads": heads, "worst_head_per_node": per_head_node,
            "seconds": time.time() - t0}


def measure_heads(chain, images, labels, calib, q, log):
    """{head: {"exit", "fp32", "int8"}} each head alone at INT8 on FP32 features; per-node rows of the worst."""
    import onnx

    from mess_edge.quantize import quantizer

    ev = HeadEval(chain, images)
    heads = {}
    for g in chain.manifest["graphs"]:
        if g["role"] != "head":
            continue
        path = quantize_graph(chain, g["name"], os.path.join(q, g["name"] + "-int8.onnx"), calib, {})
        heads[g["name"]] = {"exit": g["exit"], "fp32": ev.miou(chain.path({}, g["name"]), g["exit"], labels),
                            "int8": ev.miou(path, g["exit"], labels)}
        log("{:<24} fp32 {:.2f} int8 {:.2f}".format(g["name"], heads[g["name"]]["fp32"], heads[g["name"]]["int8"]))
    worst = min(heads, key=lambda n: heads[n]["int8"] - heads[n]["fp32"])
    model = quantizer.name_nodes(onnx.load(chain.path({}, worst)))
    convs = [n.name for n in model.graph.node if n.op_type in quantizer.CONV_OPS]
    rows = []
    for k, node in enumerate(convs):
        path = quantize_graph(chain, worst, os.path.join(q, "{}-fp32-{}.onnx".format(worst, k)), calib, {},
                              extra_fp32=[node])
        got = ev.miou(path, heads[worst]["exit"], labels)
        rows.append({"head": worst, "node": node, "miou": got, "recovered_pp": got - heads[worst]["int8"]})
    return heads, rows


def markdown(p):
    lines = ["# INT8 sensitivity: which layers lose the accuracy", "",
             "Model: {}. Final-exit mIoU on {} cal images the scales were not fitted on (cal {}..{}; {} calibrate; "
             "no test image). Symmetric INT8 Q/DQ, per-channel weights, minmax, as `mess-edge quantize`.".format(
                 p["model"], p["n_eval"], p["calib_images"], p["calib_images"] + p["n_eval"] - 1,
                 p["calib_images"]), "",
             "| graphs at INT8 | final mIoU | vs FP32 (pp) |", "|---|---:|---:|",
             "| none (FP32) | {:.2f} | 0.00 |".format(p["fp32"]),
             "| all, every convolution (`--int8-first-conv`) | {:.2f} | {:+.2f} |".format(p["all_int8"],
                                                                                      p["all_int8"] - p["fp32"])]
    for name, v in p["alone"].items():
        lines.append("| only {} | {:.2f} | {:+.2f} |".format(name, v, v - p["fp32"]))
    lines.append("| all, the image's convolution FP32 (quantize's default) | {:.2f} | {:+.2f} |".format(
        p["default"], p["default"] - p["fp32"]))
    ranked = sorted(p["per_node"], key=lambda r: -r["recovered_pp"])
    lines += ["", "Every graph at INT8; one convolution of {} kept FP32 (`--fp32-layer {}:NODE`), best first "
              "(all {}):".format(p["worst_graph"], p["worst_graph"], len(ranked)), "",
              "| node | reads the image | final mIoU | recovered (pp) |", "|---|---|---:|---:|"]
    for r in ranked:
        lines.append("| `{}` | {} | {:.2f} | {:+.2f} |".format(r["node"], "yes" if r["reads_image"] else "",
                                                           r["miou"], r["recovered_pp"]))
    heads = sorted(p["heads"].items(), key=lambda kv: kv[1]["int8"] - kv[1]["fp32"])
    lines += ["", "Each exit head alone at INT8 (the head's own mIoU through its exit's upsample graph, on the FP32 "
              "backbone's features; quantize calibrates heads on the INT8 segments' outputs instead), worst "
              "first:", "", "| head | FP32 | INT8 | INT8 - FP32 (pp) |", "|---|---:|---:|---:|"]
    for name, h in heads:
        lines.append("| {} | {:.2f} | {:.2f} | {:+.2f} |".format(name, h["fp32"], h["int8"], h["int8"] - h["fp32"]))
    rows = sorted(p["worst_head_per_node"], key=lambda r: -r["recovered_pp"])
    if rows:
        lines += ["", "{} at INT8 with one convolution kept FP32, best first:".format(rows[0]["head"]), "",
                  "| node | head mIoU | recovered (pp) |", "|---|---:|---:|"]
        lines += ["| `{}` | {:.2f} | {:+.2f} |".format(r["node"], r["miou"], r["recovered_pp"]) for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cpu-mbv2-e8", help="a model under benchmarks/models/")
    ap.add_argument("--work", default=None, help="default runs/int8-sensitivity-<model>")
    ap.add_argument("--calib-images", type=int, default=64, help="first N cal images calibrate (quantize's default)")
    ap.add_argument("--n-eval", type=int, default=200, help="the next N cal images score")
    a = ap.parse_args()
    work = a.work or os.path.join(ROOT, "runs", "int8-sensitivity-" + a.model)
    shared = os.path.join(ROOT, "runs", "precision-" + a.model)  # benchmarks/precision.py's, when there
    data = os.path.join(shared, "data") if os.path.isdir(os.path.join(shared, "data")) else os.path.join(work, "data")
    onnx_dir = os.path.join(shared, "onnx") if os.path.isdir(os.path.join(shared, "onnx")) else os.path.join(work,
                                                                                                         "onnx")
    ckpt = os.path.join(ROOT, "benchmarks", "models", a.model, "stage2.pt")
    if not os.path.isdir(data):
        cli("data", "digitscenes", "--out", data, "--n-train", 2000, "--n-cal", 500, "--n-test", 500)
    if not os.path.isdir(onnx_dir):
        if not os.path.isfile(ckpt):
            sys.exit("no benchmark model {}: run python benchmarks/make_models.py {}".format(ckpt, a.model))
        cli("export", ckpt, "--out", onnx_dir)
    payload = measure(onnx_dir, data, work, a.calib_images, a.n_eval, lambda s: print("..", s, flush=True))
    payload.update(model="{} (benchmarks/models/{}/stage2.pt), DigitScenes 128x128".format(a.model, a.model),
                   n_eval=a.n_eval, calib_images=a.calib_images)
    name = "int8_sensitivity" if a.model == "cpu-mbv2-e8" else "int8_sensitivity-" + a.model
    save(name, payload, markdown(payload))


if __name__ == "__main__":
    main()
