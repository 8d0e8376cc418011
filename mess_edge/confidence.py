"""Image-level confidence of one exit's prediction: the input-dependent exit policy (paper sec. 5.2, eqs. 7-9).

Device side: numpy (+ OpenCV for the Canny reference only), no torch, Python 3.8.

The definition, settled here (everything at the exit's NATIVE output resolution h x w, i.e. before upsampling;
one native pixel covers os x os full-resolution pixels, os = the exit's output stride):

1. Pixel confidence ``c`` (eq. 7's c^map): the top-1 softmax probability, or 1 - entropy / log(C).
2. Semantic-edge mask ``M`` (eq. 8). The paper erodes a Canny edge map "with kernel equal to the output stride";
   eroding a one-pixel edge map would delete it, so the meaning taken is a band of width ~os full-resolution
   pixels around every semantic edge (dilate the edges = erode the non-edge region). Reference: render the label
   map at full resolution (nearest, x os), Canny on it (any label change is an edge), dilate with a square of
   side os + 1 (radius os // 2), and mark a native pixel when any full-resolution pixel of its footprint is in
   the band. For os >= 4 this equals, exactly, the morphological rule the fast path and the ONNX graph use:
       M[r, c] = 1  iff  the in-image 3x3 neighbourhood of (r, c) holds a label other than labels[r, c]
   i.e. the pixels on both sides of every class boundary, one native pixel deep (tests check equality on blobby
   and on i.i.d. noise label maps for os in {2, 4, 8, 16}). An os below 4 is rendered at 4x: at 2x Canny's
   non-maximum suppression leaves gaps at corners that a one-pixel band cannot close.
3. Median enhancement (eq. 9): the window of +-2 os full-resolution pixels is +-2 native pixels, a 5x5 window
   (``radius=2``). A pixel on M takes the median of the raw confidences of the IN-IMAGE pixels of its window
   (no padding values); for an even count (at borders: 12, 16 or 20 pixels) the LOWER of the two middle values.
   Off M the confidence is unchanged.
4. Image confidence (eq. 7): the fraction of the h*w pixels whose (enhanced) confidence is >= th_pix.

Why the graph can count without a median: for the window values v_1..v_n and the lower median m,
``m >= t  <=>  #{v_i >= t} > n / 2``. So the head's ONNX graph thresholds first and then takes a 5x5 average
pool (count_include_pad=0) of the pass/fail map: an exact rewrite, not an approximation, and far cheaper than
TopK over 25 shifted copies. ``image_confidence_fast`` mirrors that graph; ``confidence_map_fast`` computes
the enhanced map itself (calibration bins it into the memo's histograms).

Agreement, as tested: edge masks reference == fast exactly; image confidence reference == fast == ONNX graph
exactly unless th_pix lies within float rounding (~1e-6) of some pixel's confidence (float64 reference vs
float32 mirror vs onnxruntime's exp). Then that pixel may fall on the other side, and with it the edge pixels
whose window vote (or median) it decides: at most 1 + (2r+1)^2 pixels, seen only with a th_pix copied from
a confidence value. Thresholds from the memo's bin edges are such values only by accident.
"""

import numpy as np

from mess_edge.errors import MessError

# The pixel threshold fed to heads wherever no searched one applies: export's parity check, profiling, bench,
# INT8 calibration, and instances without a threshold (their confidence then goes unused). Timings do not
# depend on it: every graph computes the same whatever the threshold.
DEFAULT_TH_PIX = 0.5

HIST_BINS = 100  # memo.npz: B uniform bins on [0, 1]
MEDIAN_RADIUS = 2  # eq. 9: +-2 native pixels = +-2 os full-resolution pixels
KINDS = ("top1", "entropy")


def _check_kind(kind):
    if kind not in KINDS:
        raise MessError("got confidence kind {!r}; expected one of {}; try kind='top1'".format(kind, KINDS))


def _check_logits(logits, ndims=(3,)):
    logits = np.asarray(logits)
    if logits.ndim not in ndims or logits.shape[-3] < 2:
        raise MessError("got logits of shape {}; expected {} with C >= 2 classes; try logits[0] for a batch "
                        "of one".format(logits.shape, " or ".join({3: "[C, h, w]", 4: "[N, C, h, w]"}[n]
                                                                  for n in ndims)))
    return logits


# ------------------------------------------------------------------------------------------------ reference


