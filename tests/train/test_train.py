"""Two-stage training: losses against plain references, frozen stage 2, resume, DDP, eval, checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mess_edge.errors import MessError  # noqa: E402
from mess_edge.train import losses  # noqa: E402
from mess_edge.train.checkpoint import build_model, load_checkpoint  # noqa: E402
from mess_edge.train.trainer import TrainConfig, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(log=lambda *a: None)


def _softmax(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def test_pfd_against_pixel_loop_reference():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, 0, :3] = 255
    alpha = 0.3
    got = float(losses.exit_loss("pfd", student, teacher, labels, alpha))
    s, t, y = student.numpy(), teacher.numpy(), labels.numpy()
    ce_terms, kl_terms = [], []
    for b in range(2):
        ps, pt = _softmax(s[b]), _softmax(t[b])
        for r in range(5):
            for c in range(6):
                if y[b, r, c] == 255:
                    continue
                kl_terms.append(sum(pt[k, r, c] * np.log(pt[k, r, c] / ps[k, r, c]) for k in range(4)))
                if t[b, :, r, c].argmax() == y[b, r, c]:  # positive filter: the final exit is right here
                    ce_terms.append(-np.log(ps[y[b, r, c], r, c]))
    want = alpha * np.mean(ce_terms) + (1 - alpha) * np.mean(kl_terms)
    assert got == pytest.approx(want, rel=1e-9)
    # KL direction: KL(teacher || student), not the reverse.
    kd = float(losses.exit_loss("kd", student, teacher, labels))
    assert kd == pytest.approx(np.mean(kl_terms), rel=1e-9)
    sd = float(losses.exit_loss("selfdistill", student, teacher, labels, alpha))
    ce_all = float(torch.nn.functional.cross_entropy(student, labels, ignore_index=255))
    assert sd == pytest.approx(alpha * ce_all + (1 - alpha) * np.mean(kl_terms), rel=1e-9)


def test_positive_filter_mask():
    teacher = torch.tensor([[[[5.0, 0.0]], [[0.0, 5.0]]]])  # predicts class 0 at pixel 0, class 1 at pixel 1
    labels = torch.tensor([[[0, 0]]])
    assert losses.positive_filter(teacher, labels).tolist() == [[[0, 255]]]


def test_exit_dropout_schedules():
    assert [losses.stage1_exits(j, 3, "roundrobin") for j in range(5)] == [[0], [1], [2], [0], [1]]
    # eq. 2 as printed, 1-based batch j = step + 1 and exit i: i joins when j mod i == 0.
    assert [losses.stage1_exits(j, 3, "literal") for j in range(6)] == [[0], [0, 1], [0, 2], [0, 1], [0], [0, 1, 2]]
    assert losses.stage1_exits(4, 3, "all") == [0, 1, 2] and losses.stage1_exits(4, 3, "none") == []


def test_stage2_keeps_backbone_and_final_bit_identical(tiny_ckpts, scenes, tmp_path):
    s1, s2 = tiny_ckpts
    a = load_checkpoint(s1)["state_dict"]
    b = load_checkpoint(s2)["state_dict"]
    frozen = [k for k in a if k.startswith(("backbone.", "final_head."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)  # BN running stats included
    heads = [k for k in b if k.startswith("exits.") and "c1b1r1h1" in k and k.endswith("weight")]
    assert heads
    m2 = build_model(load_checkpoint(s2))
    assert len(m2.heads()) == 2 * len(m2.exit_points)
    assert load_checkpoint(s2)["metrics"]["backbone_passes"] == 2  # one backbone pass per batch, not per head


def test_resume_equals_uninterrupted(scenes, tmp_path):
    common = dict(data=scenes, stage=1, preset="tiny", epochs=2, batch_size=8, val_images=0, seed=5)
    full, part = str(tmp_path / "full.pt"), str(tmp_path / "part.pt")
    train(TrainConfig(out=full, max_steps=4, **common), **QUIET)
    train(TrainConfig(out=part, max_steps=2, **common), **QUIET)
    assert load_checkpoint(part)["step"] == 2
    train(TrainConfig(out=part, max_steps=4, resume=True, **common), **QUIET)
    a, b = load_checkpoint(full)["state_dict"], load_checkpoint(part)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MessError, match="trained with different lr"):
        train(TrainConfig(out=part, max_steps=6, resume=True, lr=0.1, **common), **QUIET)


def test_corrupt_and_foreign_checkpoints(tmp_path, tiny_ckpts):
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(tiny_ckpts[0], "rb").read()[:2000])
    with pytest.raises(MessError, match=r"cannot read checkpoint .*trunc\.pt .*truncated or not a mess-edge"):
        load_checkpoint(str(trunc))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(MessError, match="is not a mess-edge checkpoint"):
        load_checkpoint(str(foreign))
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "eval", str(trunc), "--data", "nowhere"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: cannot read checkpoint")


def test_half_storage_ships_and_loads_as_float32(tiny_ckpts, tmp_path):
    from mess_edge.assets.make_checkpoint import _ship_without_optimizer

    full, half = str(tmp_path / "full.pt"), str(tmp_path / "half.pt")
    _ship_without_optimizer(tiny_ckpts[1], full)
    _ship_without_optimizer(tiny_ckpts[1], half, "float16")
    ck = load_checkpoint(half)  # its recomputed tensors hash verifies
    assert ck["stored_dtype"] == "float16" and ck["optimizer"] is None
    assert {v.dtype for v in ck["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert os.path.getsize(half) < 0.65 * os.path.getsize(full)
    a, b = build_model(load_checkpoint(full)).eval(), build_model(ck).eval()
    assert {p.dtype for p in b.parameters()} == {torch.float32}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert (ya.argmax(1) == yb.argmax(1)).float().mean() > 0.99  # fp16 rounding of the weights only


def test_int8_storage_against_per_channel_reference():
    from mess_edge.train.checkpoint import INT8_SCALE, dequantize_int8, quantize_int8

    g = torch.Generator().manual_seed(3)
    sd = {"conv.weight": torch.randn(5, 3, 3, 3, generator=g) * torch.arange(1, 6).view(5, 1, 1, 1),
          "bn.weight": torch.randn(5, generator=g), "bn.num_batches_tracked": torch.tensor(7)}
    q = quantize_int8(sd)
    assert q["conv.weight"].dtype == torch.int8 and q["bn.weight"].dtype == torch.float16
    assert set(q) == set(sd) | {"conv.weight" + INT8_SCALE}
    back = dequantize_int8(q)
    assert set(back) == set(sd) and back["bn.num_batches_tracked"].item() == 7
    w = sd["conv.weight"].numpy()
    for c in range(5):  # symmetric per output channel: step max|w| / 127, error at most half a step
        step = np.abs(w[c]).max() / 127
        ref = np.round(w[c] / step) * step
        np.testing.assert_allclose(back["conv.weight"][c].numpy(), ref, rtol=1e-5, atol=1e-6)
        assert np.abs(back["conv.weight"][c].numpy() - w[c]).max() <= step / 2 + 1e-6


def test_int8_storage_ships_and_loads_as_float32(tiny_ckpts, tmp_path):
    from mess_edge.assets.make_checkpoint import _ship_without_optimizer, ship

    full, small = str(tmp_path / "full.pt"), str(tmp_path / "int8.pt")
    _ship_without_optimizer(tiny_ckpts[1], full)
    _ship_without_optimizer(tiny_ckpts[1], small, "int8")
    ck = load_checkpoint(small)  # the hash covers the stored int8 tensors; the loaded dict is float32 again
    assert ck["stored_dtype"] == "int8" and os.path.getsize(small) < 0.5 * os.path.getsize(full)
    a, b = build_model(load_checkpoint(full)).eval(), build_model(ck).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert (ya.argmax(1) == yb.argmax(1)).float().mean() > 0.97
    # ship() takes the widest storage under the limit
    mb = os.path.getsize(full) / 1e6
    assert ship(tiny_ckpts[1], str(tmp_path / "a.pt"), max_mb=mb * 1.01) is None
    assert ship(tiny_ckpts[1], str(tmp_path / "b.pt"), max_mb=mb * 0.6) == "float16"
    assert ship(tiny_ckpts[1], str(tmp_path / "c.pt"), max_mb=mb * 0.47) == "int8"


def test_eval_json_fields(tiny_ckpts, scenes):
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "eval", tiny_ckpts[1], "--data", scenes, "--json"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    res = json.loads(r.stdout)
    assert set(res["final"]) >= {"miou", "gmacs"} and 0 <= res["final"]["miou"] <= 100
    assert len(res["exits"]) == 6
    e = res["exits"][0]
    assert set(e) >= {"exit", "arch", "miou", "gmacs"} and set(e["arch"]) == {"crm", "blocks", "rdi", "head"}
    assert res["n_images"] == 16 and res["final"]["gmacs"] > e["gmacs"] > 0


@pytest.mark.slow
def test_ddp_two_cpu_processes(scenes, tmp_path):
    out = str(tmp_path / "ddp.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "mess_edge.cli", "train", "--preset", "tiny", "--data", scenes, "--stage", "1",
           "--epochs", "1", "--batch-size", "4", "--max-steps", "2", "--val-images", "0", "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(out)
    assert ck["step"] == 2 and ck["metrics"]["backbone_passes"] == 2
    assert r.stdout.count("wrote ") == 1  # rank 0 alone logs and writes


def _cli(capsys, args):
    """(exit code, stdout, stderr) of mess-edge ARGS run in this process."""
    from mess_edge.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stage2_preset_accepted_when_it_matches_refused_on_conflict(tiny_ckpts, scenes, tmp_path, capsys):
    s1 = tiny_ckpts[0]
    out = str(tmp_path / "s2.pt")
    args = ["train", "--data", scenes, "--stage", "2", "--init", s1, "--space", "c0b0r0h0", "--batch-size", "8",
            "--max-steps", "1", "--val-images", "0", "--out", out]
    code, stdout, _ = _cli(capsys, args + ["--preset", "tiny", "--exits", "4", "--input-size", "64"])
    assert code == 0 and stdout.startswith("wrote " + out)
    assert load_checkpoint(out)["model_args"]["preset"] == "tiny"
    for flag, value, has in (("--preset", "cpu-mbv2", "tiny"), ("--exits", "3", "4"), ("--input-size", "128", "64")):
        code, _, err = _cli(capsys, args + [flag, value])
        assert code == 2 and err == ("error: got {f} {v}; {s} was trained with {f} {h} and stage 2 keeps that "
                                     "network; drop {f} or pass {f} {h}\n".format(f=flag, v=value, s=s1, h=has))


def test_exits_out_of_range_is_one_line(scenes, tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--data", scenes, "--out", str(tmp_path / "x.pt")]
    for n in ("50", "1"):
        code, _, err = _cli(capsys, args + ["--exits", n])
        assert code == 2 and err == ("error: got --exits {} for preset tiny (18 backbone blocks); expected 2..17 exit "
                                     "points, the final exit included; try --exits {}\n".format(
                                         n, 17 if n == "50" else 2))
    assert not os.path.exists(str(tmp_path / "x.pt"))
