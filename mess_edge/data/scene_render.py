"""Drawing one DigitScenes image and its label map (numpy + OpenCV; no torch, no files).

The distributions are documented in ``mess_edge.data.digitscenes``; keep the two in step.
Images are composed in float32 RGB in [0, 1]. Every shape is drawn at _SS x supersampling and reduced by
area averaging, which gives each pixel its coverage; labels follow the coverage (see ``_paint``).
"""

import math

import numpy as np

IGNORE_INDEX = 255
_SS = 4  # supersampling factor of the anti-aliased masks


def _lerp(a, b, t):
    return a + (b - a) * t


def _colour(rng, lum):
    """An RGB colour in [0, 1] of luminance ~lum with a random hue and saturation."""
    v = rng.uniform(0, 1, 3)
    y = v @ np.array([0.299, 0.587, 0.114])
    return np.clip(lum + rng.uniform(0, 0.8) * (v - y), 0, 1).astype(np.float32)


def _coverage(hi_mask):
    """Downsample a {0,1} float mask drawn at _SS x resolution to per-pixel coverage in [0, 1]."""
    import cv2

    h, w = hi_mask.shape
    return cv2.resize(hi_mask, (w // _SS, h // _SS), interpolation=cv2.INTER_AREA)


def _paint(img, lab, alpha, y0, x0, colour, cls):
    """Composite a coverage patch at (y0, x0) (may be partly outside) onto img [H,W,3] / lab [H,W].

    Colour: alpha blending by coverage. Label: coverage >= 0.75 takes ``cls``; 0.25 < coverage < 0.75 over
    a different class becomes 255 (ambiguous); coverage <= 0.25 leaves the label as it was.
    """
    H, W = lab.shape
    ph, pw = alpha.shape
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + ph, H), min(x0 + pw, W)
    if ya >= yb or xa >= xb:
        return
    a = alpha[ya - y0:yb - y0, xa - x0:xb - x0]
    view = img[ya:yb, xa:xb]
    view += a[..., None] * (colour - view)
    lv = lab[ya:yb, xa:xb]
    # A mixed edge pixel is ambiguous only if it mixes two different classes.
    band = (a > 0.25) & (a < 0.75) & (lv != cls)
    lv[a >= 0.75] = cls
    lv[band] = IGNORE_INDEX


def _background(rng, n, lum, r):
    """Background float32 [n, n, 3]: base colour of luminance lum; gradient, texture, stripes scaled by r."""
    import cv2

    img = np.empty((n, n, 3), np.float32)
    img[:] = _colour(rng, lum)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    t = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(t) * (xx - 0.5) + np.sin(t) * (yy - 0.5))[..., None]
    img += r * rng.uniform(0, 0.3) * ramp * (0.5 + rng.uniform(0, 1, 3)).astype(np.float32)
    cells = int(rng.integers(4, 17))
    tex = cv2.resize(rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32), (n, n),
                     interpolation=cv2.INTER_CUBIC)
    img += r * rng.uniform(0, 0.25) * tex
    if rng.uniform() < r / 2:
        period = rng.uniform(6, 30) * n / 128
        t = rng.uniform(0, 2 * np.pi)
        img += r * rng.uniform(0, 0.15) * np.sin(
            2 * np.pi * (np.cos(t) * xx + np.sin(t) * yy) * n / period)[..., None]
    return img


def _clutter(rng, img, r, lum_fg, s):
    """Draw Poisson(8 r) background-labelled lines, blobs and arcs onto img in place."""
    import cv2

    n = img.shape[0]
    for _ in range(int(rng.poisson(8 * r))):
        col = _colour(rng, lum_fg if rng.uniform() < 0.5 else rng.uniform(0, 1)).tolist()
        p = rng.uniform(0, n, 2).astype(int)
        kind = rng.integers(3)
        if kind == 0:
            q = rng.uniform(0, n, 2).astype(int)
            cv2.line(img, tuple(p.tolist()), tuple(q.tolist()), col, max(1, int(rng.uniform(1, 4) * s)),
                     cv2.LINE_AA)
        elif kind == 1:
            ax = (rng.uniform(3, 20, 2) * s).astype(int) + 1
            cv2.ellipse(img, tuple(p.tolist()), tuple(ax.tolist()), rng.uniform(0, 180), 0, 360, col, -1,
                        cv2.LINE_AA)
        else:
            rad = int(rng.uniform(8, 30) * s) + 1
            a0 = rng.uniform(0, 360)
            cv2.ellipse(img, tuple(p.tolist()), (rad, rad), 0, a0, a0 + rng.uniform(60, 270), col,
                        max(1, int(rng.uniform(2, 6) * s)), cv2.LINE_AA)


