"""INT8 calibration inputs for the TensorRT build: images preprocessed as the manifest says, then the
features every graph sees, computed one exit point at a time with onnxruntime on the ONNX graphs (fp32).

No GPU is needed here: the tests compare these feeds with the plain ONNX chain. The calibrator itself
(trt_runner.make_entropy_calibrator) and the per-graph cache files belong to build._build_trt.
"""

import os

from mess_edge.errors import MessError


def calibration_images(calib_dir, manifest, max_images):
    """Up to ``max_images`` preprocessed images [1, 3, H, W] float32 from ``calib_dir`` (sorted names):
    .npy files are taken as already preprocessed; images are resized to the manifest's input_hw and
    normalised with its mean / std (RGB, x / scale)."""
    import numpy as np

    h, w = manifest["input_hw"]
    norm = manifest["normalization"]
    names = sorted(n for n in os.listdir(calib_dir) if os.path.splitext(n)[1].lower() in
                   (".npy", ".jpg", ".jpeg", ".png", ".bmp", ".ppm")) if os.path.isdir(calib_dir) else []
    if not names:
        raise MessError("got no calibration images in {}; expected .jpg/.png images or preprocessed .npy "
                        "arrays; try --calib-data DATA/JPEGImages".format(calib_dir))
    images = []
    for n in names[:max_images]:
        path = os.path.join(calib_dir, n)
        if n.lower().endswith(".npy"):
            x = np.load(path).astype(np.float32).reshape(1, 3, h, w)
        else:
            from PIL import Image
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
            x = ((rgb / norm["scale"] - np.float32(norm["mean"])) / np.float32(norm["std"]))
            x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
        images.append(x)
    return images


def _graphs_in_build_order(manifest, images):
    """Yield (graph, calibration feeds or None), ordered so each graph's inputs are at hand when
    ``images`` is given: segment k, then the heads at exit k, then final, then the rest. Features of one
    exit point at a time are computed with onnxruntime on the ONNX graphs (fp32 reference).

    Each graph of ``manifest`` carries "_path", its ONNX file (added by build._build_trt, the one caller)."""
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
    try:
        import onnxruntime as ort
    except ImportError:
        raise MessError("got --precision int8 but onnxruntime is not installed; expected it to compute the "
                        "calibration features of every segment; try `pip install onnxruntime`")
    sessions = {}

    def run(g, feed):
        if g["name"] not in sessions:
            sessions[g["name"]] = ort.InferenceSession(g["_path"], providers=["CPUExecutionProvider"])
        outs = sessions[g["name"]].run(None, feed)
        return {o.name: v for o, v in zip(sessions[g["name"]].get_outputs(), outs)}
    return run
