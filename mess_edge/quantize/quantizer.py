"""Precision in the graph: an fp32 ONNX folder (``mess-edge export``) -> an INT8 (Q/DQ) or FP16 ONNX folder.

Library: ONNX Runtime's own tools, not NVIDIA ModelOpt. ``onnxruntime.quantization.quantize_static`` writes
explicit-quantization graphs (QuantizeLinear / DequantizeLinear pairs, QDQ format) that ONNX Runtime's CPU
provider runs with INT8 kernels here and TensorRT 8.5 to 11 builds as explicit precision; FP16 graphs come from
``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``. Both ship inside the
``onnxruntime`` wheel the device side already needs (also on a Jetson's Python 3.8), run on a CPU, and add
no install; ``nvidia-modelopt`` pulls torch and CUDA-only parts for its ONNX PTQ, which a device without the
training stack cannot take, and gives nothing a 6-graph CNN chain needs beyond what ORT's quantizer does.

The Q/DQ settings follow what TensorRT's explicit quantization accepts: symmetric INT8 for activations and
weights (zero point 0; TensorRT has no asymmetric INT8), per-channel weights, float biases (TensorRT 8.5's
DequantizeLinear takes INT8 only; QuantizeBias off). ``activations="uint8"`` instead writes asymmetric UINT8
activations (INT8 weights): ONNX Runtime's x86 CPU kernels are built for that u8s8 pairing and run it much
faster than s8s8 (benchmarks/precision.py), but TensorRT refuses such graphs, so it is for CPU targets only. Calibration: min/max of the activations over the
calibration split, each image read through the runtime's preprocessing (runtime/calib_data.py), and each
graph fed the real outputs of the already QUANTIZED segments before it, so segment k is calibrated on what the
deployed INT8 chain hands it, errors of earlier segments included.

What stays fp32 (both precisions): in every head the confidence gate, i.e. every node downstream of the
``logits`` output (softmax-free top-1, pools, threshold, votes: the exit decision must compare the same numbers
the memo saw), and in the final / monolithic graphs the label-map path after the last convolution (the
upsample's two MatMuls or Resize, ArgMax, Cast); upsample graphs (no weights) are copied unchanged. The logits
themselves come from a quantized convolution: that is the accuracy the device has, and what
``calibrate --engines`` measures.

INT8 only, by default: the convolution that reads the image (segment 0's and the monolithic graph's first one)
stays fp32, its input and weights unquantized. Measured on cpu-mbv2-e8 (benchmarks/precision.py): quantizing it
costs the final exit 2.2 of its 2.2 pp at symmetric INT8 (the image's normalised range [-2.1, 2.6] in 8 bits is
coarser than its own 1/255 steps, and the first layer's error reaches every exit); any one of the other 32
convolutions of segment 0 kept fp32 recovers at most 0.1 pp. It is 1.2% of the final path's MACs (3 input channels).
``first_conv_int8=True`` (``--int8-first-conv``) quantizes it too.

INT8 only, by default: an accuracy-aware fallback for the graphs that give labels (heads, final). Each is compared
with its fp32 self on the calibration images, both fed the same inputs (the INT8 segments' outputs): the share
of output pixels whose label (argmax of the logits; the final graph's labels) differs. Above
``fallback_disagreement_pct`` (4%), the convolution whose fp32 fallback lowers it most is kept fp32, one at a
time, up to ``fallback_max_layers`` (3) per graph, while that helps. The default 4% is set from one model's
measurement (cpu-mbv2-e8, heads alone at INT8 on 200 cal images: the two heads that lost more than 1 pp mIoU
relabelled 8.1% and 5.7% of their pixels, every other head at most 3.4% for at most 0.53 pp). The manifest
records every such graph's disagreement before and after and the nodes kept.
"""

import os
import shutil
import tempfile

from mess_edge.artifacts import check_output_folder, replace_folder, sha256_file, write_json_atomic
from mess_edge.errors import MessError

GRAPH_PRECISIONS = ("int8", "fp16")
# The label-map path starts after the last convolution: the export's MatMul upsample (label_map.py) carries
# constant matrices but is interpolation, not a layer to quantize.
CONV_OPS = ("Conv", "ConvTranspose")
CALIB_METHODS = ("minmax", "entropy", "percentile")


def manifest_precision(manifest):
    """The precision the graphs of a manifest were made at: "fp32" (export) unless quantize recorded one."""
    return manifest.get("precision", "fp32")


