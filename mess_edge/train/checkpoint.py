"""Checkpoints: everything needed to rebuild the model from the file alone (nanoGPT's ``model_args``).

A checkpoint is a dict of plain containers and tensors, so it loads with ``weights_only=True``:
``format``, ``model_args`` (MultiExitNet's constructor arguments: preset, classes, input size, exit blocks,
trained architectures), ``state_dict``, ``stage``, ``train_config``, ``step``, ``epoch``, ``metrics``,
``optimizer`` and ``parent_sha256`` (of the file a stage-2 one started from: a stage-1 checkpoint or a
torchvision segmentation state dict).
Written atomically: a crash mid-write leaves the previous file.
"""

import os

import torch

from mess_edge.artifacts import atomic_path, write_json_atomic
from mess_edge.errors import MessError

FORMAT = "mess-edge-checkpoint/1"


def save_checkpoint(path, model, stage, train_config, step, epoch, metrics, optimizer=None, parent_sha256=None):
    ckpt = {
        "format": FORMAT,
        "model_args": model.model_args,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stage": int(stage),
        "train_config": dict(train_config),
        "step": int(step),
        "epoch": int(epoch),
        "metrics": metrics,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "parent_sha256": parent_sha256,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    # The resolved configuration beside the checkpoint, for humans and scripts.
    write_json_atomic(os.fspath(path) + ".json", {
        "format": FORMAT, "model_args": ckpt["model_args"], "stage": stage, "train_config": train_config,
        "step": step, "epoch": epoch, "metrics": metrics, "parent_sha256": parent_sha256})


def load_checkpoint(path):
    """Load and validate a checkpoint dict; a missing, truncated or foreign file raises MessError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MessError("checkpoint not found: {}".format(path))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors come in many types
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MessError("cannot read checkpoint {} ({}); it is truncated or not a mess-edge checkpoint: "
                        "retrain or copy it again".format(path, first))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MessError("{} is not a mess-edge checkpoint (format {!r}); expected {!r} as written by "
                        "`mess-edge train`".format(path, ckpt.get("format") if isinstance(ckpt, dict) else
                                                   type(ckpt).__name__, FORMAT))
    for key in ("model_args", "state_dict", "stage", "train_config", "step"):
        if key not in ckpt:
            raise MessError("checkpoint {} lacks {!r}; it was not written by this version".format(path, key))
    return ckpt


def build_model(ckpt):
    """Rebuild the MultiExitNet of a checkpoint dict and load its weights (strict)."""
    from mess_edge.model.multiexit import MultiExitNet

    args = dict(ckpt["model_args"])
    model = MultiExitNet(args.pop("preset"), **args)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise MessError("checkpoint weights do not fit its own model_args: {}".format(str(e).splitlines()[0]))
    return model