def pixel_confidence(logits, kind="top1"):
    """Per-pixel confidence, the plain definition (float64 softmax).

    logits: float [C, h, w]. kind: "top1" (max softmax probability) or "entropy" (1 - H(p) / log C).
    Returns float64 [h, w] in [0, 1].
    """
    _check_kind(kind)
    z = _check_logits(logits).astype(np.float64)
    p = np.exp(z - z.max(axis=0))
    p /= p.sum(axis=0)
    if kind == "top1":
        return p.max(axis=0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return 1.0 + plogp.sum(axis=0) / np.log(z.shape[0])


def edge_mask_reference(labels, stride=8):
    """Semantic-edge mask of eq. 8 via Canny at full resolution (see the module docstring, item 2).

    labels: int [h, w] native-resolution label map. stride: the exit's output stride os.
    Returns bool [h, w]: True where a native pixel touches the band of width os around a Canny edge.
    """
    import cv2

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MessError("got labels of shape {}; expected [h, w]".format(labels.shape))
    if int(stride) < 1:
        raise MessError("got stride={}; expected an output stride >= 1".format(stride))
    # Canny needs 8 bits; relabel to ranks (only equality of labels matters).
    values, ranks = np.unique(labels, return_inverse=True)
    if len(values) > 256:
        raise MessError("got {} distinct labels; expected <= 256 for the 8-bit Canny reference".format(len(values)))
    image = ranks.reshape(labels.shape).astype(np.uint8)
    s = max(int(stride), 4)
    full = np.repeat(np.repeat(image, s, axis=0), s, axis=1)
    # L1 Sobel magnitude of a step of one label is 4 > 1: every label change is a candidate edge, and with equal
    # thresholds there is no hysteresis to drop any.
    edges = cv2.Canny(full, 1, 1) > 0
    radius = s // 2
    band = cv2.dilate(edges.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    h, w = labels.shape
    return band.reshape(h, s, w, s).any(axis=(1, 3))


def enhance_reference(conf, mask, radius=MEDIAN_RADIUS):
    """Eq. 9, pixel by pixel: pixels on ``mask`` take the lower median of their in-image window.

    conf: float [h, w]; mask: bool [h, w]; radius: window half-size in native pixels (5x5 for 2).
    Returns a float64 copy of conf with the mask pixels replaced.
    """
    conf = np.asarray(conf, dtype=np.float64)
    out = conf.copy()
    for r, c in zip(*np.nonzero(mask)):
        window = np.sort(conf[max(0, r - radius):r + radius + 1, max(0, c - radius):c + radius + 1].ravel())
        out[r, c] = window[(len(window) - 1) // 2]
    return out


def image_confidence_reference(logits, th_pix, edge=True, kind="top1", stride=8, radius=MEDIAN_RADIUS):
    """Eq. 7 (with eqs. 8-9 when ``edge``): fraction of pixels whose confidence is >= th_pix.

    logits: float [C, h, w] at the exit's native resolution. Returns a float in [0, 1].
    """
    conf = pixel_confidence(logits, kind)
    if edge:
        labels = np.asarray(logits).argmax(axis=0)
        conf = enhance_reference(conf, edge_mask_reference(labels, stride), radius)
    return float(np.mean(conf >= th_pix))


# ------------------------------------------------------------------------------------------------ fast mirror
# These work on [..., h, w] arrays in float32, the same arithmetic as mess_edge.model.gate.ConfidenceGate.


def _pixel_confidence_f32(logits, kind):
    """float32 [..., h, w], the graph's formula (mess_edge.model.gate.pixel_confidence_graph): no softmax."""
    z = np.asarray(logits, dtype=np.float32)
    n = z.shape[-3]
    shifted = z - z.max(axis=-3, keepdims=True)
    e = np.exp(shifted)
    mean_e = e.mean(axis=-3)
    if kind == "top1":
        return np.float32(1.0 / n) / mean_e
    ratio = (e * shifted).mean(axis=-3) / mean_e
    return (ratio - np.log(mean_e)) * np.float32(1.0 / np.log(n))


def _pad_hw(x, radius, mode, **kwargs):
    width = [(0, 0)] * (x.ndim - 2) + [(radius, radius), (radius, radius)]
    return np.pad(x, width, mode=mode, **kwargs)


def _shifts(padded, radius, h, w):
    """The (2r+1)^2 shifted [..., h, w] views of an [..., h+2r, w+2r] array."""
    k = 2 * radius + 1
    return [padded[..., i:i + h, j:j + w] for i in range(k) for j in range(k)]


def edge_mask_fast(labels):
    """Morphological semantic-edge mask: True where the in-image 3x3 neighbourhood holds another label.

    labels: int [..., h, w]. Returns bool [..., h, w]. Equals ``edge_mask_reference`` (tested).
    """
    labels = np.asarray(labels)
    h, w = labels.shape[-2:]
    # Replicating the border adds no new label, so it is the same as looking at in-image pixels only.
    windows = _shifts(_pad_hw(labels, 1, "edge"), 1, h, w)
    return np.maximum.reduce(windows) != np.minimum.reduce(windows)


def _in_image_counts(h, w, radius):
    """int [h, w]: how many pixels of each pixel's (2r+1)^2 window lie inside the image."""
    rows = np.minimum(np.arange(h), radius) + np.minimum(np.arange(h)[::-1], radius) + 1
    cols = np.minimum(np.arange(w), radius) + np.minimum(np.arange(w)[::-1], radius) + 1
    return np.outer(rows, cols)


def _window_sum(x, radius):
    """Sum of int x [..., h, w] over each pixel's in-image (2r+1)^2 window, via an integral image."""
    h, w = x.shape[-2:]
    k = 2 * radius + 1
    padded = _pad_hw(x.astype(np.int32), radius, "constant")
    width = [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)]
    s = np.pad(padded.cumsum(axis=-2).cumsum(axis=-1), width, mode="constant")
    return s[..., k:k + h, k:k + w] - s[..., :h, k:k + w] - s[..., k:k + h, :w] + s[..., :h, :w]


def image_confidence_fast(logits, th_pix, edge=True, kind="top1", radius=MEDIAN_RADIUS):
    """Eq. 7 (+ 8-9) exactly as the head's ONNX graph computes it: threshold, then vote on edge pixels.

    logits: float32 [C, h, w] -> float, or [N, C, h, w] -> float64 [N]. th_pix: the pixel threshold.
    """
    _check_kind(kind)
    logits = _check_logits(logits, ndims=(3, 4))
    conf = _pixel_confidence_f32(logits, kind)
    passed = conf >= np.float32(th_pix)
    if edge:
        mask = edge_mask_fast(logits.argmax(axis=-3))
        h, w = passed.shape[-2:]
        # lower median >= th  <=>  more than half of the in-image window passes (module docstring).
        majority = 2 * _window_sum(passed, radius) > _in_image_counts(h, w, radius)
        passed = np.where(mask, majority, passed)
    frac = passed.mean(axis=(-2, -1))
    return float(frac) if logits.ndim == 3 else frac.astype(np.float64)


def confidence_map_fast(logits, kind="top1", radius=MEDIAN_RADIUS):
    """Raw and edge-enhanced confidence maps of one image, vectorised.

    logits: float32 [C, h, w]. Returns (raw float32 [h, w], enhanced float32 [h, w]).
    ``mean(enhanced >= t)`` equals ``image_confidence_fast(logits, t)`` for every t.
    """
    _check_kind(kind)
    logits = _check_logits(logits)
    raw = _pixel_confidence_f32(logits, kind)
    mask = edge_mask_fast(logits.argmax(axis=0))
    h, w = raw.shape
    # Out-of-image slots hold +inf so they sort last; the lower median of the n in-image values is then at
    # index (n - 1) // 2 of the sorted window.
    windows = _shifts(_pad_hw(raw, radius, "constant", constant_values=np.inf), radius, h, w)
    stacked = np.stack([win[mask] for win in windows], axis=-1)
    stacked.sort(axis=-1)
    kth = (_in_image_counts(h, w, radius)[mask] - 1) // 2
    enhanced = raw.copy()
    enhanced[mask] = np.take_along_axis(stacked, kth[:, None], axis=-1)[:, 0]
    return raw, enhanced


def hist_bin_edges(bins=HIST_BINS):
    """float64 [bins + 1]: the memo's uniform bin edges on [0, 1]."""
    return np.linspace(0.0, 1.0, int(bins) + 1)


def _histogram(values, edges32, bins):
    # Bin in float32, the precision the graph compares in: value v lands in bin j with edges32[j] <= v, so
    # hist[j:].sum() == #{v >= float32(edge j)} exactly; 1.0 (and anything above) goes to the last bin.
    idx = np.clip(np.searchsorted(edges32, values.ravel(), side="right") - 1, 0, bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int32)


def confidence_histograms(logits, bins=HIST_BINS, kind="top1", radius=MEDIAN_RADIUS):
    """Per-image confidence statistics in the memo.npz format (docs/artifacts.md).

    logits: float32 [N, C, h, w] (or [C, h, w] for one image) at the exit's native resolution.
    Returns (hist_edge int32 [N, bins], hist_raw int32 [N, bins], mean_conf float32 [N]) without the N axis
    for a single image. Bins are ``hist_bin_edges(bins)``; n_pixels = h * w. For a threshold t that is a bin
    edge j, ``hist[..., j:].sum(-1) / (h * w) == image_confidence_fast(logits, t, edge)`` (exactly, when t is
    passed to the graph as float32).
    """
    logits = _check_logits(logits, ndims=(3, 4))
    single = logits.ndim == 3
    batch = logits[None] if single else logits
    edges32 = hist_bin_edges(bins).astype(np.float32)
    hist_edge = np.zeros((len(batch), bins), np.int32)
    hist_raw = np.zeros((len(batch), bins), np.int32)
    mean_conf = np.zeros(len(batch), np.float32)
    for i, image in enumerate(batch):
        raw, enhanced = confidence_map_fast(image, kind, radius)
        hist_raw[i] = _histogram(raw, edges32, bins)
        hist_edge[i] = _histogram(enhanced, edges32, bins)
        mean_conf[i] = raw.mean(dtype=np.float64)
    if single:
        return hist_edge[0], hist_raw[0], mean_conf[0]
    return hist_edge, hist_raw, mean_conf
