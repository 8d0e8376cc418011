"""The exit policy's image confidence as a torch module, exported inside every head's ONNX graph.

The head graph returns its native-resolution logits and one scalar, so on the device only the label map (for
the exit taken) and one float cross to the host, and nothing is upsampled before the exit decision. The
definition (eqs. 7-9, readings settled) is in ``mess_edge.confidence``; this module computes exactly what
``mess_edge.confidence.image_confidence_fast`` mirrors:

    conf   = max_c softmax(logits)                      (or 1 - entropy / log C; pixel_confidence_graph)
    passed = conf >= th_pix                             pixel passes eq. 7's threshold
    labels = argmax_c logits;  edge = maxpool3x3(labels) + maxpool3x3(-labels) > 0   (another label nearby)
    votes  = avgpool(passed, 5x5, count_include_pad=0)  fraction of the in-image window that passes
    score  = where(edge, votes, passed);  confidence = mean(score > 0.5 + 1 / (4 n))

On an edge pixel the lower median of its window is >= th_pix exactly when more than half the window passes
(n = window size), which is what the vote tests; the 1 / (4 n) margin keeps that test clear of rounding in
fp16 (a majority is >= 0.5 + 1 / (2 n), a non-majority <= 0.5).

ONNX ops at opset 17: Unsqueeze / Squeeze (constant axes), MaxPool and AveragePool (2-D and 3-D, no
dilations), Sub, Exp, Div (Mul, Log for "entropy"), GreaterOrEqual, Greater, Cast, ArgMax, Neg, Add, Where,
ReduceMean (axes as an attribute): all in TensorRT 8.5's ONNX parser; no TopK, no data-dependent shapes.
MaxPool's padding never wins a max (ONNX and TensorRT pad max pooling with -inf), so the 3x3 test only sees
in-image pixels, like the numpy mirror.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mess_edge.errors import MessError

KINDS = ("top1", "entropy")


def _pool_classes(z, pool):
    """max (pool="max") or mean (pool="avg") over the class axis of z [n, 1, C, h, w] -> [n, 1, 1, h, w].

    In the ONNX graph this is a 3-D pool with a (C, 1, 1) window: ONNX Runtime's CPU reductions over a middle
    axis are slow (21x64x64, one thread: ReduceMax, Exp, ReduceMean 97 us; the same with the two pools 51 us;
    a Softmax alone 670 us). TensorRT takes 3-D pooling. Eager torch keeps amax / mean, the same arithmetic,
    because its CPU avg_pool3d has no fp16 kernel.
    """
    if not torch.onnx.is_in_onnx_export():
        return z.amax(dim=2, keepdim=True) if pool == "max" else z.mean(dim=2, keepdim=True)
    window = (int(z.shape[2]), 1, 1)
    return F.max_pool3d(z, window) if pool == "max" else F.avg_pool3d(z, window)


def pixel_confidence_graph(logits, kind):
    """Per-pixel confidence [n, 1, h, w] from logits [n, C, h, w], without a Softmax node.

    Both kinds are written with the shared exponentials e = exp(z - max_c z) and mean_e = mean_c e (in
    [1 / C, 1]):
      top1    = max_c softmax = 1 / sum_c e = (1 / C) / mean_e
      entropy = 1 - H(p) / log C = (mean_c(e * (z - max_c z)) / mean_e - log mean_e) / log C
    (sum_c p log p = sum_c e (z - max z) / sum_c e - log sum_c e; the two log C terms cancel.)
    """
    num_classes = int(logits.shape[1])
    z = logits.unsqueeze(1)  # [n, 1, C, h, w]: the classes become a pooling axis
    shifted = z - _pool_classes(z, "max")
    e = torch.exp(shifted)
    mean_e = _pool_classes(e, "avg")
    if kind == "top1":
        # A tensor numerator keeps this one Div node (a Python scalar would export Reciprocal + Mul).
        conf = torch.full((1,), 1.0 / num_classes, dtype=logits.dtype) / mean_e
    else:
        ratio = _pool_classes(e * shifted, "avg") / mean_e
        conf = (ratio - torch.log(mean_e)) * (1.0 / math.log(num_classes))
    return conf.squeeze(1)


class ConfidenceGate(nn.Module):
    """Image confidence of one exit's prediction (paper eqs. 7-9), at the logits' native resolution.

    edge: apply the semantic-edge median enhancement (eqs. 8-9). radius: median window half-size in native
    pixels (2 -> 5x5, the paper's +-2 os). kind: "top1" or "entropy" pixel confidence.
    """

    def __init__(self, edge=True, radius=2, kind="top1"):
        super().__init__()
        if kind not in KINDS:
            raise MessError("got confidence kind {!r}; expected one of {}; try kind='top1'".format(kind, KINDS))
        if int(radius) < 1:
            raise MessError("got median radius {}; expected >= 1 (2 is the paper's 5x5 window)".format(radius))
        self.edge = bool(edge)
        self.radius = int(radius)
        self.kind = kind
        window = (2 * self.radius + 1) ** 2
        self.vote_threshold = 0.5 + 1.0 / (4 * window)

    def extra_repr(self):
        return "edge={}, radius={}, kind={!r}".format(self.edge, self.radius, self.kind)

    def forward(self, logits, th_pix):
        """logits: float [1, C, h, w]; th_pix: float32 [1]. Returns the confidence, float32 [1] in [0, 1]."""
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise MessError("got logits with {} class; expected >= 2".format(num_classes))
        conf = pixel_confidence_graph(logits, self.kind)
        if th_pix.dtype != conf.dtype:  # fp16 heads; a no-op Cast in the fp32 graph otherwise
            th_pix = th_pix.to(conf.dtype)
        passed = conf >= th_pix
        if self.edge:
            passed = passed.to(conf.dtype)
            labels = logits.argmax(dim=1, keepdim=True).to(conf.dtype)  # class ids < 2048: exact in fp16 too
            edge = (F.max_pool2d(labels, 3, 1, 1) + F.max_pool2d(-labels, 3, 1, 1)) > 0
            k = 2 * self.radius + 1
            votes = F.avg_pool2d(passed, k, stride=1, padding=self.radius, count_include_pad=False)
            passed = torch.where(edge, votes, passed) > self.vote_threshold
        # Count in float32 whatever the head's precision: fp16 cannot count past 2048 pixels exactly.
        return passed.to(torch.float32).mean(dim=(1, 2, 3))


class HeadWithGate(nn.Module):
    """A head plus its confidence gate: the module the exporter writes as one head graph.

    forward(feat [1, C_in, h, w], th_pix float32 [1]) -> (logits [1, C, h, w] native resolution,
    confidence float32 [1]).
    """

    def __init__(self, head, gate=None):
        super().__init__()
        self.head = head
        self.gate = ConfidenceGate() if gate is None else gate

    def forward(self, feat, th_pix):
        logits = self.head(feat)
        return logits, self.gate(logits, th_pix)
