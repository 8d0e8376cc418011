"""Train the benchmark models committed under benchmarks/models/ (issue 13: anyone can rerun the figures).

Each model is trained by the project's own ``mess-edge data`` and ``mess-edge train`` with a fixed recipe and
seed, then copied to ``benchmarks/models/<name>/stage2.pt`` without its optimizer state, with ``model.json``
beside it: the commands, seed, data parameters, wall time, machine and the test mIoU per exit.

    python benchmarks/make_models.py                 # every model in MODELS
    python benchmarks/make_models.py cpu-mbv2-e8     # one of them

The benchmarks (``early_exit.py --model NAME``) start from these checkpoints, so their figures need no
training: calibrate, export, build and profile take a minute or two per model.
"""

import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT  # noqa: E402

MODELS_DIR = os.path.join(ROOT, "benchmarks", "models")
DATA = os.path.join(ROOT, "runs", "ds128")
SHIPPED_STAGE1 = os.path.join(ROOT, "mess_edge", "assets", "cpu-mbv2-stage1.pt")
MAX_COMMIT_MB = 10  # cpu-drn-e8 (28.7 MB: 24 heads on 512-channel features) stays out of git; its model.json is in

# name -> (stage-1 recipe, or None for the demo's shipped stage-1 checkpoint; stage-2 recipe)
MODELS = {
    "cpu-mbv2-e8": (None, ["--space", "small", "--epochs", "8", "--loss-stride", "4", "--seed", "0"]),
    "cpu-drn-e8": (["--preset", "cpu-drn", "--epochs", "10", "--batch-size", "16", "--seed", "0"],
                   ["--space", "small", "--epochs", "8", "--loss-stride", "4", "--seed", "0"]),
    # EfficientNet-Lite0 from ImageNet-1k weights (issue 13: the paper's premise); the same stage 1 from random
    # weights is benchmarks/imagenet_start.py's comparison
    "cpu-effl0-e8": (["--preset", "cpu-effl0", "--pretrained", "efficientnet-lite0", "--epochs", "5",
                      "--batch-size", "16", "--seed", "0", "--val-images", "100"],
                     ["--space", "small", "--epochs", "8", "--loss-stride", "4", "--seed", "0"]),
}


def _cli(*args, capture=False):
    cmd = [sys.executable, "-m", "mess_edge.cli"] + [str(a) for a in args]
    r = subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE if capture else None, text=True)
    return r.stdout


def make(name, work):
    from mess_edge.artifacts import sha256_file, write_json_atomic
    from mess_edge.assets.make_checkpoint import ship
    from mess_edge.runtime.device import cpu_model

    stage1_recipe, stage2_recipe = MODELS[name]
    os.makedirs(work, exist_ok=True)
    stage1, stage2 = os.path.join(work, "stage1.pt"), os.path.join(work, "stage2.pt")
    t0 = time.time()
    if stage1_recipe is None:
        stage1 = SHIPPED_STAGE1
        stage1_cmd = "the demo's shipped mess_edge/assets/cpu-mbv2-stage1.pt (its .json says how it was made)"
    else:
        stage1_cmd = "mess-edge train --data <data> --stage 1 " + " ".join(stage1_recipe) + " --out stage1.pt"
        if not os.path.isfile(stage1):
            _cli("train", "--data", DATA, "--stage", 1, *stage1_recipe, "--out", stage1)
    t1 = time.time()
    if not os.path.isfile(stage2):
        _cli("train", "--data", DATA, "--stage", 2, "--init", stage1, *stage2_recipe, "--val-images", 100,
             "--out", stage2)
    t2 = time.time()
    out_dir = os.path.join(MODELS_DIR, name)
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, "stage2.pt")
    # fp16 storage (cpu-effl0: 18 -> 9 MB), int8 weights where fp16 is still over (cpu-drn: 28.7 -> 7.3 MB):
    # the benchmark model is the shipped file, so its test mIoU is the shipped file's
    stored = ship(stage2, dst, MAX_COMMIT_MB)
    ev = json.loads(_cli("eval", dst, "--data", DATA, "--split", "test", "--json", capture=True))
    ev["checkpoint"] = "stage2.pt as shipped ({} weights)".format(stored) if stored else "stage2.pt"
    with open(os.path.join(DATA, "digitscenes.json")) as f:
        params = json.load(f)["params"]
    write_json_atomic(os.path.join(out_dir, "model.json"), {
        "name": name, "stage1": stage1_cmd,
        "stage2": "mess-edge train --data <data> --stage 2 --init stage1.pt " + " ".join(stage2_recipe)
                  + " --val-images 100 --out stage2.pt",
        "rerun": "python benchmarks/make_models.py " + name,
        "data": {"generator": "mess-edge data digitscenes --out <data>", "params": params},
        "seed": 0, "train_wall_s": {"stage1": _trained_s(stage1, t1 - t0), "stage2": _trained_s(stage2, t2 - t1)},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "test_miou": ev, "sha256": sha256_file(dst), "date": time.strftime("%Y-%m-%d")})
    print("wrote {} ({:.0f} s stage 1, {:.0f} s stage 2)".format(dst, t1 - t0, t2 - t1), flush=True)
    size_mb = os.path.getsize(dst) / 1e6
    if size_mb > MAX_COMMIT_MB:
        print("note: {} is {:.1f} MB, over the {} MB a committed binary may take: commit model.json only (and "
              "list the checkpoint in .gitignore)".format(dst, size_mb, MAX_COMMIT_MB), flush=True)


def _trained_s(ckpt, elapsed):
    """Training seconds of a checkpoint; 0 for the demo's shipped stage 1 (its .json has the time)."""
    from mess_edge.assets.make_checkpoint import trained_seconds

    return 0.0 if os.path.abspath(ckpt) == os.path.abspath(SHIPPED_STAGE1) else trained_seconds(ckpt, elapsed)


def main(names):
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip())
        return
    unknown = [n for n in names if n not in MODELS]
    if unknown:  # before any data or training is made
        sys.exit("unknown model {!r}; known: {}".format(unknown[0], ", ".join(MODELS)))
    if not os.path.isdir(DATA):
        _cli("data", "digitscenes", "--out", DATA)
    for name in names or list(MODELS):
        make(name, os.path.join(ROOT, "runs", "models", name))


if __name__ == "__main__":
    main(sys.argv[1:])
