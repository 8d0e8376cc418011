"""``mess-edge calibrate``: parse options, call ``memoise`` (memoise.py), save the memo."""

import json
import os

import click


@click.command("calibrate")
@click.argument("ckpt", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", default="cal", show_default=True, help="The held-out calibration split.")
@click.option("--max-images", type=int, default=None, help="Use only the first N images.")
@click.option("--out", default=None, type=click.Path(),
              help="memo.npz to write (atomically) [default: calibrate/<checkpoint name>/memo.npz].")
def calibrate_command(ckpt, data, split, max_images, out):
    """Memoise every head's predictions on the calibration split (for the search)."""
    from mess_edge.artifacts import check_outputs
    from mess_edge.calibrate.memoise import memoise
    from mess_edge.metrics import miou
    from mess_edge.search.memo import save_memo

    if out is None:
        out = os.path.join("calibrate", os.path.splitext(os.path.basename(ckpt))[0], "memo.npz")
    check_outputs([("--out", out)], [("CKPT", ckpt), ("--data", data)])
    memo = memoise(ckpt, data, split, max_images)
    save_memo(out, memo)
    per_head = [100 * miou(memo.confusion[h].sum(0)) for h in range(memo.n_heads + 1)]
    click.echo("wrote {}: {} images x {} heads + final; final mIoU {:.2f}, best early exit {:.2f}".format(
        out, memo.n_images, memo.n_heads, per_head[-1], max(per_head[:-1])))
    click.echo(json.dumps({"memo": out, "n_images": memo.n_images}))
