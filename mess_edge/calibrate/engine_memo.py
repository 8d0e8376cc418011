"""The memo from the deployed graphs (``mess-edge calibrate --engines``): numpy + the engines' runners, no torch.

Same format as memoise.py's (mess_edge.search.memo.Memo), computed by the engines this device runs, at their
precision (INT8 Q/DQ, FP16, FP32), so the search trades the accuracy the device really has. Per calibration
image: every segment runs once, every head on its exit point's feature returns its native-resolution logits
(histograms of the raw and edge-enhanced top-1 confidence, as memoise.py computes them from torch's logits),
and its label map through the upsample graph the chain uses; the final graph returns its label map. Images
go through the runtime's Preprocessor; labels are resized (nearest) to the input size as memoise.py does.

Differences from the torch memo, by construction: the final graph ends in labels, so the final exit's
confidence statistics are not measured (every pixel in the top bin: the final exit always accepts),
and the per-pixel LC baseline's arrays (which need torch's receptive-field analysis) are left out (optional).
"""

import os

import numpy as np

from mess_edge.errors import MessError


def _label_map(labels):
    return np.asarray(labels).reshape(labels.shape[-2:])


def _open_runners(engines):
    """{graph name: active runner} for every segment, head, upsample and the final graph."""
    names = [g["name"] for role in ("segment", "head", "upsample", "final") for g in engines.by_role(role)]
    runners = {}
    try:
        for n in names:
            runners[n] = engines.runner(n).activate()
    except BaseException:
        for r in runners.values():
            r.deactivate()
        raise
    return runners


def _image_outputs(engines, runners, x, upsample_of, th):
    """[(logits float32 [1, C, h, w] or None, label map int32 [H, W])] per head (manifest order), then final."""
    feat, feats = x, []
    for k, g in enumerate(engines.by_role("segment")):
        feat = runners[g["name"]].infer({"image" if k == 0 else "feat_in": feat}, False)["feat"]
        feats.append(feat)
    out = []
    for g in engines.by_role("head"):
        logits = runners[g["name"]].infer({"feat": feats[g["exit"]], "th_pix": th}, False)["logits"]
        labels = runners[upsample_of[g["name"]]].infer({"logits": logits}, False)["labels"]
        out.append((np.asarray(logits, np.float32), _label_map(labels)))
    out.append((None, _label_map(runners["final"].infer({"feat": feats[-1]}, False)["labels"])))
    return out


def memoise_engines(engine_dir, data, split="cal", max_images=None, progress=True, device_index=0):
    """Run an engine folder's graphs over a split of a VOC dataset and return a ``mess_edge.search.Memo``."""
    from mess_edge.build.engine_set import load_engines
    from mess_edge.confidence import HIST_BINS, confidence_histograms, hist_bin_edges
    from mess_edge.data.voc import VocDataset, resize_pair
    from mess_edge.metrics import confusion_matrix
    from mess_edge.confidence import DEFAULT_TH_PIX
    from mess_edge.progress import progress as make_progress
    from mess_edge.run.chain import _upsample_for
    from mess_edge.run.preprocess import Preprocessor
    from mess_edge.search.memo import ARCH_KEYS, MEMO_FORMAT, Memo

    engines = load_engines(engine_dir, device_index=device_index)
    man = engines.manifest
    C, hw = int(man["num_classes"]), tuple(man["input_hw"])
    ds = VocDataset(data, split, num_classes=C)
    n = len(ds) if not max_images else min(max_images, len(ds))
    if n == 0:
        raise MessError("got no images in split {!r} of {}; expected the calibration split; try --split cal".format(
            split, data))
    heads = engines.by_role("head")
    if not heads:
        raise MessError("engines in {} have no head graphs; expected an export of a stage-2 checkpoint".format(
            engine_dir))
    H = len(heads)
    upsample_of = {g["name"]: _upsample_for(engines, g["name"]) for g in heads}
    confusion = np.zeros((H + 1, n, C, C), np.int64)
    hist_edge = np.zeros((H + 1, n, HIST_BINS), np.int32)
    hist_raw = np.zeros((H + 1, n, HIST_BINS), np.int32)
    mean_conf = np.zeros((H + 1, n), np.float32)
    n_pixels = np.zeros((H + 1, n), np.int64)
    pre = Preprocessor(hw, man["normalization"])
    th = np.array([DEFAULT_TH_PIX], np.float32)  # only the gate reads it; the memo keeps every threshold
    runners = _open_runners(engines)
    try:
        with make_progress(n, "calibrate {} ({} engines)".format(split, engines.precision), enabled=progress,
                           unit="images") as bar:
            for i in range(n):
                rgb, y = ds.load(i)
                if rgb.shape[:2] != hw:
                    rgb, y = resize_pair(rgb, y, hw)
                x = pre(np.ascontiguousarray(rgb[..., ::-1]))  # the Preprocessor takes BGR, as cv2 delivers
                for h, (logits, labels) in enumerate(_image_outputs(engines, runners, x, upsample_of, th)):
                    confusion[h, i] = confusion_matrix(labels, y, C)
                    if logits is None:  # the final exit: no logits; it always accepts (confidence 1)
                        n_pixels[h, i] = hist_edge[h, i, -1] = hist_raw[h, i, -1] = labels.size
                        mean_conf[h, i] = 1.0
                        continue
                    hist_edge[h, i], hist_raw[h, i], mean_conf[h, i] = confidence_histograms(logits[0])
                    n_pixels[h, i] = logits.shape[-2] * logits.shape[-1]
                bar.update(1)
    finally:
        for r in runners.values():
            r.deactivate()
    exit_points = man.get("exit_points", [])
    meta = {"format": MEMO_FORMAT, "source": "engines", "engines": os.path.abspath(engine_dir),
            "backend": engines.backend, "precision": engines.precision,
            "device": engines.sidecar["device"]["id"], "manifest_sha256": engines.sidecar["manifest_sha256"],
            "checkpoint": man.get("checkpoint"), "checkpoint_sha256": man.get("checkpoint_sha256"),
            "calibration": man.get("calibration"), "num_classes": C, "classes": man.get("classes"),
            "input_hw": list(hw), "exit_points": exit_points, "split": split, "n_images": n,
            "data": os.path.abspath(data), "stride_per_exit": [e.get("stride") for e in exit_points],
            "image_ids": ds.ids[:n], "lc_radius": [], "final_confidence": "not measured (the final graph ends in "
                                                                          "labels): all pixels in the top bin"}
    head_arch = np.array([[int(g["arch"][k]) for k in ARCH_KEYS] for g in heads], np.int64).reshape(H, 4)
    return Memo(confusion=confusion, hist_edge=hist_edge, hist_raw=hist_raw, hist_bins=hist_bin_edges(),
                mean_conf=mean_conf, n_pixels=n_pixels, head_exit=np.array([g["exit"] for g in heads], np.int64),
                head_arch=head_arch, meta=meta)
