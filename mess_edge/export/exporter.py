"""``mess-edge export``: ONNX graphs per backbone segment and head, a manifest, and the export self-check.

Every graph is written at opset 17 (TensorRT 8.5/8.6 parse up to 17, and their importers mishandle the
opset-18 Reduce* ``axes`` input), checked with ``onnx.checker``, then run by onnxruntime on a seeded input
and compared with PyTorch. Finally the whole chain (segments -> final -> upsample, and every head) is
compared end to end with the PyTorch model. The numbers go into ``manifest.json``.
"""

import contextlib
import io
import os
import shutil
import warnings

import numpy as np
import torch

from mess_edge.artifacts import check_output_folder, make_temp_dir, replace_folder, sha256_file, write_json_atomic
from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.data.voc import IMAGENET_MEAN, IMAGENET_STD
from mess_edge.errors import MessError
from mess_edge.export import graphs
from mess_edge.export.label_map import DEFAULT_LABEL_MAP, LABEL_MAP_FORMS
from mess_edge.model.macs import macs_of

OPSET = 17
FORMAT = "mess-edge-manifest/1"
# The export fails above these (manifest "parity.tolerance"). fp32 ONNX Runtime vs PyTorch differ by rounding:
# 1e-6..1e-4 on the logits of every preset measured; a wrong graph or a corrupt weight gives 1e-1 and far more.
PARITY_TOLERANCE = {"max_abs_logit_diff": 1e-3, "min_label_agreement": 0.999}


def _io(name, t):
    return {"name": name, "shape": [int(s) for s in t.shape], "dtype": str(t.dtype).replace("torch.", "")}


def _export(module, args, path, in_names, out_names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET, input_names=in_names,
                              output_names=out_names, do_constant_folding=True)


def _ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def export_checkpoint(ckpt_path, out_dir, log=print, label_map=DEFAULT_LABEL_MAP):
    """Export every graph of a checkpoint into ``out_dir`` (replaced atomically); returns the manifest dict.

    ``label_map``: how the final, monolithic and upsample graphs upsample logits to the label map, "matmul"
    (two MatMuls, the default: faster on ONNX Runtime's CPU path) or "resize" (ONNX Resize); label_map.py."""
    import onnx

    from mess_edge.train.checkpoint import build_model, load_checkpoint
    from mess_edge.train.data import class_names

    if label_map not in LABEL_MAP_FORMS:
        raise MessError("got --label-map {!r}; expected one of {}".format(label_map, ", ".join(LABEL_MAP_FORMS)))
    check_output_folder(out_dir)
    ckpt = load_checkpoint(ckpt_path)
    net = build_model(ckpt).eval()
    heads = net.heads()
    if not heads:
        raise MessError("{} has no trained early exits (stage {}); export a stage-2 checkpoint".format(
            ckpt_path, ckpt["stage"]))
    hw = net.input_hw
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = make_temp_dir(parent, ".onnx-")
    try:
        manifest = _export_all(net, heads, hw, tmp, log, onnx, label_map)
        manifest["parity"]["tolerance"] = dict(PARITY_TOLERANCE)
        check_parity(manifest, ckpt_path)
        manifest.update({
            "format": FORMAT, "preset": net.preset_name, "num_classes": net.num_classes,
            "classes": class_names(ckpt["train_config"].get("data", ""), net.num_classes),
            "input_hw": list(hw), "opset": OPSET, "label_map": label_map,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "order": "RGB",
                              "scale": 255.0},
            "checkpoint": os.path.abspath(ckpt_path), "checkpoint_sha256": sha256_file(ckpt_path),
            "exit_points": [e.to_dict() for e in net.exit_points],
        })
        write_json_atomic(os.path.join(tmp, "manifest.json"), manifest)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_parity(manifest, ckpt_path):
    """MessError when ONNX Runtime and PyTorch disagree beyond the manifest's ``parity.tolerance``."""
    parity, tol = manifest["parity"], manifest["parity"]["tolerance"]
    worst = [("graph", parity["per_graph_max_abs_diff"])]
    worst += [("chain " + k, parity["chain"][k]) for k in ("final_max_abs_logit_diff", "heads_max_abs_logit_diff")]
    for what, diff in worst:
        if not diff <= tol["max_abs_logit_diff"]:  # NaN fails too
            raise MessError("export parity check failed for {}: got {} max |ONNX Runtime - PyTorch| {:.3g}; expected "
                            "<= {:g} (manifest parity.tolerance); nothing was written; try re-copying or retraining "
                            "the checkpoint".format(ckpt_path, what, diff, tol["max_abs_logit_diff"]))
    for key in ("final_label_agreement", "monolithic_label_agreement"):
        if not parity["chain"][key] >= tol["min_label_agreement"]:
            raise MessError("export parity check failed for {}: got {} {:.4%}; expected >= {:.2%} (manifest "
                            "parity.tolerance); nothing was written".format(ckpt_path, key, parity["chain"][key],
                                                                          tol["min_label_agreement"]))


