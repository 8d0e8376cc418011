"""Device-side commands `profile` and `bench`: parse options, call one library function.

Only click and numpy (through mess_edge.confidence's DEFAULT_TH_PIX and instance_bench's DEFAULT_BLOCK) are
imported here; the backends load inside the commands, so `mess-edge --help` works anywhere.
"""

import click

from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.profile.instance_bench import DEFAULT_BLOCK


_THREADS = click.option("--threads", type=click.IntRange(1), default=None,
                        help="ONNX Runtime: threads of the process-wide pool [default: physical cores].")
_DEVICE = click.option("--device", "device_index", type=int, default=0, show_default=True,
                       help="TensorRT: CUDA device index the engines run on.")


def _own_ort_threads(threads):
    """This process owns its ONNX Runtime use: one global pool, as the chain will run (no-op for TRT)."""
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads(threads)


def _progress(i, n, name, stats):
    click.echo("[{:>3}/{}] {:<26} median {:8.4f} ms  p90 {:8.4f} ms  p99 {:8.4f} ms  n {}".format(
        i, n, name, stats.median_ms, stats.p90_ms, stats.p99_ms, stats.n))


@click.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="LUT path [default: ENGINE_DIR/lut.json].")
@click.option("--min-iters", type=int, default=50, show_default=True, help="Timed runs per graph, at least.")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Seconds per graph, at least.")
@click.option("--warmup-s", type=float, default=0.5, show_default=True, help="Untimed seconds per graph first.")
@click.option("--th-pix", type=float, default=DEFAULT_TH_PIX, show_default=True,
              help="Pixel threshold fed to heads (timings do not depend on it).")
@_THREADS
@_DEVICE
@click.option("--alone", is_flag=True, help="ORT: time every graph alone in a loop instead of inside chained "
              "frames (warm caches: predicts chained latency too low on CPUs).")
def profile(engine_dir, out, min_iters, min_seconds, warmup_s, th_pix, threads, device_index, alone):
    """Time every graph of ENGINE_DIR, and on ORT every stretch of segments the chain fuses, inside chained frames,
    and write the latency table (lut.json)."""
    import os

    from mess_edge.profile.latency_table import ProfileConfig, profile_engines

    config = ProfileConfig(min_iters=min_iters, min_seconds=min_seconds, warmup_s=warmup_s, th_pix=th_pix,
                           in_chain=not alone, device_index=device_index)
    _own_ort_threads(threads)
    lut = profile_engines(engine_dir, out, config, progress=_progress)
    over = lut.get("frame_overhead_ms")
    if over:
        click.echo("chain overhead per frame (Chain.run beyond the table's graph means): final {:.4f} ms{}".format(
            over["final"], "".join(", exit {} {:.4f} ms".format(k, v) for k, v in sorted(over["exits"].items()))))
    click.echo("latency table written to {}".format(out or os.path.join(engine_dir, "lut.json")))


@click.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--min-seconds", type=float, default=0.3, show_default=True, help="Seconds per graph, at least.")
@click.option("--pairs", type=int, default=200, show_default=True, help="Interleaved chain/monolithic pairs.")
@click.option("--instance", "instance_path", type=click.Path(dir_okay=False), default=None,
              help="Instead: this instance's chain vs the final-only paths on real frames (--data or --source).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="--instance: VOC-layout folder (DigitScenes or yours); its labels give each path's mIoU.")
@click.option("--split", default="test", show_default=True, help="--instance --data: the split to use.")
@click.option("--source", default=None, help="--instance: a video file or images instead of --data (no mIoU).")
@click.option("--images", type=click.IntRange(1), default=200, show_default=True, help="--instance: frames used.")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True, help="--instance: passes over them.")
@click.option("--deadline-ms", type=float, default=None, help="--instance: anytime instances' deadline per frame.")
@click.option("--block", type=click.IntRange(1), default=DEFAULT_BLOCK, show_default=True,
              help="--instance: frames each path runs in a row before the next takes them (1: frame by frame).")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also save the result as JSON.")
@_THREADS
@_DEVICE
def bench(engine_dir, min_seconds, pairs, instance_path, data, split, source, images, reps, deadline_ms, block,
          json_out, threads, device_index):
    """Latency and GMAC/s of every graph; chained final-only path vs the fastest monolithic setting. With
    --instance: the instance's measured speedup over final-only on real frames, interleaved in blocks of frames."""
    from mess_edge.artifacts import check_outputs, write_json_atomic

    check_outputs([("--json", json_out)], [("ENGINE_DIR", engine_dir), ("--instance", instance_path),
                                           ("--data", data), ("--source", source)])
    _own_ort_threads(threads)
    if instance_path is not None:
        from mess_edge.profile.instance_bench import bench_instance, format_instance_bench

        result = bench_instance(engine_dir, instance_path, data, split, source, images, reps, deadline_ms,
                                show_progress=True, device_index=device_index, block=block)
        click.echo(format_instance_bench(result))
        if json_out:
            write_json_atomic(json_out, result)
        return
    if data is not None or source is not None:
        from mess_edge.errors import MessError

        raise MessError("got --data/--source without --instance; expected --instance INSTANCE.json with them")
    from mess_edge.profile.bench import BenchConfig, bench_engines, format_bench

    result = bench_engines(engine_dir, BenchConfig(min_seconds=min_seconds, pairs=pairs, device_index=device_index), progress=_progress)
    click.echo(format_bench(result))
    if json_out:
        write_json_atomic(json_out, result)
