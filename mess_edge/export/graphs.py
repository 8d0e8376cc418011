"""The torch modules exported as ONNX graphs: one per backbone segment, head, final path, upsample, monolith.

They use only the model's entry points (``forward_segment``, ``forward_exit``, ``forward_final_head``), so
per-segment export needs no special model code. Label maps leave the graph as int32: TensorRT 8.x's ArgMax
yields INT32, and a uint8/int32 label map is what the host needs.
"""

import torch
from torch import nn
from torch.nn import functional as F

from mess_edge.export.label_map import DEFAULT_LABEL_MAP, LABEL_MAP_FORMS, interpolation_matrix
from mess_edge.model.gate import HeadWithGate


class LabelMap(nn.Module):
    """Native logits [1, C, h, w] -> label map int32 [1, H, W]: bilinear (align_corners=False), argmax.

    ``form`` "matmul" (default): ``A_h @ logits @ A_w^T`` with constant interpolation matrices (label_map.py),
    two MatMuls in the graph; "resize": ``F.interpolate``, one Resize node. Same values up to float rounding.
    """

    def __init__(self, logits_hw, out_hw, form=DEFAULT_LABEL_MAP):
        super().__init__()
        if form not in LABEL_MAP_FORMS:
            raise ValueError("label-map form {!r}; expected one of {}".format(form, LABEL_MAP_FORMS))
        self.form, self.out_hw = form, tuple(int(v) for v in out_hw)
        if form == "matmul":
            (h, w), (oh, ow) = logits_hw, self.out_hw
            self.register_buffer("a_h", torch.from_numpy(interpolation_matrix(int(h), oh)))
            self.register_buffer("a_wt", torch.from_numpy(interpolation_matrix(int(w), ow).T.copy()))

    def upsample(self, logits):
        if self.form == "matmul":
            return torch.matmul(self.a_h, torch.matmul(logits, self.a_wt))
        return F.interpolate(logits, size=self.out_hw, mode="bilinear", align_corners=False)

    def forward(self, logits):
        return self.upsample(logits).argmax(dim=1).to(torch.int32)


class Segment(nn.Module):
    """Backbone segment k: exit point k-1's feature (or the image) -> exit point k's feature."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        return self.net.forward_segment(self.k, x)


def gated_head(net, k, arch):
    """An early exit: feature, th_pix -> (native logits, image confidence of eqs. 7-9)."""
    return HeadWithGate(net.exit_head(k, arch))


class FinalPath(nn.Module):
    """The last backbone segment, the final head and the upsample in one graph: feature -> label map int32.

    Nothing decides after the final exit, so it needs no confidence; and one graph instead of
    final + upsample saves a session call and a layout round trip on the CPU (measured: the chained
    final-only path went from 1.13-1.18x to 1.03-1.04x of the monolithic graph on cpu-mbv2).
    ``labels=False`` gives the native logits instead, for the export self-check only.
    """

    def __init__(self, net, labels=True, logits_hw=None, form=DEFAULT_LABEL_MAP):
        super().__init__()
        self.net = net
        self.labels = labels
        if labels:
            self.label_map = LabelMap(logits_hw, net.input_hw, form)

    def forward(self, feat):
        logits = self.net.forward_final_head(self.net.forward_segment(self.net.n_segments - 1, feat))
        return self.label_map(logits) if self.labels else logits


class Upsample(LabelMap):
    """An exit head's native logits -> label map at the input size, int32 (a LabelMap graph of its own).

    Run only for the exit an image takes: no head upsamples before the exit decision.
    """


class Monolithic(nn.Module):
    """The original single-exit network (the final-only baseline): image -> label map, int32, with the same
    label-map form as the chain's graphs, so the baseline is not slowed by a slower upsample."""

    def __init__(self, net, logits_hw, form=DEFAULT_LABEL_MAP):
        super().__init__()
        self.net = net
        self.label_map = LabelMap(logits_hw, net.input_hw, form)

    def forward(self, image):
        return self.label_map(self.net.final_head(self.net.backbone(image)))
