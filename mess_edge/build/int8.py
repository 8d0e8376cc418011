"""INT8 for the TensorRT build of fp32 graphs (the implicit calibrator of 8.x / 10.x): calibration inputs and
the calibration caches, keyed on the calibration set.

Inputs: images read and preprocessed by the runtime's own Preprocessor (runtime/calib_data.py), the features
of every later graph streamed one image at a time through the fp32 ONNX graphs with onnxruntime, and computed
only when TensorRT asks for a batch: with every cache present the feature pass never runs.
Caches: one per graph (``<graph>-<graph sha256[:16]>.cache``) beside a ``.json`` naming the calibration set it
came from (sha256 of file names + bytes, image count, preprocessing). A cache from another set is refused in one
line (``--recalibrate`` replaces it), never reused for scales it was not fitted on.

No GPU is needed here: the tests compare the streamed feeds with the plain in-memory chain
(``_graphs_in_build_order``, the reference) and check the cache keys. The calibrator itself is
trt_runner.make_entropy_calibrator.
"""

import json
import os

from mess_edge.artifacts import write_json_atomic
from mess_edge.errors import MessError


def calibration_images(calib_dir, manifest, max_images):
    """Up to ``max_images`` preprocessed images [1, 3, H, W] float32 from ``calib_dir`` (sorted names), in
    memory (the reference; the build streams): .npy files are taken as already preprocessed; images go
    through the runtime's Preprocessor (resized to the manifest's input_hw, normalised with its mean / std)."""
    from mess_edge.runtime.calib_data import CalibrationSet

    return list(CalibrationSet(calib_dir, manifest, max_images, allow_resize=True))


def int8_cache_path(cache_dir, graph):
    """The calibration cache file of ``graph`` (a manifest entry) in ``cache_dir``."""
    return os.path.join(cache_dir, "{}-{}.cache".format(graph["name"], graph["sha256"][:16]))


def _cache_record(calib):
    ident = calib.identity()
    return {"calibration_key": calib.key(), "sha256": ident["sha256"], "n_images": ident["n_images"],
            "preprocessing": ident["preprocessing"], "path": ident["path"]}


def check_int8_cache(cache_path, calib, recalibrate=False):
    """True when ``cache_path`` holds scales fitted on ``calib`` (a CalibrationSet); False when there is none
    (or ``recalibrate`` removed it). MessError for a cache of another calibration set or of unknown origin."""
    meta_path = cache_path + ".json"
    if not os.path.isfile(cache_path):
        return False
    meta = None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            try:
                meta = json.load(f)
            except ValueError:
                meta = None
    if meta is not None and meta.get("calibration_key") == calib.key():
        return True
    if recalibrate:
        for p in (cache_path, meta_path):
            if os.path.exists(p):
                os.remove(p)
        return False
    ident = calib.identity()
    made = ("no record of its calibration set" if meta is None else "calibration set {} ({} images, sha256 {})".format(
        meta.get("path"), meta.get("n_images"), str(meta.get("sha256"))[:12]))
    raise MessError("INT8 cache {} was made from {}; got --calib-data {} ({} images, sha256 {}); expected the "
                    "same images and preprocessing; try --recalibrate to replace it, or --calib-cache-dir DIR"
                    .format(cache_path, made, ident["path"], ident["n_images"], ident["sha256"][:12]))


def record_int8_cache(cache_path, calib):
    """Write the ``.json`` beside a cache TensorRT just wrote (or read), naming its calibration set."""
    if os.path.isfile(cache_path):
        write_json_atomic(cache_path + ".json", _cache_record(calib))


def _graphs_in_build_order(manifest, images):
    """Yield (graph, calibration feeds or None), ordered so each graph's inputs are at hand when
    ``images`` is given: segment k, then the heads at exit k, then final, then the rest. Features of one
    exit point at a time are computed with onnxruntime on the ONNX graphs (fp32), all held in memory:
    the plain reference the streamed feeds (calib_data.graph_feeds) are tested against.

    Each graph of ``manifest`` carries "_path", its ONNX file."""
    graphs = manifest["graphs"]
    segments = sorted((g for g in graphs if g["role"] == "segment"), key=lambda g: g["index"])
    run = _reference_runner() if images is not None else None
    done, current = set(), images
    for seg in segments:
        name_in = seg["inputs"][0]["name"]
        yield seg, (None if images is None else [{name_in: x} for x in current])
        if images is not None:
            current = [run(seg, {name_in: x})["feat"] for x in current]
        done.add(seg["name"])
        for g in graphs:
            if g["role"] in ("head", "final") and (g.get("exit") == seg["index"] or (
                    g["role"] == "final" and seg is segments[-1])):
                yield g, _head_feeds(g, current)
                done.add(g["name"])
    for g in graphs:
        if g["name"] not in done:
            image_input = [i["name"] for i in g["inputs"]] == ["image"]
            yield g, ([{"image": x} for x in images] if images is not None and image_input else None)


def _head_feeds(g, features):
    if features is None:
        return None
    import numpy as np

    from mess_edge.confidence import DEFAULT_TH_PIX

    names = [i["name"] for i in g["inputs"]]
    # Heads take a pixel threshold; the final graph (which ends in labels) takes the feature alone.
    return [{n: (f if n == "feat" else np.array([DEFAULT_TH_PIX], np.float32)) for n in names} for f in features]


def _reference_runner():
    """run(graph, feed) -> outputs with onnxruntime on the CPU, to compute calibration features."""
    from mess_edge.runtime.calib_data import ort_graph_runner

    paths = {}
    run_by_name = ort_graph_runner(paths.__getitem__)

    def run(g, feed):
        paths[g["name"]] = g["_path"]
        return run_by_name(g["name"], feed)
    return run
