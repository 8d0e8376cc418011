"""The overlay of ``mess-edge run``: the label map's colours blended into the frame, a status panel and a legend.

The label map is the network's size (say 128x128) and the frame the camera's (say 1920x1080), so the work is
arranged to touch the frame's pixels as few times as possible: the colour lookup runs at the label map's height
(its columns gathered to the output's width), whole rows of colours (and of the mask of uncoloured pixels) are
copied to the output's height, and one blend and one masked copy write the output. Each output pixel takes the
label of the input pixel its centre falls on (``labels_to_frame_reference``), through the fit the frame went in
with (preprocess.fit_geometry): the letterbox bars are never drawn, the frame outside a crop is left uncoloured.
``overlay_reference`` is the plain numpy version the tests hold ``Overlay`` to. cv2 is imported inside the
functions that need it.
"""

import math

import numpy as np

from mess_edge.run.preprocess import NO_LABEL, centre_index, fit_geometry, labels_to_frame_reference

FONT_SCALE_MIN = 0.4  # HERSHEY_SIMPLEX at 0.4 is ~9 px tall: the smallest that stays legible


def bgr_palette():
    """uint8 [256, 3]: the VOC colour map in OpenCV's BGR order."""
    from mess_edge.data.digitscenes import voc_palette

    return np.asarray(voc_palette(), np.uint8).reshape(256, 3)[:, ::-1].copy()


def output_hw(frame_hw, min_width=320, width=None):
    """The overlay's size (h, w) for a frame of ``frame_hw``: ``width`` px wide when given (a window's size, the
    frame's aspect kept), else the frame's own size, enlarged by an integer factor while narrower than
    ``min_width`` px (so the text stays readable)."""
    h, w = (int(v) for v in frame_hw)
    if width:
        return max(1, int(round(h * float(width) / w))), int(width)
    k = max(1, int(math.ceil(min_width / float(w))))
    return h * k, w * k


def output_rect(geometry, out_hw):
    """(y, x, h, w): where the part of the frame the network saw (geometry.source) lies in the output."""
    (fh, fw), (oh, ow) = geometry.frame_hw, out_hw
    sy, sx, sh, sw = geometry.source
    y0, x0 = int(round(sy * oh / float(fh))), int(round(sx * ow / float(fw)))
    y1, x1 = int(round((sy + sh) * oh / float(fh))), int(round((sx + sw) * ow / float(fw)))
    return y0, x0, max(1, y1 - y0), max(1, x1 - x0)


def resize_frame(frame, out_hw, dst=None):
    """The frame at the output's size: nearest for integer enlargement (crisp pixels), linear otherwise."""
    import cv2

    (h, w), (oh, ow) = frame.shape[:2], out_hw
    if (h, w) == (oh, ow):
        return frame
    inter = cv2.INTER_NEAREST if oh % h == 0 and ow % w == 0 and oh // h == ow // w else cv2.INTER_LINEAR
    return cv2.resize(frame, (ow, oh), dst=dst, interpolation=inter)


def overlay_reference(frame, labels, fit="stretch", alpha=0.5, min_width=320, width=None):
    """The plain overlay, without text: BGR uint8 [oh, ow, 3] (output_hw). Labels mapped onto the output by
    pixel centres; colour = round((1 - alpha) * frame + alpha * palette[label]) except where the label is 0
    (background) or NO_LABEL, which keep the frame."""
    g = fit_geometry(frame.shape[:2], labels.shape, fit)
    oh, ow = output_hw(frame.shape[:2], min_width, width)
    base = resize_frame(frame, (oh, ow)).astype(np.float64)
    lab = labels_to_frame_reference(labels, g._replace(frame_hw=(oh, ow), source=output_rect(g, (oh, ow))))
    blend = np.round((1 - alpha) * base + alpha * bgr_palette()[lab].astype(np.float64))
    keep = ((lab == 0) | (lab == NO_LABEL))[:, :, None]
    return np.where(keep, base, blend).astype(np.uint8)


