"""The label-map upsample as two MatMuls: the interpolation matrices (numpy only, no torch).

Bilinear interpolation with ``align_corners=False`` (ONNX Resize ``linear`` / ``half_pixel``, what torchvision
and the memo use) is separable and linear, so the upsampled logits are ``A_h @ logits @ A_w^T`` with constant
matrices ``A_h`` [H, h] and ``A_w`` [W, w], each row holding the two weights of one output pixel, the source
coordinate clamped at the border exactly as Resize and ``F.interpolate`` clamp it. On ONNX Runtime's CPU path
the MatMul form runs 1.2-2.5x faster than Resize at the shapes the presets and the paper's networks use
(``benchmarks/upsample_forms.py``); it is the export's default (``mess-edge export --label-map``), paid on every
exit an image takes. Its labels differ from Resize's only where two classes tie to float rounding.
"""

import numpy as np

LABEL_MAP_FORMS = ("matmul", "resize")
DEFAULT_LABEL_MAP = "matmul"


def interpolation_matrix(n, size):
    """float32 [size, n]: row i holds the half_pixel bilinear weights of output i over the n inputs."""
    x = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (float(n) / size) - 0.5, 0.0, n - 1.0)
    x0 = np.floor(x).astype(np.int64)
    x1, f = np.minimum(x0 + 1, n - 1), x - x0
    a = np.zeros((size, n), np.float64)
    rows = np.arange(size)
    np.add.at(a, (rows, x0), 1.0 - f)
    np.add.at(a, (rows, x1), f)
    return a.astype(np.float32)


def upsample_reference(logits, hw):
    """Plain per-pixel bilinear (half_pixel, clamped) of float [C, h, w] logits to [C, H, W], float64: the
    obvious loop the matrices are tested against."""
    c, h, w = logits.shape
    out = np.zeros((c, hw[0], hw[1]), np.float64)
    for i in range(hw[0]):
        y = min(max((i + 0.5) * h / hw[0] - 0.5, 0.0), h - 1.0)
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(hw[1]):
            x = min(max((j + 0.5) * w / hw[1] - 0.5, 0.0), w - 1.0)
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            out[:, i, j] = ((1 - fy) * ((1 - fx) * logits[:, y0, x0] + fx * logits[:, y0, x1])
                            + fy * ((1 - fx) * logits[:, y1, x0] + fx * logits[:, y1, x1]))
    return out
