"""The two-stage MESS training of sec. 4.3 and the baselines of Tables 5 and 6.

Stage 1 (``stage=1``): vanilla FCN heads at every exit point plus the final head, trained end to end.
  ``schedule``: ``exit-aware`` (ours: exit-dropout, eq. 2; ``exit_dropout`` roundrobin | literal),
  ``e2e`` (sum of CE over all exits), ``final-only`` (the vanilla backbone of the Frozen baseline).
Stage 2 (``stage=2``): backbone and final head frozen (weights and BN statistics); every architecture of
  the space at every exit point trained jointly. The backbone runs once per batch without gradients and
  its features feed every head. ``loss``: ``pfd`` (ours, eq. 3), ``ce``, ``kd``, ``selfdistill``.
"""

import dataclasses
import math
import os
import time
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from mess_edge.errors import MessError
from mess_edge.model.heads import ALL_ARCHS, VANILLA_FCN, ExitArch
from mess_edge.model.multiexit import MultiExitNet
from mess_edge.progress import progress
from mess_edge.train import losses
from mess_edge.train.checkpoint import load_checkpoint, save_checkpoint
from mess_edge.train.data import SegmentationSet, epoch_order
from mess_edge.train.start import start_model
from mess_edge.train.distributed import Dist

# Stage 2's "small" space: 8 of the 64 architectures, spanning each option of eq. 1 at least once, for CPU runs.
SMALL_SPACE = tuple(ExitArch.parse(n) for n in (
    "c0b0r0h0", "c1b0r0h0", "c2b0r0h0", "c1b1r0h0", "c1b1r1h0", "c2b2r1h0", "c3b1r0h1", "c2b1r1h1"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str                          # VOC-layout dataset folder
    out: str                           # checkpoint path to write
    stage: int = 1                     # 1: exit-aware pre-training; 2: frozen backbone, all exits
    preset: Optional[str] = None       # model preset; implied by --init (stage 2) and by a torchvision
                                       # segmentation checkpoint, where a different value is refused
    init: Optional[str] = None         # stage 2: the stage-1 checkpoint, or a torchvision fcn_resnet50 /
                                       # deeplabv3_resnet50 state dict (the Frozen baseline)
    pretrained: Optional[str] = None   # stage 1: torchvision ImageNet backbone weights (resnet50, mobilenet_v2)
                                       # or a torchvision segmentation state dict (backbone + final exit)
    schedule: str = "exit-aware"       # stage 1: exit-aware | e2e | final-only
    exit_dropout: str = "roundrobin"   # stage 1 exit-aware: roundrobin (sec. 4.3 text) | literal (eq. 2)
    space: str = "small"               # stage 2: full (64) | small (8) | comma-separated arch names
    loss: str = "pfd"                  # stage 2: pfd | ce | kd | selfdistill | agree | agree-easy
    alpha: float = 0.5                 # weight of the CE term in pfd / selfdistill (eq. 3)
    loss_stride: int = 1               # stage 2: losses at 1/s of the label resolution (labels sampled
                                       # nearest); s = 4 makes CPU stage 2 ~3x faster with many heads
    n_exits: Optional[int] = None      # exit points incl. the final [preset default]
    input_size: Optional[int] = None   # square training/eval size in pixels [preset default]
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3                   # AdamW peak learning rate, poly(0.9) decay to 0
    weight_decay: float = 1e-4
    workers: int = 0                   # DataLoader worker processes
    seed: int = 0
    max_steps: Optional[int] = None    # stop (and checkpoint) after this many steps in total
    val_split: str = "cal"
    val_images: int = 200              # validation images per epoch (0: skip validation)
    resume: bool = False


def parse_space(space):
    if space == "full":
        return ALL_ARCHS
    if space == "small":
        return SMALL_SPACE
    try:
        return tuple(ExitArch.parse(s.strip()) for s in space.split(",") if s.strip())
    except ValueError as e:
        raise MessError("--space {!r}: {}; expected full, small or names like c1b2r0h1,c0b0r0h0".format(space, e))


# These fields must match for --resume to continue the same run.
_RUN_IDENTITY = ("data", "stage", "preset", "init", "pretrained", "schedule", "exit_dropout", "space", "loss", "alpha",
                 "loss_stride", "n_exits", "input_size", "epochs", "batch_size", "lr", "weight_decay", "seed")


class _Stage1(torch.nn.Module):
    """Forward of stage 1 as one module (DDP wraps it): final logits plus the requested exits'."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, exits):
        feats = self.net.forward_features(x)
        outs = [self.net.forward_final_head(feats[-1])]
        outs += [self.net.forward_exit(k, VANILLA_FCN, feats[k]) for k in exits]
        return outs


class _Stage2(torch.nn.Module):
    """The trainable part of stage 2: every exit head, fed with precomputed (frozen) features."""

    def __init__(self, net):
        super().__init__()
        self.exits = net.exits  # only the heads are registered: DDP sees exactly the trainable parameters

    def forward(self, feats, heads):
        return [self.exits[MultiExitNet.exit_key(k, a)](feats[k]) for k, a in heads]


def _up(logits, hw):
    return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)


def _loader(dataset, batches, workers):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       persistent_workers=False)


def train(cfg, log=print):
    """Run one training stage; returns the final metrics dict (None on ranks > 0). Rank 0 writes ``cfg.out``."""
    dist = Dist()
    torch.manual_seed(cfg.seed)
    probe = SegmentationSet(cfg.data, "train", (8, 8), train=False)
    num_classes = probe.voc.num_classes
    model, parent_sha = start_model(cfg, num_classes, parse_space(cfg.space) if cfg.stage == 2 else None,
                                    log if dist.main else _quiet)
    # channels_last: 3x faster training of these convnets on the CPU (measured: 1.34 -> 0.43 s per
    # batch of 16 for cpu-mbv2 at 128x128); results are unchanged.
    model.to(dist.device, memory_format=torch.channels_last)
    hw = model.input_hw
    trainset = SegmentationSet(cfg.data, "train", hw, train=True, seed=cfg.seed, num_classes=num_classes)
    spe = len(trainset) // (cfg.batch_size * dist.world)
    if spe == 0:
        raise MessError("train split has {} images, fewer than one batch of {} x {} processes".format(
            len(trainset), cfg.batch_size, dist.world))
    total_steps = cfg.epochs * spe
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    if cfg.stage == 1:
        trainable = list(model.parameters())
        runner = dist.wrap(_Stage1(model))
        heads = []
    else:
        for p in list(model.backbone.parameters()) + list(model.final_head.parameters()):
            p.requires_grad_(False)
        trainable = list(model.exits.parameters())
        runner = dist.wrap(_Stage2(model))
        heads = model.heads()
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    step, metrics = 0, {}
    resolved = dataclasses.asdict(cfg)
    if cfg.resume and os.path.isfile(cfg.out):
        ckpt = load_checkpoint(cfg.out)
        old = ckpt["train_config"]
        diff = [k for k in _RUN_IDENTITY if old.get(k) != resolved.get(k)]
        if diff:
            raise MessError("--resume: {} was trained with different {}; expected the same settings "
                            "(or drop --resume to start over)".format(cfg.out, ", ".join(
                                "{}={!r} (now {!r})".format(k, old.get(k), resolved.get(k)) for k in diff)))
        model.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        step, metrics = ckpt["step"], ckpt.get("metrics") or {}
        if dist.main:
            log("resuming {} at step {}/{}".format(cfg.out, step, total_steps))

    n_early = len(model.exit_points)
    mode = {"exit-aware": cfg.exit_dropout, "e2e": "all", "final-only": "none"}.get(cfg.schedule)
    if mode is None:
        raise MessError("unknown --schedule {!r}; expected exit-aware, e2e or final-only".format(cfg.schedule))
    t_start = time.perf_counter()
    passes = int(metrics.get("backbone_passes", 0))
    while step < stop_step:
        epoch = step // spe
        trainset.set_epoch(epoch)
        order = epoch_order(len(trainset), cfg.seed, epoch, dist.rank, dist.world, cfg.batch_size)
        first = step - epoch * spe
        last = min(spe, stop_step - epoch * spe)
        batches = [order[b * cfg.batch_size:(b + 1) * cfg.batch_size] for b in range(first, last)]
        _set_train_mode(model, cfg.stage)
        seen, t0, loss_avg = 0, time.perf_counter(), None
        with progress(len(batches), "epoch {}/{}".format(epoch + 1, cfg.epochs), dist.main, unit="batches") as bar:
            for images, labels in _loader(trainset, batches, cfg.workers):
                images = images.to(dist.device, memory_format=torch.channels_last)
                labels = labels.to(dist.device)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (1 - step / float(total_steps)) ** 0.9
                # Every random draw of a step (dropout) is a function of (seed, rank, step): resumable.
                torch.manual_seed(cfg.seed * 1000003 + dist.rank * 7919 + step)
                loss = _step_loss(cfg, model, runner, images, labels, step, n_early, mode, heads)
                _check_finite(loss, step, epoch, cfg)  # before the step: the weights stay the last good ones
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                passes += 1
                step += 1
                seen += images.shape[0] * dist.world
                lv = float(loss.detach())
                loss_avg = lv if loss_avg is None else 0.9 * loss_avg + 0.1 * lv
                bar.set_postfix_str("loss {:.3f} {:.0f} img/s".format(loss_avg, seen / (time.perf_counter() - t0)),
                                    refresh=False)
                bar.update(1)
        epoch_done = step % spe == 0 or step == stop_step
        if dist.main and epoch_done:
            metrics = {"loss": loss_avg, "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                       "backbone_passes": passes, "wall_s": float(metrics.get("wall_s", 0.0)) +
                       time.perf_counter() - t_start}
            t_start = time.perf_counter()
            if cfg.val_images:
                val = validate(model, cfg.data, cfg.val_split, cfg.val_images, dist.device)
                metrics["val"] = val
                log("epoch {}/{} step {} loss {:.4f} | {} mIoU {}".format(
                    epoch + 1, cfg.epochs, step, loss_avg, cfg.val_split, format_val(val)))
            save_checkpoint(cfg.out, model, cfg.stage, resolved, step, epoch + (step % spe == 0), metrics, opt,
                            parent_sha)
    dist.barrier()
    dist.close()
    return metrics if dist.main else None


def _quiet(*_):
    pass


def _check_finite(loss, step, epoch, cfg):
    """MessError when a step's loss is NaN or infinite: training has diverged, and every later step would carry
    the NaN into the weights (and a checkpoint whose metrics say `loss nan`). The checkpoint on disk, if any,
    is the last epoch that finished with finite losses; it stays untouched."""
    value = float(loss.detach())
    if not math.isfinite(value):
        kept = ("{} (the last finished epoch) is kept: resume it with --resume".format(cfg.out)
                if os.path.isfile(cfg.out) else "no checkpoint was written")
        raise MessError("training diverged: got loss {} at step {} (epoch {}); expected a finite loss; {}; try a "
                        "lower --lr than {:g}".format(value, step + 1, epoch + 1, kept, cfg.lr))


def _set_train_mode(model, stage):
    model.train()
    if stage == 2:
        # Frozen means frozen: BatchNorm statistics of the backbone and final head stay as stage 1 left them.
        model.backbone.eval()
        model.final_head.eval()


def _step_loss(cfg, model, runner, images, labels, step, n_early, mode, heads):
    hw = labels.shape[-2:]
    if cfg.stage == 1:
        exits = losses.stage1_exits(step, n_early, mode)
        outs = runner(images, exits)
        return sum(losses.ce(_up(o, hw), labels) for o in outs)
    if cfg.loss_stride > 1:
        # Every head's loss is an upsample + softmax over the label grid: with tens of heads that, not the
        # heads, dominates a CPU step. A coarser grid (labels sampled at the cell centres) cuts it s^2-fold.
        s = cfg.loss_stride
        labels = labels[:, s // 2::s, s // 2::s]
        hw = labels.shape[-2:]
    with torch.no_grad():  # one backbone pass per batch, shared by every head
        feats = model.forward_features(images)
        teacher = _up(model.forward_final_head(feats[-1]), hw)
    outs = runner(feats, heads)
    return sum(losses.exit_loss(cfg.loss, _up(o, hw), teacher, labels, cfg.alpha) for o in outs)


@torch.no_grad()
def validate(model, data, split, max_images=None, device="cpu", batch_size=16, show_progress=False):
    """Per-exit mIoU (percent) on a split: {"final": m, "exits": [{"exit", "arch", "miou"}]}; with
    ``show_progress`` a bar (or log lines) on stderr."""
    from mess_edge.metrics import confusion_matrix, miou

    was_training = model.training
    model.eval()
    model.to(memory_format=torch.channels_last)
    ds = SegmentationSet(data, split, model.input_hw, train=False, num_classes=model.num_classes)
    n = len(ds) if not max_images else min(len(ds), max_images)
    heads = model.heads()
    confs = {key: np.zeros((model.num_classes,) * 2, np.int64) for key in heads + ["final"]}
    with progress(n, "eval {}".format(split), show_progress, unit="images") as bar:
        for start in range(0, n, batch_size):
            items = [ds[i] for i in range(start, min(n, start + batch_size))]
            x = torch.stack([a for a, _ in items]).to(device, memory_format=torch.channels_last)
            y = torch.stack([b for _, b in items]).numpy()
            outs = model.forward_heads(x, heads)
            for key, logits in outs.items():
                pred = _up(logits, y.shape[-2:]).argmax(1).cpu().numpy()
                confs[key] += confusion_matrix(pred, y, model.num_classes)
            bar.update(len(items))
    model.train(was_training)
    return {"final": 100 * miou(confs["final"]), "n_images": n,
            "exits": [{"exit": k, "arch": a.to_dict(), "name": a.name, "miou": 100 * miou(confs[(k, a)])}
                      for k, a in heads]}


def format_val(val):
    """'e0 41.2 e1 50.1 final 56.1' (best architecture per exit point when there are several)."""
    best = {}
    for e in val["exits"]:
        best[e["exit"]] = max(best.get(e["exit"], -1.0), e["miou"])
    parts = ["e{} {:.1f}".format(k, v) for k, v in sorted(best.items())]  # naming.exit_label's numbering
    return " ".join(parts + ["final {:.1f}".format(val["final"])])