def name_nodes(model):
    """Give every unnamed node a unique name (nodes_to_exclude / node_block_list select nodes by name)."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = "{}_{}_{}".format(node.op_type, i, "mess")
        seen.add(node.name)
    return model


def fp32_nodes(model, role):
    """Names of the nodes kept in fp32: a head's gate (downstream of ``logits``), the label-map path of final /
    monolithic graphs (every node after the last convolution: Resize or the two upsample MatMuls, ArgMax,
    Cast). Other roles: none."""
    nodes = list(model.graph.node)
    if role == "head":
        reached, keep = {"logits"}, []
        for node in nodes:  # ONNX node lists are topologically sorted
            if any(i in reached for i in node.input):
                keep.append(node.name)
                reached.update(node.output)
        return keep
    if role in ("final", "monolithic"):
        last = max((k for k, n in enumerate(nodes) if n.op_type in CONV_OPS), default=-1)
        return [n.name for n in nodes[last + 1:]]
    return []


def image_convs(model):
    """Names of the convolutions that read the graph's ``image`` input directly (segment 0, monolithic)."""
    return [n.name for n in model.graph.node if n.op_type in CONV_OPS and "image" in n.input]


FALLBACK_DISAGREEMENT_PCT = 4.0
FALLBACK_MAX_LAYERS = 3


def label_disagreement(fp32_path, int8_path, role, feeds):
    """% of output pixels whose label differs between two versions of a head (argmax of ``logits``) or final
    graph (``labels``), fed the same ``feeds``."""
    import numpy as np

    from mess_edge.runtime.calib_data import ort_graph_runner

    run = ort_graph_runner({"a": fp32_path, "b": int8_path}.__getitem__)
    differ = total = 0
    for feed in feeds:
        a, b = run("a", feed), run("b", feed)
        la, lb = (a["logits"].argmax(1), b["logits"].argmax(1)) if role == "head" else (a["labels"], b["labels"])
        differ += int(np.count_nonzero(la != lb))
        total += la.size
    return 100.0 * differ / max(total, 1)


def _fallback(src, dst, role, feeds, quantize, keep, tol_pct, max_layers):
    """Keep convolutions of ``src`` fp32, one at a time, while the INT8 graph's labels differ from fp32's on more
    than ``tol_pct`` % of the pixels (the best candidate each round, re-quantized into ``dst``).
    ``quantize(path, extra_nodes)`` writes the INT8 graph. Returns {"before_pct", "after_pct", "nodes"}."""
    import onnx

    before = label_disagreement(src, dst, role, feeds)
    after, added = before, []
    if before > tol_pct and max_layers > 0:
        feeds = list(feeds)  # one graph's calibration inputs, held only while its candidates are tried
        convs = [n.name for n in name_nodes(onnx.load(src)).graph.node if n.op_type in CONV_OPS]
        trial = dst + ".trial.onnx"
        while after > tol_pct and len(added) < max_layers:
            best = None
            for node in convs:
                if node in keep or node in added:
                    continue
                quantize(trial, added + [node])
                got = label_disagreement(src, trial, role, feeds)
                if best is None or got < best[0]:
                    best = (got, node)
            if best is None or best[0] >= after:
                break  # nothing left helps
            added.append(best[1])
            after = best[0]
        if os.path.exists(trial):
            os.remove(trial)
        if added:
            quantize(dst, added)
    return {"before_pct": before, "after_pct": after, "nodes": added}


class _Reader(object):
    """onnxruntime.quantization.CalibrationDataReader over a lazy feed iterable (one image at a time)."""

    def __init__(self, feeds):
        self.feeds, self.it = feeds, None

    def get_next(self):
        if self.it is None:
            self.it = iter(self.feeds)
        return next(self.it, None)

    def rewind(self):
        self.it = None


def _quantize_int8(src, dst, role, feeds, method, activations="int8", first_conv_int8=False, extra_fp32=()):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    model = name_nodes(onnx.load(src))
    keep = fp32_nodes(model, role) + ([] if first_conv_int8 else image_convs(model))
    keep += [n for n in extra_fp32 if n not in keep]
    reader = type("FeedReader", (_Reader, CalibrationDataReader), {})(feeds)
    import logging

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" notice, twice per graph
    try:
        _run_quantize_static(
            quantize_static, model, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=keep, calibrate_method=methods[method],
            # MinMax keeps per-image ReduceMin / ReduceMax scalars, not activations: memory stays small
            extra_options={"ActivationSymmetric": activations == "int8", "WeightSymmetric": True,
                           "QuantizeBias": False})
    finally:
        root.setLevel(level)
    return keep