class Overlay(object):
    """The frame with the class colours blended in (alpha 0.5; background and unseen pixels left as they are),
    a status panel (text lines, top left) and a legend of the class colours (bottom left; ``classes``: names
    by class id, as in the manifest, class 0 being the uncoloured background).

    ``fit``: how frames went into the network (preprocess.FITS); ``width``: draw at this width (a window's)
    instead of the frame's; ``min_width``: see output_hw. Buffers are allocated once per frame size: nothing
    is allocated per frame but the text. The returned image is overwritten by the next call."""

    def __init__(self, alpha=0.5, min_width=320, width=None, fit="stretch", classes=None):
        self.alpha, self.min_width, self.width, self.fit = float(alpha), int(min_width), width, fit
        self.classes = list(classes or [])
        self.palette = bgr_palette()
        self.uncoloured = np.zeros(256, np.uint8)  # label -> 255 where the frame is kept as it is
        self.uncoloured[[0, NO_LABEL]] = 255
        self._key = None

    def _buffers(self, frame_hw, labels_hw):
        key = (frame_hw, labels_hw)
        if self._key == key:
            return
        self._key = key
        self.geometry = g = fit_geometry(frame_hw, labels_hw, self.fit)
        self.out_hw = oh, ow = output_hw(frame_hw, self.min_width, self.width)
        self.rect = output_rect(g, self.out_hw)
        _, _, ch, cw = g.content
        _, _, rh, rw = self.rect
        self.small = np.empty((ch, cw), np.uint8)          # the label map's content, as uint8
        # Output pixel -> label map pixel by pixel centres (labels_to_frame_reference). Nearest-neighbour
        # scaling is separable and its rows repeat, so the columns are gathered at the map's height first
        # (small), the colour looked up there, and whole rows copied to the output's height: 2.1 vs 11 ms for
        # cv2.remap at 1920x1080 (whose INTER_NEAREST_EXACT resize rounds in fixed point, ~0.3 % of pixels off).
        self.rows, self.cols = centre_index(rh, ch), centre_index(rw, cw)
        # Enlarging, each map row fills a run of output rows: one broadcast copy per run (72 at 1280x720 from a
        # 128x128 letterbox) is 0.13 ms against 0.49 for np.take of the 720 rows (benchmarks/camera_resolution.py);
        # shrinking, the runs are single rows and np.take is the cheaper loop.
        starts = np.flatnonzero(np.diff(self.rows, prepend=-1))
        self.runs = (list(zip(self.rows[starts].tolist(), starts.tolist(), np.append(starts[1:], rh).tolist()))
                     if 2 * len(starts) <= rh else None)
        self.wide = np.empty((ch, rw), np.uint8)           # the labels at the output's width
        self.wide_colour = np.empty((ch, rw, 3), np.uint8)
        self.wide_keep = np.empty((ch, rw), np.uint8)
        self.colour = np.empty((rh, rw, 3), np.uint8)      # ... at the output's size
        self.keep = np.empty((rh, rw), np.uint8)
        self.scaled = np.empty((oh, ow, 3), np.uint8)      # the frame at the output's size, when it differs
        self.out = np.empty((oh, ow, 3), np.uint8)
        self.whole = self.rect == (0, 0, oh, ow)           # else (crop): blend into a buffer of the rect's size
        self.part = None if self.whole else np.empty((rh, rw, 3), np.uint8)
        self.text = TextStyle(self.out_hw)
        self.legend = self.text.legend(self.classes, self.palette, oh) if len(self.classes) > 1 else None

    def __call__(self, frame, labels, lines=()):
        """``frame`` BGR uint8 [h, w, 3]; ``labels`` integer [H, W] class ids (< 255) of the network's input;
        ``lines`` text lines. Returns BGR uint8 [oh, ow, 3] (output_hw)."""
        import cv2

        self._buffers(frame.shape[:2], tuple(labels.shape))
        y, x, ch, cw = self.geometry.content
        np.copyto(self.small, labels[y:y + ch, x:x + cw], casting="unsafe")
        np.take(self.small, self.cols, axis=1, out=self.wide)
        np.take(self.palette, self.wide, axis=0, out=self.wide_colour)  # the colour lookup, at the map's height
        np.take(self.uncoloured, self.wide, out=self.wide_keep)
        if self.runs is None:  # row copies
            np.take(self.wide_colour, self.rows, axis=0, out=self.colour)
            np.take(self.wide_keep, self.rows, axis=0, out=self.keep)
        else:
            for src, a, b in self.runs:
                self.colour[a:b] = self.wide_colour[src]
                self.keep[a:b] = self.wide_keep[src]
        _, _, rh, rw = self.rect
        base = resize_frame(frame, self.out_hw, dst=self.scaled)
        if self.whole:
            cv2.addWeighted(base, 1.0 - self.alpha, self.colour, self.alpha, 0.0, dst=self.out)
            cv2.copyTo(base, self.keep, self.out)  # background keeps the scene visible
        else:  # a crop: the frame outside it stays as it is
            ry, rx = self.rect[:2]
            np.copyto(self.out, base)
            seen = np.ascontiguousarray(base[ry:ry + rh, rx:rx + rw])
            cv2.addWeighted(seen, 1.0 - self.alpha, self.colour, self.alpha, 0.0, dst=self.part)
            cv2.copyTo(seen, self.keep, self.part)
            self.out[ry:ry + rh, rx:rx + rw] = self.part
        if lines:
            self.text.panel(self.out, lines)
        if self.legend is not None:
            lh, lw = (min(a, b) for a, b in zip(self.legend.shape[:2], self.out_hw))
            self.out[self.out_hw[0] - lh:, :lw] = self.legend[:lh, :lw]
        return self.out


