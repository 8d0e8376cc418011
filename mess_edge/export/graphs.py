"""The torch modules exported as ONNX graphs: one per backbone segment, head, final path, upsample, monolith.

They use only the model's entry points (``forward_segment``, ``forward_exit``, ``forward_final_head``), so
per-segment export needs no special model code. Label maps leave the graph as int32: TensorRT 8.x's ArgMax
yields INT32, and a uint8/int32 label map is what the host needs.
"""

import torch
from torch import nn
from torch.nn import functional as F

from mess_edge.model.gate import HeadWithGate


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

    def __init__(self, net, labels=True):
        super().__init__()
        self.net = net
        self.labels = labels

    def forward(self, feat):
        logits = self.net.forward_final_head(self.net.forward_segment(self.net.n_segments - 1, feat))
        if not self.labels:
            return logits
        up = F.interpolate(logits, size=self.net.input_hw, mode="bilinear", align_corners=False)
        return up.argmax(dim=1).to(torch.int32)


class Upsample(nn.Module):
    """Native logits -> label map at the input size (bilinear, align_corners=False, argmax), int32.

    Run only for the exit an image takes: no head upsamples before the exit decision.
    """

    def __init__(self, hw):
        super().__init__()
        self.hw = tuple(int(v) for v in hw)

    def forward(self, logits):
        up = F.interpolate(logits, size=self.hw, mode="bilinear", align_corners=False)
        return up.argmax(dim=1).to(torch.int32)


class Monolithic(nn.Module):
    """The original single-exit network (the final-only baseline): image -> label map, int32."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net(image).argmax(dim=1).to(torch.int32)
