"""The overprovisioned multi-exit network (sec. 4): backbone + final head + candidate exits at exit points.

Entry points used by the trainer, the exporter and calibration (timm-style, no special export code):

- ``forward_segment(k, x)``: backbone segment k, from exit point k-1's feature (or the image, k = 0) to
  exit point k's feature; segment N-1 (N-1 = number of early exit points) runs to the backbone's end.
- ``forward_exit(k, arch, feat)``: the early exit of architecture ``arch`` at exit point k, native-resolution
  logits [B, C, H/os, W/os].
- ``forward_final_head(feat)``: the final head on the backbone output, native-resolution logits.
- ``forward_heads(x, heads)``: one backbone pass feeding every requested head (stage 2, calibration).
- ``forward(x)``: the original single-exit network, logits upsampled to the input size.
"""

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from mess_edge.model.backbones import EfficientNetLite0Backbone, MobileNetV2Backbone, ResNetBackbone
from mess_edge.model.heads import ALL_ARCHS, ExitArch, ExitHead, build_final_head
from mess_edge.model.macs import macs_of, ops_of, place_exits
from mess_edge.errors import MessError
from mess_edge.model.presets import get_preset


@dataclasses.dataclass(frozen=True)
class ExitPoint:
    index: int                  # 0-based early exit point
    block: int                  # backbone block whose output it taps (block 0 is the stem)
    stride: int                 # output stride of the feature (input pixels per feature pixel)
    channels: int
    dilation: int               # dilation of that block's 3x3 conv: exits continue from it
    cum_gmacs_fraction: float   # share of the backbone's MACs spent up to and including this block

    def to_dict(self):
        return dataclasses.asdict(self)


def exit_blocks_for(preset_name, blocks, n_exits):
    """place_exits for a user's ``--exits N``: N outside 2..(blocks - 1) is one MessError line, not a ValueError."""
    most = len(blocks) - 1  # early exits sit on distinct blocks 1 .. B-2; the final exit is the backbone's end
    if not 2 <= n_exits <= most:
        raise MessError("got --exits {} for preset {} ({} backbone blocks); expected 2..{} exit points, the final "
                        "exit included; try --exits {}".format(n_exits, preset_name, len(blocks), most,
                                                               min(max(n_exits, 2), most)))
    return place_exits([b["macs"] for b in blocks], n_exits)


def build_backbone(preset):
    if preset.backbone == "resnet":
        return ResNetBackbone(preset.resnet_layers, preset.resnet_base)
    if preset.backbone == "efficientnet-lite0":
        return EfficientNetLite0Backbone()
    return MobileNetV2Backbone(preset.mbv2_width)