class TextStyle(object):
    """Text sized to the output: HERSHEY_SIMPLEX scaled with the output (~2.5 % of its height, at least
    FONT_SCALE_MIN), white on a darkened panel. One colour at one thickness per glyph: no outline drawn at
    another thickness, which is what ghosted (stray ``00`` and doubled lines) on bright frames."""

    def __init__(self, out_hw):
        import cv2

        oh, ow = out_hw
        self.font = cv2.FONT_HERSHEY_SIMPLEX
        self.scale = max(FONT_SCALE_MIN, 0.8 * min(oh / 720.0, ow / 960.0))
        self.thickness = max(1, int(round(self.scale * 1.6)))
        (_, th), base = cv2.getTextSize("Ag", self.font, self.scale, self.thickness)
        self.pad = max(2, int(round(th * 0.35)))
        self.ascent, self.step = th, th + base + self.pad

    def width(self, line):
        import cv2

        return cv2.getTextSize(line, self.font, self.scale, self.thickness)[0][0]

    def put(self, image, line, x, y_top, colour=(255, 255, 255)):
        import cv2

        cv2.putText(image, line, (x, y_top + self.ascent), self.font, self.scale, colour, self.thickness,
                    cv2.LINE_AA)

    def panel(self, image, lines):
        """The lines top left, on the scene darkened to a quarter (integer shift, in place)."""
        oh, ow = image.shape[:2]
        w = min(ow, max(self.width(s) for s in lines) + 2 * self.pad)
        h = min(oh, self.step * len(lines) + self.pad)
        region = image[:h, :w]
        np.right_shift(region, 2, out=region)
        for i, line in enumerate(lines):
            self.put(image, line, self.pad, self.pad + i * self.step)

    def legend(self, classes, palette, max_h):
        """The legend, rendered once: BGR uint8 [h, w, 3], a swatch of each class colour (ids 1..) and its
        name on dark grey, in as many columns as the output's height needs."""
        import cv2

        entries = [(i, str(name)) for i, name in enumerate(classes) if i > 0]
        rows = max(1, min(len(entries), (max_h // 2 - self.pad) // self.step))  # at most half the height
        cols = int(math.ceil(len(entries) / float(rows)))
        sw = self.ascent
        col_w = sw + 2 * self.pad + max(self.width(n) for _, n in entries) + self.pad
        out = np.full((rows * self.step + self.pad, cols * col_w + self.pad, 3), 40, np.uint8)
        for k, (i, name) in enumerate(entries):
            x, y = self.pad + (k // rows) * col_w, self.pad + (k % rows) * self.step
            colour = tuple(int(c) for c in palette[i])
            cv2.rectangle(out, (x, y), (x + sw - 1, y + self.ascent - 1), colour, -1)
            self.put(out, name, x + sw + self.pad, y)
        return out
