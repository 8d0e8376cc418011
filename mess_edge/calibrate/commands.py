"""``mess-edge calibrate``: parse options, call ``memoise`` (memoise.py: a checkpoint, torch) or
``memoise_engines`` (engine_memo.py: an engine folder at its precision, no torch), save the memo."""

import json
import os

import click


@click.command("calibrate")
@click.argument("ckpt", type=click.Path(), required=False)
@click.option("--engines", "engine_dir", type=click.Path(), default=None,
              help="Memoise with this engine folder's graphs at their precision (no torch) instead of CKPT.")
@click.option("--device", "device_index", type=int, default=0, show_default=True, help="--engines, TensorRT: CUDA device.")
@click.option("--data", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", default="cal", show_default=True, help="The held-out calibration split.")
@click.option("--max-images", type=int, default=None, help="Use only the first N images.")
@click.option("--out", default=None, type=click.Path(),
              help="memo.npz to write (atomically) [default: calibrate/<checkpoint name>/memo.npz].")
def calibrate_command(ckpt, engine_dir, device_index, data, split, max_images, out):
    """Memoise every head's predictions on the calibration split (for the search), from CKPT or --engines."""
    from mess_edge.artifacts import check_outputs, read_json
    from mess_edge.errors import MessError
    from mess_edge.metrics import miou
    from mess_edge.search.memo import save_memo

    if (ckpt is None) == (engine_dir is None):
        raise MessError("got {}; expected exactly one of CKPT or --engines ENGINE_DIR; try mess-edge calibrate "
                        "--engines engines/<device> --data DATA".format("both" if ckpt else "neither"))
    if out is None:
        if engine_dir is not None:
            precision = read_json(os.path.join(engine_dir, "engine.json"), "engine sidecar").get("precision")
            name = "{}-{}".format(os.path.basename(os.path.normpath(engine_dir)), precision)
        else:
            name = os.path.splitext(os.path.basename(ckpt))[0]
        out = os.path.join("calibrate", name, "memo.npz")
    check_outputs([("--out", out)], [("CKPT", ckpt), ("--engines", engine_dir), ("--data", data)])
    if engine_dir is not None:
        from mess_edge.calibrate.engine_memo import memoise_engines
        from mess_edge.runtime.ort_runner import configure_ort_threads

        configure_ort_threads()  # this process owns its ONNX Runtime use, as run does
        memo = memoise_engines(engine_dir, data, split, max_images, device_index=device_index)
    else:
        from mess_edge.calibrate.memoise import memoise

        memo = memoise(ckpt, data, split, max_images)
    save_memo(out, memo)
    per_head = [100 * miou(memo.confusion[h].sum(0)) for h in range(memo.n_heads + 1)]
    click.echo("wrote {}: {} images x {} heads + final; final mIoU {:.2f}, best early exit {:.2f}".format(
        out, memo.n_images, memo.n_heads, per_head[-1], max(per_head[:-1])))
    click.echo(json.dumps({"memo": out, "n_images": memo.n_images}))
