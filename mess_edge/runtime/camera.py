"""Frames through and out for ``mess-edge run``: preprocessing, overlay, sinks.

``Preprocessor`` turns a BGR frame into the network's input in buffers allocated once (``preprocess_reference``
is the plain version the tests hold it to); ``Overlay`` blends the label map's colours and the status lines
into the frame; ``FrameSink`` writes a video or a folder of PNG frames. Frames come in through capture.py.
cv2 is imported inside the functions that need it.
"""

import math
import os

import numpy as np

from mess_edge.errors import MessError

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")


class Preprocessor(object):
    """BGR uint8 [h, w, 3] -> float32 [1, 3, H, W] (resize, BGR->RGB, (x / scale - mean) / std), into buffers
    allocated once: the returned array is ``out`` when given (a buffer of ``new_buffer()``), else one of its
    own that the next call overwrites. One instance serves one thread (its scratch buffers are shared)."""

    def __init__(self, input_hw, normalization):
        import cv2

        self.hw = tuple(int(v) for v in input_hw)
        h, w = self.hw
        scale = float(normalization.get("scale", 255.0))
        mean = np.asarray(normalization["mean"], np.float32)
        std = np.asarray(normalization["std"], np.float32)
        a, b = (1.0 / (scale * std)).astype(np.float32), (mean / std).astype(np.float32)
        # The input is uint8: (x / scale - mean) / std == x * a - b has 256 values per channel, so a table
        # lookup per channel (cv2.LUT, float32 out) replaces the colour swap, the multiply, the subtract and the
        # HWC -> CHW transpose: output plane c is the lookup of frame channel src[c] (2 - c for RGB), written in
        # place. 2x faster than one 3-channel LUT and a transposing copy (41 -> 28 us at 128x128, 190 -> 99 us
        # at 256x256).
        self.rgb = str(normalization.get("order", "RGB")).upper() == "RGB"
        values = np.arange(256, dtype=np.float32)
        self.src = (2, 1, 0) if self.rgb else (0, 1, 2)
        self.tables = [np.ascontiguousarray(values * a[c] - b[c]) for c in range(3)]  # indexed by output plane
        self.resized = np.empty((h, w, 3), np.uint8)
        self.channel = np.empty((h, w), np.uint8)
        self.out = self.new_buffer()
        # cv2 writes into a numpy dst only when it matches exactly; a silent copy would leave ``out`` stale
        probe = cv2.LUT(self.channel, self.tables[0], dst=self.out[0, 0])
        assert probe.__array_interface__["data"][0] == self.out[0, 0].__array_interface__["data"][0]

    def new_buffer(self):
        """A buffer ``__call__`` can fill: float32 [1, 3, H, W]."""
        return np.empty((1, 3) + self.hw, np.float32)

    def __call__(self, frame, out=None):
        import cv2

        h, w = self.hw
        out = self.out if out is None else out
        src = frame
        if frame.shape[:2] != (h, w):
            src = cv2.resize(frame, (w, h), dst=self.resized, interpolation=cv2.INTER_LINEAR)
        for c in range(3):
            cv2.extractChannel(src, self.src[c], dst=self.channel)
            cv2.LUT(self.channel, self.tables[c], dst=out[0, c])
        return out


def preprocess_reference(frame, input_hw, normalization):
    """The plain preprocessing Preprocessor must match: resize, to RGB, mess_edge.data.voc.normalize."""
    import cv2

    from mess_edge.data.voc import normalize

    h, w = input_hw
    x = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR) if frame.shape[:2] != (h, w) else frame
    if str(normalization.get("order", "RGB")).upper() == "RGB":
        x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
    scale = float(normalization.get("scale", 255.0))
    if scale == 255.0:
        return normalize(x, normalization["mean"], normalization["std"])[None]
    y = (x / scale - np.asarray(normalization["mean"])) / np.asarray(normalization["std"])
    return np.ascontiguousarray(y.transpose(2, 0, 1)[None], dtype=np.float32)


def bgr_palette():
    """uint8 [256, 3]: the VOC colour map in OpenCV's BGR order."""
    from mess_edge.data.digitscenes import voc_palette

    return np.asarray(voc_palette(), np.uint8).reshape(256, 3)[:, ::-1].copy()