def profile_blocks(preset, input_hw):
    """Per-block MACs, output channels and strides at ``input_hw``, counted on the meta device."""
    with torch.device("meta"):
        backbone = build_backbone(preset)
        x = torch.empty(1, 3, input_hw[0], input_hw[1])
    blocks = []
    backbone.eval()
    for i, fn in enumerate(backbone.block_fns()):
        macs, elementwise, x = ops_of(fn, x)
        blocks.append({"index": i, "macs": macs, "elementwise": elementwise, "out_channels": int(x.shape[1]),
                       "stride": input_hw[0] // int(x.shape[2]), "hw": [int(x.shape[2]), int(x.shape[3])]})
    return blocks, backbone.block_dilations()


class MultiExitNet(nn.Module):
    """Backbone of ``preset`` with its final head and early exits ``archs`` = [(exit_index, ExitArch), ...].

    ``model_args`` (a plain dict of the constructor's arguments) rebuilds the same network, as nanoGPT's do.
    """

    def __init__(self, preset, num_classes=None, input_hw=None, n_exits=None, exit_blocks=None, archs=()):
        super().__init__()
        p = get_preset(preset)
        self.preset_name = preset
        self.preset = p
        self.num_classes = int(num_classes or p.num_classes)
        self.input_hw = tuple(int(v) for v in (input_hw or p.input_hw))
        blocks, dilations = profile_blocks(p, self.input_hw)
        if exit_blocks is None:
            exit_blocks = exit_blocks_for(preset, blocks, int(n_exits or p.n_exits))
        exit_blocks = [int(b) for b in exit_blocks]
        total = float(sum(b["macs"] for b in blocks))
        self.exit_points = tuple(
            ExitPoint(k, b, blocks[b]["stride"], blocks[b]["out_channels"], dilations[b],
                      sum(x["macs"] for x in blocks[: b + 1]) / total)
            for k, b in enumerate(exit_blocks))
        self._check_exit_points(len(blocks))
        self.backbone = build_backbone(p)
        self._blocks = self.backbone.block_fns()
        self.final_head = build_final_head(p.final_head, self.backbone.out_channels, self.num_classes,
                                           p.aspp_channels)
        self.exits = nn.ModuleDict()
        for k, arch in archs:
            self.add_exit(int(k), arch if isinstance(arch, ExitArch) else ExitArch.parse(arch))

    def _check_exit_points(self, n_blocks):
        blocks = [e.block for e in self.exit_points]
        assert all(a < b for a, b in zip(blocks, blocks[1:])), "exit points must be strictly increasing"
        assert all(1 <= b < n_blocks - 1 for b in blocks), "exit points must sit inside the backbone"

    @property
    def model_args(self):
        return {"preset": self.preset_name, "num_classes": self.num_classes, "input_hw": list(self.input_hw),
                "exit_blocks": [e.block for e in self.exit_points],
                "archs": [[k, a.name] for k, a in self.heads()]}

    # ----------------------------------------------------------------------------------- exits
    @staticmethod
    def exit_key(k, arch):
        return "e{}_{}".format(k, arch.name)

    def add_exit(self, k, arch):
        ep = self.exit_points[k]
        self.exits[self.exit_key(k, arch)] = ExitHead(ep.channels, self.num_classes, arch,
                                                      self.preset.aspp_channels, ep.dilation)

    def heads(self):
        """The attached early exits as [(exit_index, ExitArch)], in exit-point then architecture order."""
        out = []
        for key in self.exits:
            k, name = key.split("_", 1)
            out.append((int(k[1:]), ExitArch.parse(name)))
        return sorted(out)

    def exit_head(self, k, arch):
        return self.exits[self.exit_key(k, arch)]

    # ----------------------------------------------------------------------------------- entry points
    @property
    def n_segments(self):
        return len(self.exit_points) + 1

    def segment_range(self, k):
        """Blocks [start, stop) run by segment k."""
        start = 0 if k == 0 else self.exit_points[k - 1].block + 1
        stop = len(self._blocks) if k == len(self.exit_points) else self.exit_points[k].block + 1
        return start, stop

    def forward_segment(self, k, x):
        start, stop = self.segment_range(k)
        for fn in self._blocks[start:stop]:
            x = fn(x)
        return x

    def forward_exit(self, k, arch, feat):
        return self.exit_head(k, arch)(feat)

    def forward_final_head(self, feat):
        return self.final_head(feat)

    def forward_features(self, x):
        """Exit-point features [f_0, ..., f_{N-2}] and the backbone output, in one pass."""
        feats = []
        for k in range(self.n_segments):
            x = self.forward_segment(k, x)
            feats.append(x)
        return feats

    def forward_heads(self, x, heads=None, final=True):
        """One backbone pass feeding every head in ``heads`` (default: all attached).

        Returns {(k, arch): logits} plus {"final": logits}, all at native resolution.
        """
        feats = self.forward_features(x)
        out = {}
        for k, arch in (self.heads() if heads is None else heads):
            out[(k, arch)] = self.forward_exit(k, arch, feats[k])
        if final:
            out["final"] = self.forward_final_head(feats[-1])
        return out

    def forward(self, x):
        feat = self.backbone(x)
        return upsample(self.final_head(feat), x.shape[-2:])


def upsample(logits, hw):
    """Native-resolution logits to the input size (bilinear, align_corners=False, as torchvision)."""
    return F.interpolate(logits, size=tuple(int(v) for v in hw), mode="bilinear", align_corners=False)


def cost_profile(preset, num_classes=None, input_hw=None, n_exits=None, archs=ALL_ARCHS):
    """The cost profile of sec. 4.1 / Fig. 3 and the MACs of every exit architecture (sec. 4.2), on meta.

    Returns a JSON-ready dict: total/backbone/head GMACs, per-block GMACs, exit points and, for every exit
    point, the GMACs of each architecture in ``archs``.
    """
    p = get_preset(preset)
    num_classes = int(num_classes or p.num_classes)
    input_hw = tuple(int(v) for v in (input_hw or p.input_hw))
    blocks, dilations = profile_blocks(p, input_hw)
    backbone_macs = sum(b["macs"] for b in blocks)
    exit_blocks = exit_blocks_for(preset, blocks, int(n_exits or p.n_exits))
    with torch.device("meta"):
        last = blocks[-1]
        feat = torch.empty(1, last["out_channels"], *last["hw"])
        head_macs, head_elem, _ = ops_of(build_final_head(p.final_head, last["out_channels"], num_classes,
                                                p.aspp_channels).eval(), feat)
        exit_archs, points = [], []
        cum = 0
        cum_list = []
        for b in blocks:
            cum += b["macs"]
            cum_list.append(cum)
        for k, b in enumerate(exit_blocks):
            blk = blocks[b]
            points.append({"index": k, "block": b, "cum_gmacs_fraction": cum_list[b] / backbone_macs,
                           "cum_gmacs": cum_list[b] / 1e9, "channels": blk["out_channels"],
                           "stride": blk["stride"], "dilation": dilations[b]})
            feat = torch.empty(1, blk["out_channels"], *blk["hw"])
            for arch in archs:
                head = ExitHead(blk["out_channels"], num_classes, arch, p.aspp_channels, dilations[b]).eval()
                m, _ = macs_of(head, feat)
                exit_archs.append({"exit": k, "crm": arch.crm, "blocks": arch.blocks, "rdi": arch.rdi,
                                   "head": arch.head, "name": arch.name, "gmacs": m / 1e9})
    return {
        "preset": preset, "input_hw": list(input_hw), "num_classes": num_classes, "unit": "GMACs",
        "total_gmacs": (backbone_macs + head_macs) / 1e9, "backbone_gmacs": backbone_macs / 1e9,
        "head_gmacs": head_macs / 1e9,
        # MACs + BN/ReLU elements: how the paper's Table 2 counts "GFLOPs" (see mess_edge.model.macs).
        "paper_gflops": (backbone_macs + head_macs + head_elem + sum(b["elementwise"] for b in blocks)) / 1e9,
        "blocks": [{"index": b["index"], "gmacs": b["macs"] / 1e9, "out_channels": b["out_channels"],
                    "stride": b["stride"]} for b in blocks],
        "exit_points": points, "exit_archs": exit_archs,
    }
