"""Checkpoints: everything needed to rebuild the model from the file alone (nanoGPT's ``model_args``).

A checkpoint is a dict of plain containers and tensors, so it loads with ``weights_only=True``:
``format``, ``model_args`` (MultiExitNet's constructor arguments: preset, classes, input size, exit blocks,
trained architectures), ``state_dict``, ``stage``, ``train_config``, ``step``, ``epoch``, ``metrics``,
``optimizer``, ``parent_sha256`` (of the file a stage-2 one started from: a stage-1 checkpoint or a
torchvision segmentation state dict) and ``tensors_sha256``.
Written atomically: a crash mid-write leaves the previous file.

``tensors_sha256`` is a content hash of every tensor of ``state_dict`` (name, dtype, shape, bytes): torch does not
check the zip CRC of tensor data, so a flipped bit would otherwise load silently and give a garbage mIoU or a
garbage export. Every reader (``load_checkpoint``) verifies it. Checkpoints written before the hash existed are
refused, with one exception: the stage-1 checkpoint shipped in mess_edge/assets, accepted when the sha256 of the
whole file equals the one its .json records (a stronger check than the tensor hash: every byte is covered).
"""

import hashlib
import json
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
    ckpt["tensors_sha256"] = tensors_sha256(ckpt["state_dict"])
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
    _verify_tensors(path, ckpt)
    if ckpt.get("stored_dtype") == "int8":
        ckpt["state_dict"] = dequantize_int8(ckpt["state_dict"])
    return ckpt


INT8_SCALE = ".int8_scale"  # state-dict suffix of an int8-stored tensor's per-output-channel scales


def quantize_int8(state_dict):
    """Weight-only storage of a state dict: every floating tensor of >= 2 dims as int8 with one float32 scale per
    output channel (symmetric, max |w| / 127), stored as NAME + INT8_SCALE; other floating tensors as float16.
    For shipping a checkpoint under a size limit; ``dequantize_int8`` undoes it (lossy: evaluate the stored file)."""
    out = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            out[k] = v
        elif v.dim() >= 2:
            scale = v.detach().abs().amax(dim=tuple(range(1, v.dim())), keepdim=True).float().clamp_min(1e-12) / 127
            out[k] = torch.round(v.float() / scale).clamp(-127, 127).to(torch.int8)
            out[k + INT8_SCALE] = scale
        else:
            out[k] = v.half()
    return out


def dequantize_int8(state_dict):
    """The float32 state dict of ``quantize_int8``'s output."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = state_dict.get(k + INT8_SCALE)
        out[k] = v.float() * scale if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


def tensors_sha256(state_dict):
    """Hex sha256 over a state dict's tensors in name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update("{}|{}|{}|".format(name, t.dtype, tuple(t.shape)).encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _verify_tensors(path, ckpt):
    """MessError unless the tensors hash to the recorded ``tensors_sha256`` (or the file is the shipped asset)."""
    want = ckpt.get("tensors_sha256")
    if want is None:
        if _is_shipped_asset(path):
            return
        raise MessError("checkpoint {} has no tensors_sha256 (written before mess-edge checked its tensors), so a "
                        "corrupted tensor could not be detected; expected a checkpoint from this version; try "
                        "retraining it, or, if you trust the file, `python -m mess_edge.train.checkpoint {}` to "
                        "add the hash".format(path, path))
    got = tensors_sha256(ckpt["state_dict"])
    if got != want:
        raise MessError("checkpoint {} is corrupt: its tensors hash to {} but it records tensors_sha256 {}; "
                        "expected equal; try copying it again or retraining".format(path, got[:16], want[:16]))


def _is_shipped_asset(path):
    """Whether ``path`` is byte for byte the stage-1 checkpoint shipped in mess_edge/assets (its .json's sha256)."""
    from mess_edge.artifacts import sha256_file

    record = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "cpu-mbv2-stage1.pt.json")
    try:
        with open(record, encoding="utf-8") as f:
            shipped = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError):
        return False
    return os.path.getsize(path) == os.path.getsize(record[:-5]) and sha256_file(path) == shipped


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



def add_tensors_sha256(path):
    """Add the tensor hash to a checkpoint written before it existed (the user vouches for its tensors)."""
    ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MessError("{} is not a mess-edge checkpoint".format(path))
    ckpt["tensors_sha256"] = tensors_sha256(ckpt["state_dict"])
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        add_tensors_sha256(p)
        print("added tensors_sha256 to {}".format(p))
