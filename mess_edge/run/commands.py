"""``mess-edge run``: parse options, call ``run_stream`` (loop.py). Only click is imported at the top."""

import click

from mess_edge.run.preprocess import FITS

from mess_edge.run.loop import RunConfig, parse_size, run_stream
from mess_edge.run.stats import format_stats


@click.command()
@click.argument("instance", type=click.Path(dir_okay=False))
@click.option("--engines", "engine_dir", required=True, type=click.Path(file_okay=False),
              help="Engine folder built on this device (mess-edge build).")
@click.option("--camera", type=int, default=None, help="Camera index (OpenCV / V4L2).")
@click.option("--source", default=None, help="Video file, image folder or glob, rtsp:// or http:// URL.")
@click.option("--camera-size", default=None, help="Cameras: ask for WIDTHxHEIGHT, e.g. 1280x720.")
@click.option("--camera-fps", type=float, default=None, help="Cameras: ask for this frame rate.")
@click.option("--camera-fourcc", default=None, help="Cameras: ask for this pixel format, e.g. MJPG (more fps on USB).")
@click.option("--output", default=None, help="Overlay video (.mp4, .avi, ...) or a folder of PNG frames (an existing "
              "folder, or a path ending in /).")
@click.option("--overlay-width", type=int, default=None, help="Draw, show and write the overlay this many pixels wide "
              "(a window's size; the frame's aspect kept) [default: the frame's width].")
@click.option("--fit", type=click.Choice(FITS), default="letterbox", show_default=True,
              help="Frames of another aspect ratio than the network's input: letterbox (all of the frame, bars "
              "around it), crop (its centre) or stretch (squashed, as in training).")
@click.option("--display/--no-display", default=True, show_default=True, help="Show a window (needs DISPLAY).")
@click.option("--stats", "stats_path", default=None, help="Write the end-of-run statistics here (JSON).")
@click.option("--max-frames", type=int, default=None, help="Stop after N processed frames.")
@click.option("--deadline-ms", type=float, default=None, help="Anytime instances: deadline per frame.")
@click.option("--threads", type=click.IntRange(1), default=None, help="ONNX Runtime threads [default: the physical "
              "cores, less one when decoding or drawing has no idle time of the loop to run in].")
@click.option("--device", "device_index", type=int, default=0, show_default=True,
              help="TensorRT: CUDA device index the engines run on.")
@click.option("--realtime/--no-realtime", default=False, show_default=True,
              help="Files: play at the file's fps, dropping frames like a camera (default: every frame).")
@click.option("--loop", is_flag=True, help="Files: start again at the end.")
@click.option("--timeout-s", type=float, default=5.0, show_default=True, help="Streams: open / read timeout.")
@click.option("--final-only-every", type=click.IntRange(1), default=5, show_default=True,
              help="Run the final-only comparison on every K-th frame.")
@click.option("--final-only-frames", type=int, default=20, show_default=True,
              help="Also time the final-only path on N frames (every K-th, see above), paired with the same frames' "
              "instance times: the speedup; 0: off.")
def run(instance, engine_dir, camera, source, camera_size, camera_fps, camera_fourcc, output, overlay_width, fit,
        display, stats_path, max_frames, deadline_ms, threads, realtime, loop, timeout_s, final_only_every,
        final_only_frames, device_index):
    """Run INSTANCE on a camera, a file or a stream: overlaid frames out, statistics at the end. Ctrl-C stops
    it after writing the video and the statistics, with exit status 130."""
    cfg = RunConfig(instance=instance, engines=engine_dir, camera=camera, source=source, output=output,
                    display=display, stats=stats_path, max_frames=max_frames, deadline_ms=deadline_ms,
                    realtime=realtime, loop=loop, timeout_s=timeout_s, final_only_frames=final_only_frames,
                    final_only_every=final_only_every, camera_fps=camera_fps, camera_fourcc=camera_fourcc,
                    camera_size=None if camera_size is None else parse_size(camera_size), fit=fit,
                    device_index=device_index,
                    overlay_width=overlay_width, threads=threads)
    stats = run_stream(cfg, log=lambda line: click.echo(line, err=True), own_ort=True)
    click.echo(format_stats(stats))
    if stats.get("signal"):  # stopped by Ctrl-C / SIGTERM after writing everything: say so to the caller
        import signal

        return 128 + int(getattr(signal, stats["signal"]))
