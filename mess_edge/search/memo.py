"""The prediction memo (memo.npz) and the accuracy arithmetic the search does on it (device side: numpy only).

The memo holds, per candidate exit and calibration image, the confusion matrix against the ground truth and
the confidence histograms the exit policy needs (paper sec. 5.1, "prediction memoisation"). The search never
needs a full C x C matrix per configuration: mIoU only reads, per class, the diagonal, the row sum (ground truth
pixels) and the column sum (predicted pixels), and all three are linear in the images summed. So every
(head, image) is reduced once to 3C numbers, ``stats``, and configurations are scored by summing those.
"""

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mess_edge.errors import MessError

MEMO_FORMAT = "mess-edge-memo/1"
POLICIES = ("edge", "raw", "mean")  # image confidence from hist_edge, hist_raw, or mean_conf (the ablations)
ARCH_KEYS = ("crm", "blocks", "rdi", "head")
_ARRAYS = ("confusion", "hist_edge", "hist_raw", "hist_bins", "mean_conf", "n_pixels", "head_exit", "head_arch")
# Optional arrays of the Deep Layer Cascade baseline (mess_edge.search.lc); memos without them still load.
LC_ARRAYS = ("lc_cover_hist", "lc_stats", "lc_th")


def arch_dict(row):
    """(crm, blocks, rdi, head) -> {"crm": .., "blocks": .., "rdi": .., "head": ..} with Python ints."""
    return {k: int(v) for k, v in zip(ARCH_KEYS, row)}


def arch_tag(arch):
    """Arch dict or 4-sequence -> "c1b2r0h0", the suffix of the head graph name."""
    if isinstance(arch, dict):
        arch = [arch[k] for k in ARCH_KEYS]
    return "c{}b{}r{}h{}".format(*[int(v) for v in arch])


def head_graph_name(exit_index, arch):
    """The manifest's name for a head graph: "head_e{exit}_c{crm}b{blocks}r{rdi}h{head}"."""
    return "head_e{}_{}".format(int(exit_index), arch_tag(arch))