class Overlay(object):
    """The frame with the class colours blended in (alpha 0.5, background left as is) and text lines.

    The blend runs at the frame's own resolution (label map resized to it, nearest; colours from a cv2.LUT
    table); frames narrower than ``min_width`` px are then enlarged by an integer factor (nearest) so the text
    stays readable. Buffers are allocated once per frame size: nothing is allocated per frame. The returned
    image is overwritten by the next call."""

    def __init__(self, alpha=0.5, min_width=320):
        self.alpha, self.min_width = float(alpha), int(min_width)
        self.table = np.ascontiguousarray(bgr_palette().reshape(256, 1, 3))  # label -> BGR, per channel
        self._size = None

    def _buffers(self, frame_hw, labels_hw):
        if self._size == (frame_hw, labels_hw):
            return
        (h, w), k = frame_hw, max(1, int(math.ceil(self.min_width / float(frame_hw[1]))))
        self._size, self.k = (frame_hw, labels_hw), k
        self.small = np.empty(labels_hw, np.uint8)        # the label map as uint8
        self.labels = np.empty((h, w), np.uint8)          # ... at the frame's size
        self.labels3 = np.empty((h, w, 3), np.uint8)      # ... in three channels, for the LUT
        self.colour = np.empty((h, w, 3), np.uint8)
        self.background = np.empty((h, w), np.uint8)      # 255 where the label is 0
        self.blend = np.empty((h, w, 3), np.uint8)
        self.out = np.empty((h * k, w * k, 3), np.uint8) if k > 1 else self.blend

    def __call__(self, frame, labels, lines=()):
        """``frame`` BGR uint8 [h, w, 3]; ``labels`` integer [H, W] class ids (< 256); ``lines`` text lines.
        Returns BGR uint8 [h * k, w * k, 3]."""
        import cv2

        h, w = frame.shape[:2]
        self._buffers((h, w), tuple(labels.shape))
        np.copyto(self.small, labels, casting="unsafe")
        lab = self.small
        if lab.shape != (h, w):
            lab = cv2.resize(lab, (w, h), dst=self.labels, interpolation=cv2.INTER_NEAREST)
        cv2.merge([lab, lab, lab], dst=self.labels3)
        cv2.LUT(self.labels3, self.table, dst=self.colour)
        cv2.addWeighted(frame, 1.0 - self.alpha, self.colour, self.alpha, 0.0, dst=self.blend)
        cv2.compare(lab, 0, cv2.CMP_EQ, dst=self.background)
        cv2.copyTo(frame, self.background, self.blend)  # background keeps the scene visible
        out = self.blend
        if self.k > 1:
            out = cv2.resize(self.blend, (w * self.k, h * self.k), dst=self.out, interpolation=cv2.INTER_NEAREST)
        scale = max(0.35, out.shape[1] / 900.0)
        step = int(22 * scale / 0.6)
        for i, line in enumerate(lines):
            y = step * (i + 1)
            cv2.putText(out, line, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, line, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return out


class FrameSink(object):
    """Writes overlaid frames: an .mp4/.avi/.mkv/.mov path (cv2.VideoWriter, 'mp4v'; MJPG for .avi) or a
    folder of PNG frames (000000.png, ...). The video is written beside its path and moved there by
    ``close()``, which the run calls in ``finally``: an interrupted run still leaves a playable file."""

    def __init__(self, path, fps=30.0):
        self.path, self.fps, self.written, self.writer, self.size = path, float(fps or 30.0), 0, None, None
        self.video = os.path.splitext(path)[1].lower() in VIDEO_EXTS
        if self.video:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            stem, ext = os.path.splitext(os.path.basename(path))
            self.tmp = os.path.join(folder, ".{}.partial{}".format(stem, ext))
        else:
            os.makedirs(path, exist_ok=True)

    def write(self, image):
        import cv2

        if self.video:
            if self.writer is None:
                self.size = (image.shape[1], image.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.lower().endswith(".avi") else "mp4v"))
                self.writer = cv2.VideoWriter(self.tmp, fourcc, self.fps, self.size)
                if not self.writer.isOpened():
                    raise MessError("cannot open a video writer for {}; expected OpenCV with mp4v; try --output "
                                    "a folder (PNG frames) or a .avi path".format(self.path))
            if (image.shape[1], image.shape[0]) != self.size:  # sources whose frame size changes mid-run
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
            self.writer.write(image)
        elif not cv2.imwrite(os.path.join(self.path, "{:06d}.png".format(self.written)), image):
            raise MessError("cannot write PNG frames to {}; expected a writable folder".format(self.path))
        self.written += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.tmp, self.path)
