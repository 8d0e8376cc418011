"""``mess-edge calibrate``: prediction memoisation (sec. 5.1) over the calibration split.

Every trained head and the final exit run once over the split (one backbone pass per batch feeds them
all). Per image and head the memo keeps the confusion matrix against the ground truth and the confidence
statistics the exit policy needs for any pixel threshold (histograms of the raw and edge-enhanced top-1
confidence at the head's native resolution, computed exactly as the exported head graph computes them, and
the mean confidence for the averaging baseline). From then on the accuracy of any configuration is a sum of
stored confusion matrices, never a forward pass.
"""

import json
import os

import click
import numpy as np


def memoise(ckpt_path, data, split="cal", max_images=None, batch_size=16, progress=True):
    """Run the checkpoint's heads over a split and return a ``mess_edge.search.Memo``."""
    import torch
    from torch.nn import functional as F

    from mess_edge.artifacts import sha256_file
    from mess_edge.confidence import HIST_BINS, confidence_histograms, hist_bin_edges
    from mess_edge.metrics import confusion_matrix
    from mess_edge.progress import Progress
    from mess_edge.search.memo import MEMO_FORMAT, Memo
    from mess_edge.train.checkpoint import build_model, load_checkpoint
    from mess_edge.train.data import SegmentationSet, class_names

    ckpt = load_checkpoint(ckpt_path)
    net = build_model(ckpt).eval().to(memory_format=torch.channels_last)  # 3x faster convs on the CPU
    heads = net.heads()
    ds = SegmentationSet(data, split, net.input_hw, train=False, num_classes=net.num_classes)
    n = len(ds) if not max_images else min(max_images, len(ds))
    H, C = len(heads), net.num_classes
    confusion = np.zeros((H + 1, n, C, C), np.int64)
    hist_edge = np.zeros((H + 1, n, HIST_BINS), np.int32)
    hist_raw = np.zeros((H + 1, n, HIST_BINS), np.int32)
    mean_conf = np.zeros((H + 1, n), np.float32)
    n_pixels = np.zeros((H + 1, n), np.int64)
    keys = list(heads) + ["final"]
    with torch.no_grad(), Progress(n, "calibrate {}".format(split), enabled=progress) as bar:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            items = [ds[i] for i in idx]
            x = torch.stack([a for a, _ in items]).contiguous(memory_format=torch.channels_last)
            y = torch.stack([b for _, b in items]).numpy()
            outs = net.forward_heads(x, heads)
            for h, key in enumerate(keys):
                logits = outs[key]
                pred = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
                pred = pred.numpy()
                native = logits.numpy().astype(np.float32)
                he, hr, mc = confidence_histograms(native)
                hist_edge[h, idx], hist_raw[h, idx], mean_conf[h, idx] = he, hr, mc
                n_pixels[h, idx] = native.shape[-2] * native.shape[-1]
                for j, i in enumerate(idx):
                    confusion[h, i] = confusion_matrix(pred[j], y[j], C)
            bar.update(len(idx))
    meta = {"format": MEMO_FORMAT, "checkpoint": os.path.abspath(ckpt_path),
            "checkpoint_sha256": sha256_file(ckpt_path), "num_classes": C,
            "classes": class_names(data, C), "input_hw": list(net.input_hw),
            "exit_points": [e.to_dict() for e in net.exit_points], "split": split, "n_images": n,
            "data": os.path.abspath(data), "stride_per_exit": [e.stride for e in net.exit_points],
            "image_ids": ds.voc.ids[:n]}
    return Memo(confusion=confusion, hist_edge=hist_edge, hist_raw=hist_raw, hist_bins=hist_bin_edges(),
                mean_conf=mean_conf, n_pixels=n_pixels, head_exit=np.array([k for k, _ in heads], np.int64),
                head_arch=np.array([[a.crm, a.blocks, a.rdi, a.head] for _, a in heads], np.int64).reshape(H, 4),
                meta=meta)


@click.command("calibrate")
@click.argument("ckpt", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", default="cal", show_default=True, help="The held-out calibration split.")
@click.option("--max-images", type=int, default=None, help="Use only the first N images.")
@click.option("--out", required=True, type=click.Path(), help="memo.npz to write (atomically).")
def calibrate_command(ckpt, data, split, max_images, out):
    """Memoise every head's predictions on the calibration split (for the search)."""
    from mess_edge.metrics import miou
    from mess_edge.search.memo import save_memo

    memo = memoise(ckpt, data, split, max_images)
    save_memo(out, memo)
    per_head = [100 * miou(memo.confusion[h].sum(0)) for h in range(memo.n_heads + 1)]
    click.echo("wrote {}: {} images x {} heads + final; final mIoU {:.2f}, best early exit {:.2f}".format(
        out, memo.n_images, memo.n_heads, per_head[-1], max(per_head[:-1])))
    click.echo(json.dumps({"memo": out, "n_images": memo.n_images}))
