"""Regenerate a demo model's shipped stage-1 checkpoint: ``make demo-checkpoint [DEMO_MODEL=cpu-effl0|cpu-mbv2]``.

Runs the project's own ``mess-edge data`` and ``mess-edge train`` with the model's recipe in
``mess_edge.demo.DEMO_MODELS``, then copies the checkpoint here (without optimizer state; fp16 storage when it
would be over 10 MB) with a JSON record of the command, seed, data parameters, training time, machine and test
metrics of the shipped file. A stage-1 checkpoint already in the work folder is reused.
"""

import json
import os
import platform
import subprocess
import sys
import time

from mess_edge.artifacts import sha256_file, write_json_atomic
from mess_edge.demo import DEMO_MODELS
from mess_edge.runtime.device import cpu_model

MAX_MB = 10


def main(model="cpu-effl0", work=None):
    shipped, recipe, _ = DEMO_MODELS[model]
    work = work or os.path.join("runs", "demo-checkpoint", model)
    data = os.path.join(work, "data")
    ckpt = os.path.join(work, "stage1.pt")
    cli = [sys.executable, "-m", "mess_edge.cli"]
    if not os.path.isdir(data):
        subprocess.run(cli + ["data", "digitscenes", "--out", data], check=True)
    t0 = time.time()
    if not os.path.isfile(ckpt):
        subprocess.run(cli + ["train", "--data", data] + recipe + ["--out", ckpt], check=True)
    wall = trained_seconds(ckpt, time.time() - t0)
    stored = ship(ckpt, shipped)
    ev = json.loads(subprocess.run(cli + ["eval", shipped, "--data", data, "--split", "test", "--json"], check=True,
                                   stdout=subprocess.PIPE, text=True).stdout)
    with open(os.path.join(data, "digitscenes.json")) as f:
        params = json.load(f)["params"]
    write_json_atomic(shipped + ".json", {
        "command": "mess-edge train --data <data> " + " ".join(recipe) + " --out <out>",
        "data": {"generator": "mess-edge data digitscenes", "params": params},
        "seed": 0, "train_wall_s": wall, "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                               "python": platform.python_version()},
        "stored_dtype": stored or "float32",
        "test_miou": {"final": ev["final"]["miou"], "exits": [e["miou"] for e in ev["exits"]]},
        "sha256": sha256_file(shipped), "date": time.strftime("%Y-%m-%d")})
    print("wrote {} ({:.0f} s of training); test mIoU final {:.1f}, exits {}".format(
        shipped, wall, ev["final"]["miou"], [round(e["miou"], 1) for e in ev["exits"]]))


def trained_seconds(ckpt, elapsed):
    """Training seconds a checkpoint records (metrics.wall_s: right also when it was trained before this run), else
    ``elapsed``; rounded to 0.1 s."""
    import torch

    wall = (torch.load(ckpt, map_location="cpu", weights_only=True).get("metrics") or {}).get("wall_s")
    return round(float(wall if wall is not None else elapsed), 1)


def ship(src, dst, max_mb=MAX_MB):
    """_ship_without_optimizer in the widest storage that fits ``max_mb``: float32, else float16, else int8
    weights (per-channel scales; cpu-drn-e8's 7.1 M parameters: 28.7 / 14.4 / 7.3 MB). Returns the stored dtype
    when it is not float32 (lossy: evaluate the shipped file, not its source), else None."""
    for dtype in ("float32", "float16", "int8"):
        _ship_without_optimizer(src, dst, dtype)
        if os.path.getsize(dst) / 1e6 <= max_mb:
            break
    return None if dtype == "float32" else dtype


def _ship_without_optimizer(src, dst, dtype="float32"):
    """Copy a checkpoint without its optimizer state (stage 2 starts its own): a third of the size. ``dtype``
    float16: floating-point tensors stored as float16 (half again; loading casts them back to the model's
    float32); int8: mess_edge.train.checkpoint.quantize_int8 (a quarter; load_checkpoint dequantises). The
    tensors hash is recomputed over what is stored."""
    import torch

    from mess_edge.artifacts import atomic_path
    from mess_edge.train.checkpoint import quantize_int8, tensors_sha256

    ck = torch.load(src, map_location="cpu", weights_only=True)
    ck["optimizer"] = None
    if dtype == "float16":
        ck["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    elif dtype == "int8":
        ck["state_dict"] = quantize_int8(ck["state_dict"])
    if dtype != "float32":
        ck["tensors_sha256"] = tensors_sha256(ck["state_dict"])
        ck["stored_dtype"] = dtype
    with atomic_path(dst) as tmp:
        torch.save(ck, tmp)


if __name__ == "__main__":
    main(*sys.argv[1:])
