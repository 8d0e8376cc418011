"""Regenerate the demo's shipped stage-1 checkpoint: ``make demo-checkpoint``.

Runs the project's own ``mess-edge data`` and ``mess-edge train`` with the recipe of ``mess_edge.demo``,
then copies the checkpoint here with a JSON record of the command, seed, data parameters, wall time,
machine and test metrics.
"""

import json
import os
import platform
import subprocess
import sys
import time

from mess_edge.artifacts import sha256_file, write_json_atomic
from mess_edge.demo import SHIPPED_STAGE1, STAGE1_RECIPE
from mess_edge.runtime.device import cpu_model


def main(work="runs/demo-checkpoint"):
    data = os.path.join(work, "data")
    ckpt = os.path.join(work, "stage1.pt")
    cli = [sys.executable, "-m", "mess_edge.cli"]
    subprocess.run(cli + ["data", "digitscenes", "--out", data], check=True)
    cmd = ["train", "--data", data] + STAGE1_RECIPE + ["--out", ckpt]
    t0 = time.time()
    subprocess.run(cli + cmd, check=True)
    wall = time.time() - t0
    ev = json.loads(subprocess.run(cli + ["eval", ckpt, "--data", data, "--split", "test", "--json"], check=True,
                                   stdout=subprocess.PIPE, text=True).stdout)
    _ship_without_optimizer(ckpt, SHIPPED_STAGE1)
    with open(os.path.join(data, "digitscenes.json")) as f:
        params = json.load(f)["params"]
    write_json_atomic(SHIPPED_STAGE1 + ".json", {
        "command": "mess-edge train --data <data> " + " ".join(STAGE1_RECIPE) + " --out <out>",
        "data": {"generator": "mess-edge data digitscenes", "params": params},
        "seed": 0, "train_wall_s": round(wall, 1), "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                               "python": platform.python_version()},
        "test_miou": {"final": ev["final"]["miou"], "exits": [e["miou"] for e in ev["exits"]]},
        "sha256": sha256_file(SHIPPED_STAGE1), "date": time.strftime("%Y-%m-%d")})
    print("wrote {} ({:.0f} s of training); test mIoU final {:.1f}, exits {}".format(
        SHIPPED_STAGE1, wall, ev["final"]["miou"], [round(e["miou"], 1) for e in ev["exits"]]))


def _ship_without_optimizer(src, dst, half=False):
    """Copy a checkpoint without its optimizer state (stage 2 starts its own): a third of the size. ``half``:
    floating-point tensors stored as float16 (half again; loading casts them back to the model's float32, so
    evaluate the shipped file, not its source), the tensors hash recomputed."""
    import torch

    from mess_edge.artifacts import atomic_path
    from mess_edge.train.checkpoint import tensors_sha256

    ck = torch.load(src, map_location="cpu", weights_only=True)
    ck["optimizer"] = None
    if half:
        ck["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
        ck["tensors_sha256"] = tensors_sha256(ck["state_dict"])
        ck["stored_dtype"] = "float16"
    with atomic_path(dst) as tmp:
        torch.save(ck, tmp)


if __name__ == "__main__":
    main(*sys.argv[1:])