def _run_quantize_static(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except MessError:
        raise
    except Exception as e:  # onnxruntime's own error types, onnx's ValidationError
        raise MessError("onnxruntime.quantization could not quantize {} ({}: {}); expected an fp32 graph of "
                        "mess-edge export; try re-exporting".format(args[1], type(e).__name__,
                                                                  (str(e).strip().splitlines() or [""])[0][:200]))


def _convert_fp16(src, dst, role):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = name_nodes(onnx.load(src))
    keep = fp32_nodes(model, role)
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    onnx.save(half, dst)
    return keep


def _versions():
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


ACTIVATIONS = ("int8", "uint8")


def parse_fp32_layer(text):
    """"GRAPH:NODE" (``--fp32-layer``) -> (graph, node); the node name may hold colons, the graph name not."""
    graph, sep, node = text.partition(":")
    if not sep or not graph or not node:
        raise MessError("got --fp32-layer {!r}; expected GRAPH:NODE, e.g. segment_0:/features.1/conv/conv.0/"
                        "conv.0.0/Conv (node names as printed by benchmarks/int8_sensitivity.py)".format(text))
    return graph, node


def check_fp32_layers(onnx_dir, manifest, layers, precision):
    """{graph: [node, ...]} checked against the folder's graphs (names as quantize gives them); one line if not."""
    if not layers:
        return {}
    if precision != "int8":
        raise MessError("got --fp32-layer with --precision {}; expected --precision int8 (FP16 graphs keep every "
                        "layer's type already)".format(precision))
    import onnx

    by = {g["name"]: g for g in manifest["graphs"]}
    out = {}
    for graph, nodes in sorted(layers.items()):
        if graph not in by or by[graph]["role"] == "upsample":
            raise MessError("got --fp32-layer {}:...; expected one of the graphs {} of {}".format(
                graph, ", ".join(n for n in sorted(by) if by[n]["role"] != "upsample"), onnx_dir))
        names = {n.name for n in name_nodes(onnx.load(os.path.join(onnx_dir, by[graph]["file"]))).graph.node}
        for node in nodes:
            if node not in names:
                raise MessError("got --fp32-layer {}:{}; graph {} has no node of that name; try python "
                                "benchmarks/int8_sensitivity.py, which prints them".format(graph, node, graph))
        out[graph] = list(nodes)
    return out


def quantize_folder(onnx_dir, precision, out_dir, calib_dir=None, max_images=64, calib_method="minmax",
                    allow_resize=False, log=None, activations="int8", fp32_heads=False, first_conv_int8=False,
                    fp32_layers=None, fallback_disagreement_pct=FALLBACK_DISAGREEMENT_PCT,
                    fallback_max_layers=FALLBACK_MAX_LAYERS):
    """Write ``out_dir``: every graph of the fp32 folder ``onnx_dir`` at ``precision`` ("int8" Q/DQ or "fp16"),
    a manifest.json that build / profile / search / run read unchanged, recording precision, quantizer and
    calibration set (path, sha256 of names + bytes, image count, preprocessing). Replaced atomically.
    Returns the new manifest dict. ``log``: callable taking one progress line. ``activations``: "int8"
    (symmetric, TensorRT and ORT) or "uint8" (asymmetric, ORT CPU only: its fastest kernels). ``fp32_heads``:
    copy the exit heads unchanged (fp32) and quantize only the backbone and the final graph: on cpu-mbv2-e8 the
    worst early-exit drop at symmetric INT8 went from 6.4 to 2.2 pp (e0) for heads of 0.1-7 MMACs each.
    ``first_conv_int8``: quantize the convolution that reads the image too (kept fp32 by default: see the module
    docstring). ``fp32_layers``: {graph name: [node names]} kept fp32 besides those (INT8 only; the per-layer
    fallback that benchmarks/int8_sensitivity.py ranks); an unknown graph or node is refused in one line.
    ``fallback_disagreement_pct``, ``fallback_max_layers``: the accuracy-aware fallback of heads and the final
    graph (module docstring); ``fallback_max_layers=0`` turns it off.
    """
    import time

    from mess_edge.build.builder import check_graph_files, read_manifest
    from mess_edge.runtime.calib_data import CalibrationSet, graph_feeds, ort_graph_runner

    log = log or (lambda line: None)
    if precision not in GRAPH_PRECISIONS:
        raise MessError("got --precision {!r}; expected one of {}".format(precision, ", ".join(GRAPH_PRECISIONS)))
    if activations not in ACTIVATIONS:
        raise MessError("got --activations {!r}; expected one of {}".format(activations, ", ".join(ACTIVATIONS)))
    if calib_method not in CALIB_METHODS:
        raise MessError("got --calib-method {!r}; expected one of {}".format(calib_method, ", ".join(CALIB_METHODS)))
    manifest, manifest_sha = read_manifest(onnx_dir)
    made_at = manifest_precision(manifest)
    if made_at != "fp32":
        raise MessError("got {} with graphs already at {} (manifest.json precision); expected the fp32 graphs of "
                        "mess-edge export; try mess-edge quantize EXPORT_DIR --precision {} ...".format(
                            onnx_dir, made_at, precision))
    if os.path.abspath(out_dir) == os.path.abspath(onnx_dir):
        raise MessError("got --out {} equal to the input folder; expected a new folder (the fp32 graphs stay); "
                        "try --out {}-{}".format(out_dir, onnx_dir.rstrip("/"), precision))
    check_graph_files(onnx_dir, manifest)
    check_output_folder(out_dir)
    fp32_layers = check_fp32_layers(onnx_dir, manifest, fp32_layers or {}, precision)
    calib = None
    if precision == "int8":
        if not calib_dir:
            raise MessError("got --precision int8 without --calib-data; expected the calibration split (a VOC "
                            "dataset folder or a folder of images); try --calib-data DATA")
        calib = CalibrationSet(calib_dir, manifest, max_images, allow_resize)
        calib.image(0)  # a wrong folder fails here, in one line, before minutes of work
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".quantize-", dir=parent)
    try:
        done = {}  # graph name -> its file in tmp (the quantized segments feed the later graphs' calibration)
        run = ort_graph_runner(lambda name: done[name])
        order = sorted(manifest["graphs"], key=lambda g: (g["role"] != "segment", g.get("index", 0)))
        entries, extra_fields = {}, {}
        for i, g in enumerate(order):
            t0 = time.perf_counter()
            src, dst = os.path.join(onnx_dir, g["file"]), os.path.join(tmp, g["file"])
            if g["role"] == "upsample" or (fp32_heads and g["role"] == "head"):
                shutil.copyfile(src, dst)
                got, keep = "fp32", []
            elif precision == "int8":
                feeds = graph_feeds(manifest, g, calib, run)
                given = list(fp32_layers.get(g["name"], ()))

                def quantize(path, extra, src=src, g=g, feeds=feeds, given=given):
                    return _quantize_int8(src, path, g["role"], feeds, calib_method, activations, first_conv_int8,
                                          given + [n for n in extra if n not in given])
                keep = quantize(dst, [])
                got = "int8"
                if g["role"] in ("head", "final"):
                    fb = _fallback(src, dst, g["role"], feeds, quantize, keep, fallback_disagreement_pct,
                                   fallback_max_layers)
                    keep = keep + fb["nodes"]
                    extra_fields[g["name"]] = {"label_disagreement_pct": fb["after_pct"],
                                               "label_disagreement_before_fallback_pct": fb["before_pct"],
                                               "fallback_nodes": fb["nodes"]}
                    if fb["nodes"]:
                        log("      {}: labels differed from fp32 on {:.1f}% of pixels; kept fp32: {} -> {:.1f}%"
                            .format(g["name"], fb["before_pct"], ", ".join(fb["nodes"]), fb["after_pct"]))
            else:
                keep, got = _convert_fp16(src, dst, g["role"]), "fp16"
            done[g["name"]] = dst
            entries[g["name"]] = dict(g, sha256=sha256_file(dst), precision=got, fp32_nodes=len(keep),
                                      fp32_sha256=g["sha256"], **extra_fields.get(g["name"], {}))
            log("[{:>3}/{}] {:<24} {:<5} ({} nodes kept fp32)  {:.1f} s".format(
                i + 1, len(order), g["name"], got, len(keep), time.perf_counter() - t0))
        out = dict(manifest, graphs=[entries[g["name"]] for g in manifest["graphs"]], precision=precision,
                   source_onnx_dir=os.path.abspath(onnx_dir), source_manifest_sha256=manifest_sha,
                   quantizer=dict(_versions(), tool="onnxruntime.quantization.quantize_static (QDQ)" if
                                  precision == "int8" else "onnxruntime.transformers.float16 (keep_io_types)"),
                   calibration=None, fp32_heads=bool(fp32_heads),
                   fp32_first_conv=precision == "int8" and not first_conv_int8, fp32_layers=fp32_layers,
                   fallback=None if precision != "int8" else {"disagreement_pct": fallback_disagreement_pct,
                                                              "max_layers": fallback_max_layers})
        if calib is not None:
            out["calibration"] = dict(calib.identity(), method=calib_method, per_channel=True,
                                      symmetric=activations == "int8", activations=activations,
                                      inputs_from="quantized segments")
        write_json_atomic(os.path.join(tmp, "manifest.json"), out)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
