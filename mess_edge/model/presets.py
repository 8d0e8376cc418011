"""Preset registry: a plain dict from name to a frozen description of backbone, final head and defaults."""

import dataclasses

from mess_edge.errors import MessError


@dataclasses.dataclass(frozen=True)
class Preset:
    backbone: str            # "resnet" (dilated ResNet, bottleneck blocks), "mobilenetv2" (inverted residuals) or
    #                          "efficientnet-lite0" (inverted residuals with 5x5 depthwise stages; ImageNet weights)
    final_head: str          # "fcn" or "dlb": the original network's head, kept as the final exit
    input_hw: tuple          # default input size (height, width) in pixels
    num_classes: int         # default number of classes, background included
    n_exits: int             # default number of exit points N, the final exit included (paper: N = 6 on DRN-50)
    resnet_layers: tuple = (3, 4, 6, 3)   # bottlenecks per ResNet stage
    resnet_base: int = 64                 # ResNet stem width (64 = torchvision's ResNet-50)
    mbv2_width: float = 1.0               # MobileNetV2 width multiplier
    aspp_channels: int = 256              # DeepLabV3 head width (256 in torchvision); smaller on CPU presets
    description: str = ""


PRESETS = {
    "drn50-fcn": Preset("resnet", "fcn", (512, 512), 21, 6,
                        description="DRN-50 (dilated ResNet-50, OS8) + FCN head: the paper's DRN baseline"),
    "deeplabv3-r50": Preset("resnet", "dlb", (512, 512), 21, 6,
                            description="dilated ResNet-50 (OS8) + DeepLabV3 ASPP head: the paper's DLBV3"),
    "segmbnetv2-fcn": Preset("mobilenetv2", "fcn", (512, 512), 21, 6,
                             description="MobileNetV2 (OS8, no 1280 conv) + FCN head: the paper's segMBNetV2"),
    "efflite0-fcn": Preset("efficientnet-lite0", "fcn", (512, 512), 21, 6,
                           description="EfficientNet-Lite0 (OS8, no 1280 conv) + FCN head, for ImageNet weights"),
    "cpu-effl0": Preset("efficientnet-lite0", "fcn", (128, 128), 11, 4, aspp_channels=32,
                        description="EfficientNet-Lite0 at 128x128 on DigitScenes, from ImageNet weights"),
    "cpu-mbv2": Preset("mobilenetv2", "fcn", (128, 128), 11, 4, mbv2_width=0.5, aspp_channels=32,
                       description="width-0.5 segMBNetV2 at 128x128 for CPU demos (DigitScenes)"),
    "cpu-drn": Preset("resnet", "fcn", (128, 128), 11, 4, resnet_layers=(2, 2, 3, 2), resnet_base=16,
                      aspp_channels=32,
                      description="narrow DRN (ResNet bottlenecks, OS8, dilated late stages) for CPU benchmarks"),
    "tiny": Preset("mobilenetv2", "fcn", (64, 64), 11, 4, mbv2_width=0.25, aspp_channels=8,
                   description="tiny segMBNetV2 for tests: trains a few steps in seconds"),
}


def get_preset(name):
    try:
        return PRESETS[name]
    except KeyError:
        raise MessError("unknown preset {!r}; expected one of: {}".format(name, ", ".join(PRESETS)))
