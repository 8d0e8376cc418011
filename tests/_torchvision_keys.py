"""torchvision's state-dict layouts written out from its model definitions (an independent list: torchvision
is not installed here). Keys map to shapes; () is a BatchNorm's num_batches_tracked."""


def _bn(keys, prefix, c):
    keys.update({prefix + ".weight": (c,), prefix + ".bias": (c,), prefix + ".running_mean": (c,),
                 prefix + ".running_var": (c,), prefix + ".num_batches_tracked": ()})


def resnet50_expected_keys():
    """torchvision resnet50's state-dict keys and shapes, written out from its definition (an independent list)."""
    keys = {}

    def bn(prefix, c):
        _bn(keys, prefix, c)

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(n):
            p = "layer{}.{}.".format(li, b)
            keys[p + "conv1.weight"] = (planes, cin, 1, 1)
            bn(p + "bn1", planes)
            keys[p + "conv2.weight"] = (planes, planes, 3, 3)
            bn(p + "bn2", planes)
            keys[p + "conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(p + "bn3", planes * 4)
            if b == 0:
                keys[p + "downsample.0.weight"] = (planes * 4, cin, 1, 1)
                bn(p + "downsample.1", planes * 4)
            cin = planes * 4
    keys["fc.weight"] = (1000, 2048)
    keys["fc.bias"] = (1000,)
    return keys


def fcn_head_keys(in_channels, num_classes, prefix=""):
    """torchvision.models.segmentation.fcn.FCNHead: [Conv3x3 -> C/4 (no bias), BN, ReLU, Dropout, Conv1x1]."""
    inter = in_channels // 4
    keys = {prefix + "0.weight": (inter, in_channels, 3, 3)}
    _bn(keys, prefix + "1", inter)
    keys.update({prefix + "4.weight": (num_classes, inter, 1, 1), prefix + "4.bias": (num_classes,)})
    return keys


def deeplab_head_keys(in_channels, num_classes, prefix=""):
    """torchvision.models.segmentation.deeplabv3.DeepLabHead: [ASPP(rates 12, 24, 36; 256 channels), Conv3x3
    (no bias), BN, ReLU, Conv1x1]. ASPP.convs: 1x1 branch, three ASPPConv, ASPPPooling (pool, conv, bn, relu);
    ASPP.project: [Conv1x1 5*256 -> 256, BN, ReLU, Dropout]."""
    keys = {}
    for i in range(4):
        keys[prefix + "0.convs.{}.0.weight".format(i)] = (256, in_channels) + ((1, 1) if i == 0 else (3, 3))
        _bn(keys, prefix + "0.convs.{}.1".format(i), 256)
    keys[prefix + "0.convs.4.1.weight"] = (256, in_channels, 1, 1)
    _bn(keys, prefix + "0.convs.4.2", 256)
    keys[prefix + "0.project.0.weight"] = (256, 5 * 256, 1, 1)
    _bn(keys, prefix + "0.project.1", 256)
    keys[prefix + "1.weight"] = (256, 256, 3, 3)
    _bn(keys, prefix + "2", 256)
    keys.update({prefix + "4.weight": (num_classes, 256, 1, 1), prefix + "4.bias": (num_classes,)})
    return keys


def segmentation_expected_keys(arch, num_classes, aux=True):
    """fcn_resnet50 / deeplabv3_resnet50 state dict: backbone.* (resnet50 without fc), classifier.*, and
    aux_classifier.* (FCNHead on layer3's 1024 channels) when built with aux_loss."""
    keys = {"backbone." + k: v for k, v in resnet50_expected_keys().items() if not k.startswith("fc.")}
    head = fcn_head_keys if arch == "fcn_resnet50" else deeplab_head_keys
    keys.update(head(2048, num_classes, "classifier."))
    if aux:
        keys.update(fcn_head_keys(1024, num_classes, "aux_classifier."))
    return keys
