"""A user's torchvision segmentation checkpoint as the backbone and final exit of a MultiExitNet.

torchvision's ``fcn_resnet50`` and ``deeplabv3_resnet50`` are a ResNet-50 with layer3/layer4 dilated
(``replace_stride_with_dilation=[False, True, True]``) feeding an ``FCNHead`` / ``DeepLabHead``: exactly the
backbone and final head of the ``drn50-fcn`` / ``deeplabv3-r50`` presets, key for key. Their state dicts hold

    backbone.*        -> MultiExitNet.backbone.*     (ResNet-50 without avgpool/fc)
    classifier.*      -> MultiExitNet.final_head.*   (the class count is classifier.4.weight's first dim)
    aux_classifier.*  -> ignored (an FCN head on layer3 used only as an auxiliary training loss)

Such a network was trained with its final exit only: the paper's "Frozen" baseline starts from exactly this
(stage 2 on top of it), and exit-aware fine-tuning (stage 1) can start from it too.
"""

import dataclasses

from mess_edge.errors import MessError

# classifier layout -> (torchvision builder name, preset). The DeepLabHead's first module is the ASPP.
KINDS = {"fcn": ("fcn_resnet50", "drn50-fcn"), "dlb": ("deeplabv3_resnet50", "deeplabv3-r50")}
CLASSIFIER_OUT = "classifier.4.weight"  # last 1x1 conv of both heads: [num_classes, C, 1, 1]


@dataclasses.dataclass(frozen=True)
class TorchvisionSeg:
    """What a torchvision segmentation state dict is, read from its keys alone."""

    path: str
    arch: str            # "fcn_resnet50" | "deeplabv3_resnet50"
    preset: str          # the matching preset: "drn50-fcn" | "deeplabv3-r50"
    num_classes: int     # out_channels of the classifier's last conv
    n_aux_keys: int      # aux_classifier.* entries, ignored

    def describe(self):
        aux = "; its aux_classifier ({} keys) is ignored".format(self.n_aux_keys) if self.n_aux_keys else ""
        return "{} is torchvision {} ({} classes): backbone + final exit of preset {}{}".format(
            self.path, self.arch, self.num_classes, self.preset, aux)


def is_segmentation_state_dict(sd):
    """True for torchvision segmentation-model keys (``backbone.*`` and ``classifier.*``)."""
    return any(k.startswith("backbone.") for k in sd) and any(k.startswith("classifier.") for k in sd)


def inspect_segmentation(sd, path):
    """The TorchvisionSeg of a state dict with segmentation keys; MessError (one line) when the head is neither
    torchvision's FCNHead nor its DeepLabHead."""
    kind = "dlb" if "classifier.0.convs.0.0.weight" in sd else "fcn" if "classifier.0.weight" in sd else None
    if kind is None or CLASSIFIER_OUT not in sd or sd[CLASSIFIER_OUT].dim() != 4:
        heads = sorted(k for k in sd if k.startswith("classifier."))[:3]
        raise MessError("{}: classifier keys {} are neither torchvision's FCNHead nor its DeepLabHead; expected "
                        "fcn_resnet50 or deeplabv3_resnet50 (classifier.0.weight or classifier.0.convs.0.0.weight, "
                        "and {})".format(path, ", ".join(heads) or "-", CLASSIFIER_OUT))
    arch, preset = KINDS[kind]
    n_aux = sum(1 for k in sd if k.startswith("aux_classifier."))
    return TorchvisionSeg(str(path), arch, preset, int(sd[CLASSIFIER_OUT].shape[0]), n_aux)


def read_segmentation(path, otherwise=None):
    """(state dict, TorchvisionSeg) of a torchvision segmentation file. A file without segmentation keys (an
    ImageNet backbone) gives None, or raises ``otherwise`` (a MessError) when given; so does an unreadable
    one, so a caller trying its own format first reports that format's error."""
    from mess_edge.model.backbones import read_state_dict

    try:
        sd = read_state_dict(path, "torchvision's fcn_resnet50 or deeplabv3_resnet50 format")
    except MessError:
        if otherwise is None:
            raise
        raise otherwise
    if not is_segmentation_state_dict(sd):
        if otherwise is None:
            return None
        raise otherwise
    return sd, inspect_segmentation(sd, path)


def check_preset(seg, preset):
    """The preset to build: ``seg.preset``, refusing a different explicit ``preset`` in one line."""
    if preset and preset != seg.preset:
        raise MessError("got --preset {}; {} is torchvision {}, which is preset {}; drop --preset or pass "
                        "--preset {}".format(preset, seg.path, seg.arch, seg.preset, seg.preset))
    return seg.preset


def torchvision_keys(model):
    """{torchvision key: tensor} of ``model``'s backbone and final head (final_head.* named classifier.*)."""
    own = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            own[k] = v
        elif k.startswith("final_head."):
            own["classifier." + k[len("final_head."):]] = v
    return own


def load_segmentation(model, sd, path):
    """Load the backbone and final head of ``model`` (a MultiExitNet) from torchvision segmentation weights
    ``sd``. Every key but aux_classifier.* must be one of the model's, with its shape; one MessError line
    names the first misfits, in the file's own key names. The early exits keep their initialisation.
    Returns ``model``."""
    from mess_edge.model.backbones import check_state_dict

    got = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    check_state_dict(got, torchvision_keys(model), path, "preset {}'s backbone + final head ({} classes)".format(
        model.preset_name, model.num_classes))
    renamed = {("final_head." + k[len("classifier."):] if k.startswith("classifier.") else k): v
               for k, v in got.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and not any(k.startswith(("backbone.", "final_head.")) for k in missing)
    return model
