"""``mess-edge build``: parse options, call ``build_engines`` (builder.py).

Only click is imported here; the backends load inside the command, so `mess-edge --help` works anywhere.
"""

import click


@click.command()
@click.argument("onnx_dir", type=click.Path())
@click.option("--backend", type=click.Choice(["ort", "trt"]), required=True,
              help="ONNX Runtime (optimised graphs) or TensorRT (serialized plans).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="[default: the graphs' own: fp32 for an export, int8 / fp16 for mess-edge quantize's output]. "
              "fp16 / int8 on fp32 graphs: TensorRT 8.x / 10.x builder flags.")
@click.option("--calib-data", type=click.Path(), default=None,
              help="int8: folder of calibration images (or preprocessed .npy arrays).")
@click.option("--calib-images", type=click.IntRange(min=1), default=32, show_default=True, help="int8: images used.")
@click.option("--calib-cache-dir", type=click.Path(), default=None,
              help="TensorRT int8: calibration caches [default: calibrate/int8/<device-id>].")
@click.option("--recalibrate", is_flag=True, help="TensorRT int8: replace caches made from another calibration set.")
@click.option("--device", "device_index", type=int, default=0, show_default=True, help="TensorRT: CUDA device.")
@click.option("--dla", "dla_core", type=int, default=None, help="TensorRT: build for this DLA core.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "trt"]), default="cpu", show_default=True,
              help="ORT: execution provider the graphs run with.")
@click.option("--workspace-mib", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="TensorRT builder workspace in MiB (1 .. 1048576).")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Engine folder [default: engines/<device-id>/].")
def build(onnx_dir, backend, precision, calib_data, calib_images, calib_cache_dir, recalibrate, device_index, dla_core,
          provider, workspace_mib, out_dir):
    """Build ONNX_DIR's graphs for this device: ORT optimised graphs or TensorRT plans, plus engine.json."""
    from mess_edge.build.builder import build_engines

    out = build_engines(onnx_dir, backend, precision, out_dir, providers=(provider,), dla_core=dla_core,
                        calib_dir=calib_data, calib_max_images=calib_images, calib_cache_dir=calib_cache_dir,
                        workspace_mib=workspace_mib, log=click.echo, recalibrate=recalibrate,
                        device_index=device_index)
    click.echo("engines written to {}".format(out))