def _digit_alpha(rng, digit8, h, w, angle_deg):
    """Coverage patch [h + 2p, w + 2p] of one thickened, rotated handwritten digit (float32 in [0, 1])."""
    import cv2

    pad = int(math.ceil(0.25 * max(h, w))) + 2
    hp, wp = h + 2 * pad, w + 2 * pad
    # Stroke at 2x: bicubic upsampling of the 8x8 digit, thresholded.
    off = np.ones((2 * hp, 2 * wp), np.uint8)
    up = cv2.resize(digit8.astype(np.float32), (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
    off[2 * pad:2 * (pad + h), 2 * pad:2 * (pad + w)] = up <= rng.uniform(0.4, 0.55)
    # Dilation by a disc = threshold on the distance to the stroke (far cheaper than cv2.dilate with a
    # large kernel). The distance field is smooth, so rotating and upsampling it to the supersampled grid
    # before thresholding gives clean edges without a distance transform at 4x.
    dist = cv2.distanceTransform(off, cv2.DIST_L2, 5)
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) * (2.0 / _SS)
    c_dst = np.array([_SS * wp, _SS * hp]) / 2.0 - 0.5
    c_src = np.array([2 * wp, 2 * hp]) / 2.0 - 0.5
    m = np.hstack([rot, (c_src - rot @ c_dst)[:, None]])  # maps output (4x) pixels to source (2x) pixels
    far = float(4 * (hp + wp))
    warped = cv2.warpAffine(dist, m, (_SS * wp, _SS * hp), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=far)
    hi = (warped <= 2 * h * rng.uniform(0.01, 0.04)).astype(np.float32)
    return _coverage(hi), pad


def _occluder_alpha(rng, n, centre, s):
    """Coverage [n, n] of one occluder (bar, ellipse or rotated rectangle) centred at centre = (x, y)."""
    import cv2

    hi = np.zeros((_SS * n, _SS * n), np.uint8)
    c = (np.asarray(centre) * _SS).astype(int)
    kind = rng.integers(3)
    if kind == 0:
        t = rng.uniform(0, np.pi)
        half = rng.uniform(15, 50) * s * _SS / 2
        d = (np.array([np.cos(t), np.sin(t)]) * half).astype(int)
        cv2.line(hi, tuple((c - d).tolist()), tuple((c + d).tolist()), 1,
                 max(1, int(rng.uniform(3, 10) * s * _SS)))
    elif kind == 1:
        ax = (rng.uniform(4, 14, 2) * s * _SS).astype(int) + 1
        cv2.ellipse(hi, tuple(c.tolist()), tuple(ax.tolist()), rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        box = ((float(c[0]), float(c[1])), tuple((rng.uniform(6, 24, 2) * s * _SS).tolist()),
               rng.uniform(0, 90))
        cv2.fillPoly(hi, [cv2.boxPoints(box).astype(np.int32)], 1)
    return _coverage(hi.astype(np.float32))


def _place(rng, size, h, w, out, tries, boxes):
    """Top-left (x, y) of an h x w digit box: the least overlapping of ``tries`` uniform candidates."""
    best, best_overlap = None, None
    for _ in range(tries):
        x = int(round(rng.uniform(-out, size - w + out)))
        y = int(round(rng.uniform(-out, size - h + out)))
        overlap = sum(max(0, min(x + w, bx1) - max(x, bx0)) * max(0, min(y + h, by1) - max(y, by0))
                      for bx0, by0, bx1, by1 in boxes)
        if best is None or overlap < best_overlap:
            best, best_overlap = (x, y), overlap
    return best


def render_scene(rng, size, digits, labels, pool, difficulty=None):
    """One scene: (image uint8 [size,size,3] RGB, label uint8 [size,size], list of digit sample indices).

    ``digits``: float [N, 8, 8] in [0, 1]; ``labels``: int [N] digit classes; ``pool``: sample indices
    allowed; ``difficulty``: d in [0, 1], drawn from rng (as the generator does) when None.
    """
    import cv2

    s = size / 128.0
    d = rng.uniform()
    if difficulty is not None:
        d = float(difficulty)  # the draw above still happens, so the rest of the stream is unchanged
    r = min(1.0, max(0.0, (d - 0.2) / 0.8))
    dy = _lerp(0.75, 0.12, d)
    # Background luminance uniform over the values that leave room for dY on at least one side.
    room = 0.94 - dy  # length of each of [0.03, 0.97 - dy] and [0.03 + dy, 0.97]
    u = rng.uniform(0, 2 * room)
    lum_bg = 0.03 + u if u < room else 0.03 + dy + (u - room)
    img = _background(rng, size, lum_bg, r)
    lab = np.zeros((size, size), np.uint8)
    sides = [sgn for sgn in (-1, 1) if 0.0 <= lum_bg + sgn * dy <= 1.0] or [1 if lum_bg < 0.5 else -1]
    lum_fg = float(np.clip(lum_bg + sides[int(rng.integers(len(sides)))] * dy, 0, 1))
    _clutter(rng, img, r, lum_fg, s)

    used, centres, boxes = [], [], []
    for _ in range(min(4, 1 + int(3 * d + rng.uniform()))):
        idx = int(pool[int(rng.integers(len(pool)))])
        h = max(8, int(round(rng.uniform(_lerp(64, 32, d), 96) * s)))
        w = max(6, int(round(h * rng.uniform(0.75, 1.0))))
        alpha, pad = _digit_alpha(rng, digits[idx], h, w, rng.uniform(-1, 1) * _lerp(5, 25, d))
        x, y = _place(rng, size, h, w, 0.15 * r * h, 1 + int(round(3 * (1 - d))), boxes)
        boxes.append((x, y, x + w, y + h))
        x, y = x - pad, y - pad
        sgn = sides[int(rng.integers(len(sides)))]
        lum = float(np.clip(lum_bg + sgn * dy * rng.uniform(0.85, 1.15), 0, 1))
        _paint(img, lab, alpha, y, x, _colour(rng, lum), 1 + int(labels[idx]))
        used.append(idx)
        centres.append((x + pad + w / 2.0, y + pad + h / 2.0))

    for _ in range(min(5, int(rng.poisson(2.5 * r)))):
        c = centres[int(rng.integers(len(centres)))] if rng.uniform() < 0.7 else rng.uniform(0, size, 2)
        alpha = _occluder_alpha(rng, size, c, s)
        _paint(img, lab, alpha, 0, 0, _colour(rng, rng.uniform(0, 1)), 0)

    img += (r * rng.uniform(0.5, 1) * 0.06) * rng.standard_normal(img.shape).astype(np.float32)
    if rng.uniform() < r / 2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), lab, used
