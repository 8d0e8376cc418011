"""Calibration data for every precision step (``mess-edge quantize``, TensorRT's INT8 build): the image list,
its identity (hash, count, preprocessing) and the features each graph sees, streamed one image at a time.

Images go through the runtime's own ``Preprocessor`` (mess_edge.run.preprocess: cv2.imread BGR, cv2 bilinear
resize, the manifest's normalisation), so the scales are fitted on exactly the tensors ``run`` will feed.
The feeds of a graph are computed lazily: image i is read, preprocessed and pushed through the segments before
the graph, then dropped; nothing is held for the whole set (one DRN-50 exit's features for 500 images are
about 1 GB on a Jetson whose memory the GPU shares), and nothing is computed when no consumer asks.
Device side: numpy, cv2 and onnxruntime (inside functions); no torch.
"""

import hashlib
import json
import os

import numpy as np

from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.errors import MessError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
TH_PIX_CALIB = DEFAULT_TH_PIX  # the heads' pixel threshold input while calibrating: it only feeds the (fp32) gate


def _list_files(calib_dir):
    """Sorted paths of the calibration folder: a VOC root (its ``cal`` split) or a folder of images / .npy."""
    split = os.path.join(calib_dir, "ImageSets", "Segmentation", "cal.txt")
    if os.path.isfile(split):
        from mess_edge.data.voc import VocDataset

        ds = VocDataset(calib_dir, "cal")
        return [ds.image_path(i) for i in range(len(ds))]
    if not os.path.isdir(calib_dir):
        return []
    return [os.path.join(calib_dir, n) for n in sorted(os.listdir(calib_dir))
            if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES + (".npy",)]


class CalibrationSet(object):
    """The first ``max_images`` images of ``calib_dir`` preprocessed as the runtime does.

    ``calib_dir``: a VOC-layout dataset (its ``cal`` split) or a folder of .jpg/.png images or preprocessed
    .npy arrays (float32 [3, H, W] or [1, 3, H, W]). ``allow_resize``: accept images of another size than the
    manifest's input_hw (resized like camera frames); otherwise such a folder is refused, since scales fitted
    on resized images of another dataset are rarely what the user meant.
    ``identity()`` is what caches and manifests record: {"path", "sha256" (file names + contents), "n_images",
    "preprocessing"}.
    """

    def __init__(self, calib_dir, manifest, max_images=None, allow_resize=False):
        self.dir, self.hw = calib_dir, tuple(int(v) for v in manifest["input_hw"])
        self.normalization = dict(manifest["normalization"])
        self.allow_resize = allow_resize
        files = _list_files(calib_dir)
        if not files:
            raise MessError("got no calibration images in {}; expected a VOC dataset folder (its cal split) or "
                            ".jpg/.png images or preprocessed .npy arrays; try --calib-data DATA".format(calib_dir))
        self.files = files[:max_images] if max_images else files
        self._pre = None
        self._identity = None

    def __len__(self):
        return len(self.files)

    def preprocessing(self):
        """What turns a file into the network input (recorded beside every calibration result)."""
        return {"reader": "cv2.imread (BGR)", "resize": "cv2.INTER_LINEAR" if self.allow_resize else "none",
                "implementation": "mess_edge.run.preprocess.Preprocessor", "input_hw": list(self.hw),
                "normalization": self.normalization}

    def identity(self):
        """{"path", "sha256", "n_images", "preprocessing"}; the hash covers names and bytes of the files used."""
        if self._identity is None:
            from mess_edge.artifacts import sha256_file

            h = hashlib.sha256()
            for path in self.files:
                h.update(os.path.basename(path).encode("utf-8") + b"\0" + sha256_file(path).encode() + b"\n")
            self._identity = {"path": os.path.abspath(self.dir), "sha256": h.hexdigest(), "n_images": len(self.files),
                              "preprocessing": self.preprocessing()}
        return self._identity

    def key(self):
        """Short hex digest of the identity without its path: equal iff same files, count and preprocessing."""
        ident = dict(self.identity())
        ident.pop("path")
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def image(self, i):
        """float32 [1, 3, H, W]: file i preprocessed (a fresh array)."""
        path = self.files[i]
        if path.lower().endswith(".npy"):
            x = np.load(path)
            if x.size != 3 * self.hw[0] * self.hw[1]:
                raise MessError("calibration array {} has shape {}; expected [3, {}, {}] (the manifest's input "
                                "size); try arrays preprocessed at that size".format(path, x.shape, *self.hw))
            return np.ascontiguousarray(x.reshape((1, 3) + self.hw), dtype=np.float32)
        import cv2

        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            raise MessError("cannot read calibration image {}; expected a valid JPEG or PNG".format(path))
        if frame.shape[:2] != self.hw and not self.allow_resize:
            raise MessError("calibration image {} is {}x{}; expected {}x{} (the graphs' input size); try a "
                            "calibration folder of the dataset the model was trained on, or --calib-resize to "
                            "resize like camera frames".format(path, frame.shape[0], frame.shape[1], *self.hw))
        if self._pre is None:
            from mess_edge.run.preprocess import Preprocessor

            self._pre = Preprocessor(self.hw, self.normalization)
        return self._pre(frame, out=self._pre.new_buffer())

    def __iter__(self):
        for i in range(len(self.files)):
            yield self.image(i)


def graph_feeds(manifest, graph, calib, run):
    """Lazy calibration feeds of ``graph``: an iterable over {input name: array} per calibration image.

    ``run(name, feed) -> {output: array}`` runs graph ``name`` of the manifest (the caller chooses which files:
    fp32 graphs, or the already quantized segments so each segment sees what the deployed chain feeds it).
    Segments k and heads at exit k see the features of segments 0..k-1 (resp. 0..k); the final graph the last
    segment's; image graphs the image. Returns None for graphs with nothing to calibrate (upsample).
    """
    role = graph["role"]
    if role == "upsample":
        return None
    segments = sorted((g for g in manifest["graphs"] if g["role"] == "segment"), key=lambda g: g["index"])
    if role == "segment":
        prefix = segments[:graph["index"]]
    elif role == "head":
        prefix = segments[:graph["exit"] + 1]
    elif role == "final":
        prefix = segments
    else:
        prefix = []
    names = [i["name"] for i in graph["inputs"]]
    return _Feeds(calib, [s["name"] for s in prefix], names, run)


class _Feeds(object):
    """Re-iterable: each pass reads, preprocesses and pushes every image through the prefix again."""

    def __init__(self, calib, prefix, input_names, run):
        self.calib, self.prefix, self.input_names, self.run = calib, prefix, input_names, run

    def __len__(self):
        return len(self.calib)

    def __iter__(self):
        th = np.array([TH_PIX_CALIB], np.float32)
        for x in self.calib:
            for k, name in enumerate(self.prefix):
                x = self.run(name, {"image" if k == 0 else "feat_in": x})["feat"]
            feed = {}
            for n in self.input_names:
                feed[n] = th if n == "th_pix" else x
            yield feed


def ort_graph_runner(path_of):
    """run(name, feed) -> {output: array} with one onnxruntime CPU session per graph file ``path_of(name)``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MessError("got a calibration step but onnxruntime is not installed; expected it to compute the "
                        "features every graph is calibrated on; try `pip install onnxruntime`")
    sessions = {}

    def run(name, feed):
        if name not in sessions:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sessions[name] = ort.InferenceSession(path_of(name), so, providers=["CPUExecutionProvider"])
        s = sessions[name]
        return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))
    return run