def _export_all(net, heads, hw, out, log, onnx, label_map=DEFAULT_LABEL_MAP):
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, hw[0], hw[1], generator=gen)
    th = torch.tensor([DEFAULT_TH_PIX])
    with torch.no_grad():
        feats = net.forward_features(image)
    n_early = len(net.exit_points)
    specs = []  # (name, role, extra, module, args, in_names, out_names)
    for k in range(n_early):
        specs.append(("segment_{}".format(k), "segment", {"index": k}, graphs.Segment(net, k),
                      (image if k == 0 else feats[k - 1],), ["image" if k == 0 else "feat_in"], ["feat"]))
    for k, arch in heads:
        specs.append(("head_e{}_{}".format(k, arch.name), "head", {"exit": k, "arch": arch.to_dict()},
                      graphs.gated_head(net, k, arch), (feats[k], th), ["feat", "th_pix"], ["logits", "confidence"]))
    with torch.no_grad():
        native = {tuple(net.forward_exit(k, a, feats[k]).shape[-2:]) for k, a in heads}
        final_hw = tuple(net.forward_final_head(feats[-1]).shape[-2:])
    specs.append(("final", "final", {}, graphs.FinalPath(net, logits_hw=final_hw, form=label_map),
                  (feats[n_early - 1],), ["feat"], ["labels"]))
    for h, w in sorted(native):
        logits = torch.randn(1, net.num_classes, h, w, generator=gen)
        specs.append(("upsample_{}x{}".format(h, w), "upsample", {"logits_hw": [h, w]},
                      graphs.Upsample((h, w), hw, label_map), (logits,), ["logits"], ["labels"]))
    specs.append(("monolithic", "monolithic", {}, graphs.Monolithic(net, final_hw, label_map), (image,), ["image"],
                  ["labels"]))

    entries, worst = [], 0.0
    for i, (name, role, extra, module, args, in_names, out_names) in enumerate(specs):
        module.eval()
        macs, ref = macs_of(module, *args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        path = os.path.join(out, name + ".onnx")
        _export(module, args, path, in_names, out_names)
        try:
            onnx.checker.check_model(onnx.load(path))
        except onnx.checker.ValidationError as e:
            raise MessError("exported graph {} fails onnx.checker: {}".format(name, str(e).splitlines()[0]))
        got = _ort_session(path).run(None, {n: a.numpy() for n, a in zip(in_names, args)})
        parity = {}
        for oname, r, g in zip(out_names, ref, got):
            r = r.numpy()
            if np.issubdtype(r.dtype, np.floating):
                parity[oname + "_max_abs_diff"] = float(np.abs(r - g).max())
                if oname != "confidence":
                    worst = max(worst, parity[oname + "_max_abs_diff"])
            else:
                parity[oname + "_agreement"] = float((r == g).mean())
        entry = {"name": name, "role": role}
        entry.update(extra)
        entry.update({"file": name + ".onnx", "sha256": sha256_file(path), "gmacs": macs / 1e9,
                      "inputs": [_io(n, a) for n, a in zip(in_names, args)],
                      "outputs": [_io(n, r) for n, r in zip(out_names, ref)], "parity": parity})
        entries.append(entry)
        log("[{}/{}] {:<24} {:8.4f} GMACs  {}".format(i + 1, len(specs), name, macs / 1e9, " ".join(
            "{} {:.2e}".format(k, v) for k, v in parity.items())))
    chain = _chain_parity(net, heads, entries, out)
    log("chain vs PyTorch: max |logit diff| {:.2e}, label agreement {:.4%} (final), worst head {:.2e}".format(
        chain["final_max_abs_logit_diff"], chain["final_label_agreement"], chain["heads_max_abs_logit_diff"]))
    return {"graphs": entries, "parity": {"per_graph_max_abs_diff": worst, "chain": chain}}


def _chain_parity(net, heads, entries, out, n_images=2):
    """Run the exported chain with onnxruntime and compare it with the PyTorch model end to end."""
    sess = {e["name"]: _ort_session(os.path.join(out, e["file"])) for e in entries}
    # The runtime's final graph ends in labels; its logits are checked through a verification-only export.
    probe = os.path.join(out, ".final_logits.onnx")
    _export(graphs.FinalPath(net, labels=False).eval(), (torch.zeros(entries[len(net.exit_points) - 1]["outputs"][0]
                                                                     ["shape"]),), probe, ["feat"], ["logits"])
    final_logits = _ort_session(probe)
    os.remove(probe)
    gen = torch.Generator().manual_seed(1)
    th = np.array([DEFAULT_TH_PIX], np.float32)
    n_early = len(net.exit_points)
    final_diff, head_diff, agree, mono_agree = 0.0, 0.0, [], []
    for _ in range(n_images):
        image = torch.randn(1, 3, net.input_hw[0], net.input_hw[1], generator=gen)
        with torch.no_grad():
            ref = net.forward_heads(image, heads)
            ref_labels = net(image).argmax(1).numpy()
        x, feats = image.numpy(), []
        for k in range(n_early):
            x = sess["segment_{}".format(k)].run(None, {"image" if k == 0 else "feat_in": x})[0]
            feats.append(x)
        logits = final_logits.run(None, {"feat": feats[-1]})[0]
        final_diff = max(final_diff, float(np.abs(logits - ref["final"].numpy()).max()))
        up = sess["final"].run(None, {"feat": feats[-1]})[0]
        agree.append(float((up == ref_labels).mean()))
        mono = sess["monolithic"].run(None, {"image": image.numpy()})[0]
        mono_agree.append(float((mono == ref_labels).mean()))
        for k, arch in heads:
            hl = sess["head_e{}_{}".format(k, arch.name)].run(None, {"feat": feats[k], "th_pix": th})[0]
            head_diff = max(head_diff, float(np.abs(hl - ref[(k, arch)].numpy()).max()))
    return {"n_images": n_images, "final_max_abs_logit_diff": final_diff, "heads_max_abs_logit_diff": head_diff,
            "final_label_agreement": float(np.mean(agree)), "monolithic_label_agreement": float(np.mean(mono_agree))}
