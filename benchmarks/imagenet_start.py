"""What an ImageNet start is worth (issue 13 item 2, the paper's premise): cpu-effl0 stage 1, same recipe and seed,
from the ImageNet-1k EfficientNet-Lite0 weights (``--pretrained efficientnet-lite0``) and from random weights.

Both are trained with ``mess-edge train --stage 1`` (5 epochs, 2,000 DigitScenes images, batch 16, seed 0) and
evaluated on the 500 test images: test mIoU of the final exit and of each vanilla FCN exit, and the training
seconds from each checkpoint's own metrics. Checkpoints under runs/imagenet_start/<start>/stage1.pt are reused
(the ImageNet one is benchmarks/models/cpu-effl0-e8's stage 1).

    python benchmarks/imagenet_start.py            # about 25 minutes on 2 cores when nothing is reused

Results: benchmarks/results/imagenet_start.{json,md}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, cli, save  # noqa: E402

RECIPE = ["--preset", "cpu-effl0", "--stage", "1", "--epochs", "5", "--batch-size", "16", "--seed", "0",
          "--val-images", "100"]
STARTS = (("imagenet", ["--pretrained", "efficientnet-lite0"]), ("scratch", []))


def main():
    import torch

    data = os.path.join(ROOT, "runs", "ds128")
    if not os.path.isdir(data):
        cli("data", "digitscenes", "--out", data)
    rows = {}
    for start, extra in STARTS:
        ckpt = os.path.join(ROOT, "runs", "imagenet_start", start, "stage1.pt")
        if not os.path.isfile(ckpt):
            os.makedirs(os.path.dirname(ckpt), exist_ok=True)
            cli("train", "--data", data, *(RECIPE + extra), "--out", ckpt, capture=False)
        ev = json.loads(cli("eval", ckpt, "--data", data, "--split", "test", "--json", capture=True))
        metrics = torch.load(ckpt, map_location="cpu", weights_only=True)["metrics"]
        rows[start] = {"final": ev["final"]["miou"], "exits": [e["miou"] for e in ev["exits"]],
                       "train_s": metrics.get("wall_s"), "images_per_s": metrics.get("images_per_s"),
                       "command": "mess-edge train --data <data> " + " ".join(RECIPE + extra) + " --out stage1.pt"}
    n_exits = len(rows["imagenet"]["exits"])
    head = ["start"] + ["E{}".format(k + 1) for k in range(n_exits)] + ["final", "train s"]
    md = ["# ImageNet start vs random start (cpu-effl0, stage 1)", "",
          "Same recipe and seed: 5 epochs of stage 1 (exit-aware, vanilla FCN exits) on 2,000 DigitScenes 128x128 "
          "images; test mIoU % on 500 test images.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for start, r in rows.items():
        md.append("| {} | {} | {:.2f} | {:.0f} |".format(start, " | ".join("{:.2f}".format(m) for m in r["exits"]),
                                                        r["final"], r["train_s"] or 0))
    gain = [a - b for a, b in zip(rows["imagenet"]["exits"] + [rows["imagenet"]["final"]],
                                  rows["scratch"]["exits"] + [rows["scratch"]["final"]])]
    md.append("| ImageNet - random (pp) | " + " | ".join("{:+.2f}".format(g) for g in gain) + " | |")
    md += ["", "Commands: " + "; ".join("`{}`".format(r["command"]) for r in rows.values())]
    save("imagenet_start", {"rows": rows, "gain_pp": gain}, "\n".join(md))


if __name__ == "__main__":
    main()