@dataclass(frozen=True, eq=False)
class Memo:
    """Memoised predictions of H early-exit heads plus the final exit (index H) on I images, C classes, B bins."""

    confusion: np.ndarray  # int64 [H+1, I, C, C], rows = ground truth, cols = prediction
    hist_edge: np.ndarray  # int32 [H+1, I, B], pixel top-1 confidence after edge enhancement
    hist_raw: np.ndarray  # int32 [H+1, I, B], same without edge enhancement
    hist_bins: np.ndarray  # float64 [B+1], uniform bin edges on [0, 1]
    mean_conf: np.ndarray  # float32 [H+1, I], mean pixel confidence (the averaging baseline)
    n_pixels: np.ndarray  # int64 [H+1, I], pixels the histograms count
    head_exit: np.ndarray  # int64 [H], exit point of each head
    head_arch: np.ndarray  # int64 [H, 4], (crm, blocks, rdi, head)
    meta: dict = field(default_factory=dict)  # the memo's JSON metadata
    _cache: dict = field(default_factory=dict, repr=False)  # derived arrays, filled on first use
    # Optional, per-pixel exit baseline (LC, Table 3); None in memos written before it (see mess_edge.search.lc).
    lc_cover_hist: Optional[np.ndarray] = None  # int32 [H, I, B], window-min raw confidence over the RF radius
    lc_stats: Optional[np.ndarray] = None  # int32 [H, I, T, 3C], per class (TP, FP, FN) of the mixed prediction
    lc_th: Optional[np.ndarray] = None  # float64 [T], pixel thresholds of lc_stats (memo bin edges)

    def __post_init__(self):
        _check(self)
        _check_lc(self)

    @property
    def has_lc(self):
        """True when the memo carries the LC baseline's arrays."""
        return self.lc_cover_hist is not None and self.lc_stats is not None and self.lc_th is not None

    @property
    def n_heads(self):
        return int(self.head_exit.shape[0])

    @property
    def n_images(self):
        return int(self.confusion.shape[1])

    @property
    def n_classes(self):
        return int(self.confusion.shape[2])

    def head_label(self, h):
        """Readable name of head h ("e1:c1b2r0h0") or "final" for h == H."""
        if h == self.n_heads:
            return "final"
        return "e{}:{}".format(int(self.head_exit[h]), arch_tag(self.head_arch[h]))

    def find_head(self, exit_index, arch):
        """Index of the head at ``exit_index`` with ``arch`` (dict or 4-sequence), or None."""
        if isinstance(arch, dict):
            arch = [arch.get(k) for k in ARCH_KEYS]
        hits = np.flatnonzero((self.head_exit == exit_index) & np.all(self.head_arch == np.asarray(arch), axis=1))
        return int(hits[0]) if len(hits) else None

    def exact_float32(self):
        """True when float32 sums of pixel counts are exact: every total (and row + col) stays below 2**24."""
        return int(self.confusion.sum(axis=(1, 2, 3)).max(initial=0)) < (1 << 23)

    def stats(self, dtype=np.float64):
        """[H+1, I, 3C] per (head, image): confusion diagonal, row sums (ground truth), column sums (predicted)."""
        key = ("stats", np.dtype(dtype).str)
        if key not in self._cache:
            conf = self.confusion
            diag = np.diagonal(conf, axis1=2, axis2=3)
            s = np.concatenate([diag, conf.sum(axis=3), conf.sum(axis=2)], axis=2)
            self._cache[key] = np.ascontiguousarray(s, dtype=dtype)
        return self._cache[key]

    def head_miou(self):
        """float64 [H+1]: each exit's mIoU (fraction) when every image takes it."""
        if "head_miou" not in self._cache:
            self._cache["head_miou"] = miou_from_stats(self.stats(np.float64).sum(axis=1))
        return self._cache["head_miou"]

    def bin_index(self, th_pix):
        """Index j of the bin edge equal to th_pix (image confidence = hist[..., j:].sum / n_pixels)."""
        j = int(np.argmin(np.abs(self.hist_bins - th_pix)))
        if abs(self.hist_bins[j] - th_pix) > 1e-6:
            raise MessError("got th_pix {}; expected one of the memo's bin edges ({} bins on [0, 1]); try {:.4g}".format(
                th_pix, len(self.hist_bins) - 1, self.hist_bins[j]))
        return j

    def image_confidence(self, policy, bin_index=None):
        """float64 [H+1, I]: eq. 7 image confidence, the fraction of pixels whose confidence >= hist_bins[bin_index].

        policy "edge" reads hist_edge, "raw" hist_raw; "mean" returns mean_conf (bin_index unused).
        """
        if policy == "mean":
            return self.mean_conf.astype(np.float64)
        if policy not in ("edge", "raw"):
            raise MessError("got policy {!r}; expected one of {}".format(policy, ", ".join(POLICIES)))
        key = ("tail", policy)
        if key not in self._cache:
            hist = self.hist_edge if policy == "edge" else self.hist_raw
            # tail[..., j] = hist[..., j:].sum(-1): one reverse cumsum serves every pixel threshold.
            self._cache[key] = np.cumsum(hist[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]
        return self._cache[key][..., bin_index] / self.n_pixels.astype(np.float64)


def miou_from_stats(stats):
    """mIoU (fraction) from summed stats [..., 3C] = (diag, row sums, col sums) -> float64 [...].

    IoU_c = TP / (TP + FP + FN) = diag / (row + col - diag); classes with an empty union are left out (nanmean);
    all classes empty gives NaN. Any float dtype holding exact integers gives the same bits: the arithmetic is
    float64 and the classes are added one by one, in order, whatever the batch shape (the brute-force reference
    relies on that to break ties identically).
    """
    stats = np.asarray(stats)
    c = stats.shape[-1] // 3
    total = np.zeros(stats.shape[:-1])
    count = np.zeros(stats.shape[:-1])
    for k in range(c):
        tp = stats[..., k].astype(np.float64)
        union = stats[..., c + k].astype(np.float64) + stats[..., 2 * c + k] - tp
        valid = union > 0
        total += np.divide(tp, union, out=np.zeros_like(tp), where=valid)
        count += valid
    with np.errstate(invalid="ignore"):
        return total / count


def _check(m):
    """Shapes and dtypes consistent; raises MessError naming the first problem."""
    if m.confusion.ndim != 4 or m.confusion.shape[2] != m.confusion.shape[3]:
        raise MessError("got confusion of shape {}; expected [H+1, I, C, C]".format(m.confusion.shape))
    h1, i, c = m.confusion.shape[:3]
    h = m.head_exit.shape[0] if m.head_exit.ndim == 1 else -1
    b = m.hist_bins.shape[0] - 1 if m.hist_bins.ndim == 1 else -1
    expect = {"hist_edge": (h1, i, b), "hist_raw": (h1, i, b), "mean_conf": (h1, i), "n_pixels": (h1, i),
              "head_exit": (h1 - 1,), "head_arch": (h1 - 1, 4)}
    for name, shape in expect.items():
        got = getattr(m, name).shape
        if got != shape or b < 1 or h != h1 - 1:
            raise MessError("got {} of shape {} with confusion {}; expected {} (H+1 = {} exits, I = {} images)".format(
                name, tuple(got), tuple(m.confusion.shape), shape, h1, i))
    if np.any(m.n_pixels <= 0):
        raise MessError("got n_pixels <= 0 for some image; expected the pixel count each histogram covers")
    if np.any(m.hist_edge.sum(-1) != m.n_pixels) or np.any(m.hist_raw.sum(-1) != m.n_pixels):
        raise MessError("got confidence histograms whose counts differ from n_pixels; expected equal; "
                        "try re-running calibrate")
    if np.any(np.diff(m.hist_bins) <= 0) or abs(m.hist_bins[0]) > 1e-9 or abs(m.hist_bins[-1] - 1) > 1e-9:
        raise MessError("got hist_bins from {} to {}; expected increasing edges on [0, 1]".format(
            m.hist_bins[0], m.hist_bins[-1]))
    if m.meta.get("num_classes", c) != c or m.meta.get("n_images", i) != i:
        raise MessError("got meta num_classes {} and n_images {}; expected {} and {} from the confusion array".format(
            m.meta.get("num_classes"), m.meta.get("n_images"), c, i))


def _check_lc(m):
    """The optional LC arrays: all three or none, shapes consistent with the rest of the memo."""
    given = [k for k in LC_ARRAYS if getattr(m, k) is not None]
    if not given:
        return
    if len(given) != len(LC_ARRAYS):
        raise MessError("got LC arrays {}; expected all of {} or none; try re-running calibrate".format(
            ", ".join(given), ", ".join(LC_ARRAYS)))
    h, i, c, b = m.n_heads, m.n_images, m.n_classes, m.hist_bins.shape[0] - 1
    t = m.lc_th.shape[0] if m.lc_th.ndim == 1 else -1
    for name, shape in (("lc_cover_hist", (h, i, b)), ("lc_stats", (h, i, t, 3 * c))):
        if getattr(m, name).shape != shape:
            raise MessError("got {} of shape {}; expected {} (H = {} heads, I = {} images); try re-running "
                            "calibrate".format(name, tuple(getattr(m, name).shape), shape, h, i))
    if np.any(m.lc_cover_hist.sum(-1) != m.n_pixels[:h]):
        raise MessError("got lc_cover_hist counts that differ from n_pixels; expected equal; try re-running calibrate")


def load_memo(path):
    """Read and validate a memo.npz; problems raise MessError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MessError("memo not found: {}; try mess-edge calibrate CKPT --data DIR --out {}".format(path, path))
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS + ("meta",) if k not in z.files]
            if missing:
                raise MessError("memo {} lacks {}; expected a memo written by mess-edge calibrate; "
                                "try re-running calibrate".format(path, ", ".join(missing)))
            arrays = {k: z[k] for k in _ARRAYS}
            lc = {k: z[k] for k in LC_ARRAYS if k in z.files}
            meta = json.loads(str(z["meta"][()]))
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        # Truncated, empty or bit-flipped files fail inside numpy's zip reader in all of these ways.
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MessError("memo {} is not a readable npz with JSON meta ({}); it is truncated or corrupt: try "
                        "re-running calibrate".format(path, first))
    if not isinstance(meta, dict):
        raise MessError("memo {}: meta got {!r}; expected a JSON object; try re-running calibrate".format(
            path, type(meta).__name__))
    if meta.get("format") != MEMO_FORMAT:
        raise MessError("memo {} has format {!r}; expected {!r}".format(path, meta.get("format"), MEMO_FORMAT))
    dtypes = {"confusion": np.int64, "hist_edge": np.int64, "hist_raw": np.int64, "hist_bins": np.float64,
              "mean_conf": np.float32, "n_pixels": np.int64, "head_exit": np.int64, "head_arch": np.int64}
    arrays = {k: np.asarray(v, dtype=dtypes[k]) for k, v in arrays.items()}
    lc_dtypes = {"lc_cover_hist": np.int64, "lc_stats": np.int64, "lc_th": np.float64}
    arrays.update({k: np.asarray(v, dtype=lc_dtypes[k]) for k, v in lc.items()})
    try:
        return Memo(meta=meta, **arrays)
    except MessError as e:
        raise MessError("memo {}: {}".format(path, e))


def save_memo(path, memo):
    """Write ``memo`` as memo.npz (the calibrate stage's format), atomically."""
    from mess_edge.artifacts import atomic_file

    arrays = {k: getattr(memo, k) for k in _ARRAYS}
    arrays["hist_edge"] = arrays["hist_edge"].astype(np.int32)
    arrays["hist_raw"] = arrays["hist_raw"].astype(np.int32)
    if memo.has_lc:
        arrays["lc_cover_hist"] = memo.lc_cover_hist.astype(np.int32)
        arrays["lc_stats"] = memo.lc_stats.astype(np.int32)
        arrays["lc_th"] = memo.lc_th.astype(np.float64)
    with atomic_file(path) as f:  # an open file: np.savez would append ".npz" to a path without it
        np.savez(f, meta=np.array(json.dumps(memo.meta)), **arrays)
