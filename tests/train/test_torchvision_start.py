"""Starting from a user's torchvision segmentation checkpoint (fcn_resnet50, deeplabv3_resnet50).

torchvision is not installed: the "user's" state dicts are made from seeded models of this project, renamed
to torchvision's keys, and their layout is checked against torchvision's definitions written out by hand
(tests/_torchvision_keys.py), so a drift in either naming fails here.
"""

import hashlib

import pytest

torch = pytest.importorskip("torch")

from _torchvision_keys import deeplab_head_keys, fcn_head_keys, segmentation_expected_keys  # noqa: E402
from mess_edge.cli import main  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402
from mess_edge.model import torchvision_seg  # noqa: E402
from mess_edge.model.heads import DeepLabHead, FCNHead  # noqa: E402
from mess_edge.model.multiexit import MultiExitNet  # noqa: E402
from mess_edge.train.checkpoint import build_model, load_checkpoint  # noqa: E402
from mess_edge.train.start import stage1_model  # noqa: E402
from mess_edge.train.trainer import TrainConfig, train  # noqa: E402

CLASSES = 11  # the DigitScenes fixture's
HW = (64, 64)
ARCHS = {"fcn_resnet50": "drn50-fcn", "deeplabv3_resnet50": "deeplabv3-r50"}


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _user_state_dict(arch, seed):
    """(state dict in torchvision's layout, the seeded model it came from). BatchNorm statistics are drawn
    too, so loading them is checked, not just the default 0 / 1."""
    torch.manual_seed(seed)
    source = MultiExitNet(ARCHS[arch], CLASSES, HW).eval()
    g = torch.Generator().manual_seed(seed)
    for name, buf in source.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
        elif name.endswith("num_batches_tracked"):
            buf.fill_(7)
    sd = {}
    for k, v in source.state_dict().items():
        if k.startswith("backbone."):
            sd[k] = v.clone()
        elif k.startswith("final_head."):
            sd["classifier." + k[len("final_head."):]] = v.clone()
    for k, v in FCNHead(1024, CLASSES).state_dict().items():
        sd["aux_classifier." + k] = v
    return sd, source


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """{arch: (path, state dict, source model)} for both torchvision architectures."""
    d = tmp_path_factory.mktemp("torchvision")
    out = {}
    for seed, arch in enumerate(ARCHS):
        sd, source = _user_state_dict(arch, seed + 10)
        assert _shapes(sd) == segmentation_expected_keys(arch, CLASSES)  # torchvision's exact layout
        path = str(d / (arch + ".pth"))
        torch.save(sd, path)
        out[arch] = (path, sd, source)
    return out


def test_final_heads_have_torchvision_keys_and_shapes():
    with torch.device("meta"):
        assert _shapes(FCNHead(2048, 21).state_dict()) == fcn_head_keys(2048, 21)
        assert _shapes(DeepLabHead(2048, 21).state_dict()) == deeplab_head_keys(2048, 21)


def test_fcn_checkpoint_is_backbone_and_final_exit_bit_for_bit(user_files, scenes, tmp_path):
    path, sd, source = user_files["fcn_resnet50"]
    said = []
    torch.manual_seed(99)  # another seed than the source's: only the loading can make them equal
    model = stage1_model(TrainConfig(data=scenes, out=str(tmp_path / "x.pt"), pretrained=path, input_size=64),
                          CLASSES, said.append).eval()
    assert said == ["{} is torchvision fcn_resnet50 (11 classes): backbone + final exit of preset drn50-fcn; "
                    "its aux_classifier (8 keys) is ignored".format(path)]
    assert model.preset_name == "drn50-fcn" and model.num_classes == CLASSES
    assert len(model.heads()) == len(model.exit_points) == 5  # vanilla exits, their own initialisation
    loaded = torchvision_seg.torchvision_keys(model)
    assert set(loaded) == set(sd) - {k for k in sd if k.startswith("aux_classifier.")}
    assert all(torch.equal(loaded[k], sd[k]) for k in loaded)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(x), source(x))  # the final exit is the user's network, bit for bit


