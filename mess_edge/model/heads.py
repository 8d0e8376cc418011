"""Segmentation heads and the exit architecture space of sec. 4.2 (eq. 1).

``FCNHead`` and ``DeepLabHead`` reproduce torchvision's modules (same layers, same state-dict keys) and are
used both as the final exit and as the last stage of every early exit. An early exit is

    [CRM: 1x1 conv to C/r] -> [0..3 extra 3x3 conv blocks] -> FCN head | DeepLabV3 (ASPP) head

with the rapid dilation increase (RDI) doubling the dilation of each 3x3 layer after the CRM.
Every head returns logits at its input's (native) resolution; upsampling happens outside.
"""

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

CRM_FACTORS = (1, 2, 4, 8)  # option index -> channel reduction factor
HEAD_NAMES = ("fcn", "dlb")  # option index -> head type


@dataclasses.dataclass(frozen=True, order=True)
class ExitArch:
    """One point of eq. 1: crm in {0..3} (/1, /2, /4, /8), blocks in {0..3}, rdi in {0, 1}, head 0 FCN / 1 DLB."""

    crm: int
    blocks: int
    rdi: int
    head: int

    def __post_init__(self):
        if not (0 <= self.crm < 4 and 0 <= self.blocks < 4 and self.rdi in (0, 1) and self.head in (0, 1)):
            raise ValueError("invalid exit architecture {}".format(self))

    @property
    def name(self):
        return "c{}b{}r{}h{}".format(self.crm, self.blocks, self.rdi, self.head)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, name):
        """'c1b2r0h1' -> ExitArch(1, 2, 0, 1)."""
        import re

        m = re.fullmatch(r"c(\d)b(\d)r(\d)h(\d)", name)
        if not m:
            raise ValueError("bad exit architecture name {!r}; expected like 'c1b2r0h1'".format(name))
        return cls(*(int(g) for g in m.groups()))


ALL_ARCHS = tuple(ExitArch(c, b, r, h) for c in range(4) for b in range(4) for r in range(2) for h in range(2))
VANILLA_FCN = ExitArch(0, 0, 0, 0)  # stage 1's "vanilla FCN head" at every exit point


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: 3x3 conv to C/4, BN, ReLU, dropout 0.1, 1x1 to classes."""

    def __init__(self, in_channels, num_classes, dilation=1):
        inter = max(in_channels // 4, 1)
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class ASPPConv(nn.Sequential):
    def __init__(self, cin, cout, dilation):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))

    def forward(self, x):
        size = x.shape[-2:]
        # Global mean written as a reduction (not AdaptiveAvgPool) so it exports to a plain ReduceMean /
        # GlobalAveragePool at any input size; same result.
        y = x.mean(dim=(2, 3), keepdim=True)
        for mod in list(self)[1:]:
            y = mod(y)
        return F.interpolate(y, size=size, mode="nearest")


class ASPP(nn.Module):
    """torchvision's ASPP: 1x1, three atrous 3x3 (rates 12/24/36), image pooling, 1x1 projection."""

    def __init__(self, cin, rates=(12, 24, 36), cout=256):
        super().__init__()
        mods = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))]
        mods += [ASPPConv(cin, cout, r) for r in rates]
        mods.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(mods)
        self.project = nn.Sequential(nn.Conv2d(len(mods) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([m(x) for m in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """torchvision's DeepLabHead: ASPP, 3x3 conv, BN, ReLU, 1x1 to classes (``aspp_channels`` = 256 there)."""

    def __init__(self, in_channels, num_classes, aspp_channels=256, dilation=1):
        c = aspp_channels
        super().__init__(
            ASPP(in_channels, (12, 24, 36), c),
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, 1),
        )


def conv_block(cin, cout, dilation):
    """One extra trainable block of an exit: 3x3 conv, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ExitHead(nn.Module):
    """An early exit of architecture ``arch`` on a feature of ``in_channels`` channels.

    Dilations: without RDI every 3x3 layer after the CRM uses ``base_dilation`` (the backbone's dilation at
    the exit point); with RDI the k-th 3x3 layer (extra blocks, then the head's 3x3 conv) uses
    ``base_dilation * 2**k``, k = 1, 2, ... ("doubling in each block"). So blocks=0 with RDI still differs
    from blocks=0 without: the head's own 3x3 conv is dilated, and all 64 architectures are distinct.
    """

    def __init__(self, in_channels, num_classes, arch, aspp_channels=256, base_dilation=1):
        super().__init__()
        self.arch = arch
        c = max(in_channels // CRM_FACTORS[arch.crm], 1)
        self.crm = (nn.Sequential(nn.Conv2d(in_channels, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
                    if arch.crm else nn.Identity())
        dil = [base_dilation * (2 ** (k + 1) if arch.rdi else 1) for k in range(arch.blocks + 1)]
        self.blocks = nn.Sequential(*[conv_block(c, c, dil[k]) for k in range(arch.blocks)])
        if arch.head == 0:
            self.head = FCNHead(c, num_classes, dilation=dil[-1])
        else:
            self.head = DeepLabHead(c, num_classes, aspp_channels, dilation=dil[-1])

    def forward(self, x):
        return self.head(self.blocks(self.crm(x)))


def build_final_head(kind, in_channels, num_classes, aspp_channels=256):
    if kind == "fcn":
        return FCNHead(in_channels, num_classes)
    if kind == "dlb":
        return DeepLabHead(in_channels, num_classes, aspp_channels)
    raise ValueError(kind)
