"""``mess-edge export`` (host side: torch and onnx are imported inside the command)."""

import click


@click.command()
@click.argument("ckpt", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder for the ONNX graphs and manifest.json.")
@click.option("--label-map", type=click.Choice(["matmul", "resize"]), default="matmul", show_default=True,
              help="How the final, monolithic and upsample graphs upsample logits to labels: two MatMuls with "
                   "constant interpolation matrices (faster on ONNX Runtime's CPU path) or one ONNX Resize.")
def export(ckpt, out, label_map):
    """Export per-segment and per-head ONNX graphs (opset 17) of a stage-2 checkpoint, checked against PyTorch."""
    from mess_edge.artifacts import Output, check_outputs
    from mess_edge.export.exporter import export_checkpoint

    check_outputs([Output("--out", out, folder=True, replaces=True)], [("CKPT", ckpt)])
    m = export_checkpoint(ckpt, out, log=click.echo, label_map=label_map)
    click.echo("wrote {} graphs and manifest.json to {}".format(len(m["graphs"]), out))
