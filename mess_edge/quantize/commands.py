"""``mess-edge quantize``: parse options, call ``quantize_folder`` (quantizer.py). Only click at import."""

import click


@click.command()
@click.argument("onnx_dir", type=click.Path())
@click.option("--precision", type=click.Choice(["int8", "fp16"]), required=True,
              help="int8: Q/DQ graphs (explicit quantization); fp16: FP16 graphs with fp32 inputs and outputs.")
@click.option("--calib-data", type=click.Path(), default=None,
              help="int8: the calibration split (a VOC dataset folder: its cal split) or a folder of images.")
@click.option("--calib-images", type=int, default=64, show_default=True, help="int8: images used (first N).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="int8: how activation ranges are fitted.")
@click.option("--activations", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="int8: activation type. int8 (symmetric) builds on TensorRT and runs on ORT; uint8 (asymmetric) "
              "is ORT CPU's fast path, refused by TensorRT.")
@click.option("--calib-resize", is_flag=True,
              help="int8: accept images of another size than the graphs' input (resized like camera frames).")
@click.option("--fp32-heads", is_flag=True,
              help="Keep the exit heads fp32 (copied unchanged); only the backbone and the final graph change "
              "precision. Heads are small: the early exits keep their accuracy for little time.")
@click.option("--int8-first-conv", is_flag=True,
              help="int8: quantize the convolution that reads the image too (fp32 by default: on cpu-mbv2-e8 it "
              "alone costs 2.2 pp at INT8, for 1.2% of the MACs).")
@click.option("--fp32-layer", "fp32_layer", multiple=True, metavar="GRAPH:NODE",
              help="int8: keep this node fp32 too (repeatable): the per-layer fallback, for layers "
              "benchmarks/int8_sensitivity.py finds sensitive.")
@click.option("--fallback-disagreement", type=click.FloatRange(min=0.0), default=4.0, show_default=True,
              metavar="PCT", help="int8: a head or final graph whose labels differ from its fp32 labels on more "
              "than PCT% of the calibration pixels gets convolutions kept fp32, the most helpful first.")
@click.option("--fallback-max-layers", type=click.IntRange(min=0), default=3, show_default=True,
              help="int8: at most this many convolutions per graph kept fp32 by the fallback; 0 turns it off.")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="The new ONNX folder.")
def quantize(onnx_dir, precision, calib_data, calib_images, calib_method, activations, calib_resize, fp32_heads,
             int8_first_conv, fp32_layer, fallback_disagreement, fallback_max_layers, out_dir):
    """Write ONNX_DIR's graphs at INT8 (Q/DQ) or FP16 into a new ONNX folder that build/profile/run read."""
    from mess_edge.quantize.quantizer import parse_fp32_layer, quantize_folder

    layers = {}
    for text in fp32_layer:
        graph, node = parse_fp32_layer(text)
        layers.setdefault(graph, []).append(node)
    m = quantize_folder(onnx_dir, precision, out_dir, calib_data, calib_images, calib_method, calib_resize,
                        log=click.echo, activations=activations, fp32_heads=fp32_heads,
                        first_conv_int8=int8_first_conv, fp32_layers=layers,
                        fallback_disagreement_pct=fallback_disagreement, fallback_max_layers=fallback_max_layers)
    click.echo("wrote {} graphs at {} and manifest.json to {}".format(len(m["graphs"]), precision, out_dir))
