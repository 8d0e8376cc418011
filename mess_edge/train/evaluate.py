"""Evaluation of a checkpoint's heads, and of a searched instance on a held-out split."""

from mess_edge.errors import MessError
from mess_edge.naming import exit_label, histogram_text


def evaluate_checkpoint(ckpt_path, data, split="test", max_images=None):
    """{"final": {"miou", "gmacs"}, "exits": [{"exit", "arch", "name", "miou", "gmacs"}], ...} (mIoU in %)."""
    import torch

    from mess_edge.model.multiexit import cost_profile
    from mess_edge.train.checkpoint import build_model, load_checkpoint
    from mess_edge.train.trainer import validate

    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    val = validate(model.to(device), data, split, max_images, device, show_progress=True)
    prof = cost_profile(model.preset_name, model.num_classes, model.input_hw,
                        archs=sorted({a for _, a in model.heads()}), n_exits=len(model.exit_points) + 1)
    gm = {(a["exit"], a["name"]): a["gmacs"] for a in prof["exit_archs"]}
    cum = {e["index"]: e["cum_gmacs"] for e in prof["exit_points"]}
    for e in val["exits"]:
        e["gmacs"] = cum[e["exit"]] + gm[(e["exit"], e["name"])]  # input to this exit's output
        e["head_gmacs"] = gm[(e["exit"], e["name"])]
    return {"checkpoint": ckpt_path, "split": split, "n_images": val["n_images"], "preset": model.preset_name,
            "stage": ckpt["stage"], "final": {"miou": val["final"], "gmacs": prof["total_gmacs"]},
            "exits": val["exits"]}


def format_eval(res):
    lines = ["{} on {} ({} images), mIoU %, GMACs from input to exit".format(
        res.get("checkpoint", ""), res["split"], res["n_images"])]
    if "instance" in res:
        lines.append("instance {}: test mIoU {:.2f} (calibration {:.2f}); expected cost {:.4g} {}; exits taken {}"
                     .format(res["instance"], res["miou"], res["calibration_miou"], res["expected_cost"],
                             res["cost_unit"], histogram_text(res["exit_histogram"])))
        return "\n".join(lines)
    lines.append("exit  arch       mIoU    GMACs")
    for e in res["exits"]:
        lines.append("{:<4}  {}  {:6.2f}  {:7.4f}".format(exit_label(e["exit"]), e["name"], e["miou"], e["gmacs"]))
    lines.append("final            {:6.2f}  {:7.4f}".format(res["final"]["miou"], res["final"]["gmacs"]))
    return "\n".join(lines)


def evaluate_instance(ckpt_path, instance_path, data, split="test", max_images=None):
    """Test-split mIoU and expected cost of a searched instance: memoise the split, then simulate the policy."""
    from mess_edge.calibrate.memoise import memoise
    from mess_edge.run.chain import load_instance
    from mess_edge.search import simulate

    inst = load_instance(instance_path)
    memo = memoise(ckpt_path, data, split, max_images=max_images, desc="eval {} (instance)".format(split))
    if inst.get("checkpoint_sha256") and inst["checkpoint_sha256"] != memo.meta["checkpoint_sha256"]:
        raise MessError("instance {} was searched for another checkpoint than {}".format(instance_path, ckpt_path))
    res = simulate(memo, inst)
    res.update({"instance": instance_path, "split": split, "n_images": memo.n_images,
                "calibration_miou": inst.get("calibration_miou"), "cost_unit": inst.get("cost_unit")})
    return res