def test_class_count_comes_from_the_checkpoint(user_files):
    _, sd, _ = user_files["deeplabv3_resnet50"]
    five = dict(sd)
    five["classifier.4.weight"] = torch.randn(5, 256, 1, 1)
    five["classifier.4.bias"] = torch.randn(5)
    seg = torchvision_seg.inspect_segmentation(five, "five.pth")
    assert (seg.arch, seg.preset, seg.num_classes, seg.n_aux_keys) == ("deeplabv3_resnet50", "deeplabv3-r50", 5, 8)
    model = torchvision_seg.load_segmentation(MultiExitNet(seg.preset, seg.num_classes, HW), five, "five.pth")
    assert model.num_classes == 5 and torch.equal(model.final_head[4].weight, five["classifier.4.weight"])
    assert len(model.exits) == 0  # aux_classifier (still 11 classes) is ignored, not loaded anywhere


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_bad_keys_and_shapes_are_one_line(user_files):
    _, sd, _ = user_files["fcn_resnet50"]
    with torch.device("meta"):
        model = MultiExitNet("drn50-fcn", CLASSES, HW)
    missing = {k: v for k, v in sd.items() if k != "backbone.layer4.2.bn3.running_var"}
    with pytest.raises(MessError) as e:
        torchvision_seg.load_segmentation(model, missing, "user.pth")
    assert _one_line(e) == ("user.pth does not match preset drn50-fcn's backbone + final head (11 classes): 1 missing "
                            "keys (e.g. backbone.layer4.2.bn3.running_var), 0 unexpected (e.g. -); is it the right "
                            "architecture?")
    extra = dict(sd, **{"backbone.layer5.0.conv1.weight": torch.zeros(1), "classifier.5.weight": torch.zeros(1)})
    with pytest.raises(MessError) as e:
        torchvision_seg.load_segmentation(model, extra, "user.pth")
    assert "0 missing keys (e.g. -), 2 unexpected (e.g. backbone.layer5.0.conv1.weight, classifier.5.weight)" in \
        _one_line(e)
    narrow = dict(sd, **{"backbone.layer1.0.conv1.weight": torch.zeros(32, 64, 1, 1)})
    with pytest.raises(MessError) as e:
        torchvision_seg.load_segmentation(model, narrow, "user.pth")
    assert _one_line(e) == ("user.pth: key backbone.layer1.0.conv1.weight has shape (32, 64, 1, 1); expected "
                            "(64, 64, 1, 1) (a different width, depth or class count?)")
    with pytest.raises(MessError) as e:
        torchvision_seg.inspect_segmentation({"backbone.conv1.weight": torch.zeros(1),
                                              "classifier.weight": torch.zeros(1)}, "lraspp.pth")
    assert _one_line(e).startswith("lraspp.pth: classifier keys classifier.weight are neither torchvision's "
                                   "FCNHead nor its DeepLabHead")
    seg = torchvision_seg.inspect_segmentation(sd, "user.pth")
    with pytest.raises(MessError) as e:
        torchvision_seg.check_preset(seg, "cpu-drn")
    assert _one_line(e) == ("got --preset cpu-drn; user.pth is torchvision fcn_resnet50, which is preset drn50-fcn; "
                            "drop --preset or pass --preset drn50-fcn")
    assert torchvision_seg.check_preset(seg, "drn50-fcn") == torchvision_seg.check_preset(seg, None) == "drn50-fcn"


def _cli_error(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_cli_refuses_in_one_line(scenes, tmp_path, capsys):
    # Small files: every check below fires before a ResNet-50 is built.
    other = tmp_path / "voc5.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "classifier.0.weight": torch.zeros(512, 2048, 3, 3),
                "classifier.4.weight": torch.zeros(5, 512, 1, 1)}, other)
    out = str(tmp_path / "s.pt")
    base = ["train", "--data", scenes, "--out", out, "--input-size", "64"]
    assert _cli_error(capsys, base + ["--pretrained", str(other)]) == (
        "error: --init/--pretrained {} was trained for 5 classes; got a dataset with 11; expected the same "
        "classes (relabel the data or start from an ImageNet backbone)".format(other))
    assert _cli_error(capsys, base + ["--stage", "2", "--init", str(other), "--preset", "segmbnetv2-fcn"]) == (
        "error: got --preset segmbnetv2-fcn; {} is torchvision fcn_resnet50, which is preset drn50-fcn; drop "
        "--preset or pass --preset drn50-fcn".format(other))
    assert _cli_error(capsys, base + ["--stage", "2", "--pretrained", str(other)]) == (
        "error: got --pretrained with --stage 2; expected --init FILE (the stage-1 checkpoint, or a torchvision "
        "segmentation state dict for the Frozen baseline)")
    assert _cli_error(capsys, base + ["--init", str(other)]).startswith("error: got --init with --stage 1; ")
    junk = tmp_path / "junk.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, junk)  # neither a mess-edge checkpoint nor a segmentation one
    assert _cli_error(capsys, base + ["--stage", "2", "--init", str(junk)]).startswith(
        "error: {} is not a mess-edge checkpoint".format(junk))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_frozen_stage2_trains_on_the_torchvision_network(user_files, scenes, tmp_path):
    # Stage 1 from such a file differs from any stage 1 only in stage1_model (tested above); stage 2 has its own
    # start, trained here for one step.
    # The paper's Frozen baseline: stage 2 straight on the user's network (trained with its final exit only).
    path, sd, source = user_files["deeplabv3_resnet50"]
    s2 = str(tmp_path / "s2.pt")
    train(TrainConfig(data=scenes, out=s2, stage=2, init=path, preset="deeplabv3-r50", input_size=64,
                      space="c0b0r0h0", loss="ce", batch_size=2, max_steps=1, val_images=0), log=lambda *a: None)
    ck = load_checkpoint(s2)
    assert ck["parent_sha256"] == _sha(path)
    model = build_model(ck).eval()
    assert model.preset_name == "deeplabv3-r50" and len(model.heads()) == 5
    kept = torchvision_seg.torchvision_keys(model)
    assert all(torch.equal(kept[k], sd[k]) for k in kept)  # frozen: weights and BN statistics untouched
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
