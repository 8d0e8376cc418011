"""The overlay of ``mess-edge run``: the label map's colours and status lines blended into the frame.

cv2 is imported inside the functions that need it.
"""

import math

import numpy as np


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
