"""How many threads ONNX Runtime gets in ``mess-edge run``: the cores, less one for the capture and presenter
threads when they have work and the loop leaves them no idle time for it (run_threads)."""

import os


def presents(cfg):
    """Whether the run draws its frames: an output to write, or a window where there is a screen to open it on."""
    return bool(cfg.output) or (cfg.display and bool(os.environ.get("DISPLAY")))


def side_work(cfg):
    """What the run's other threads do besides inference, in words (empty: nothing measurable): decoding a
    file or a stream on the capture thread, drawing and writing or showing on the presenter's."""
    work = ["decoding the source"] if cfg.source is not None else []
    return work + (["drawing and writing the output"] if presents(cfg) else [])


def loop_has_time(period_ms, expected_ms):
    """Whether the loop waits for frames, so that the capture and presenter threads work in its idle time: a
    paced source (a camera, a stream, a ``--realtime`` file: ``period_ms`` between frames; None for a file read
    as fast as it decodes) at least twice the instance's expected latency (``expected_ms``, the search's estimate
    from a table profiled on every core); with no estimate, a camera's rate (60 fps or slower)."""
    if period_ms is None:
        return False
    return period_ms >= (2.0 * expected_ms if expected_ms else 1000.0 / 60)


def run_threads(threads, side, cores, spare_time=False):
    """ONNX Runtime's intra-op threads for ``mess-edge run`` and the line that says why (None when there is
    nothing to say): ``threads`` when given; else ``cores`` (the physical cores), less one when there is
    ``side`` work (side_work) and the loop has no time to spare for it (``spare_time``: loop_has_time).

    Measured on 2 cores, both settings back to back (benchmarks/results/camera_resolution.md and
    camera_resolution-cpu-effl0-e8.md): from a camera faster than inference with a 1280x720 mp4 written, ORT's
    pool on both cores made the cpu-mbv2-e8 instance's frames 3.9 ms instead of 2.9, the loop 239 instead of
    339 fps and end-to-end p50 19.4 instead of 10.7 ms; but from a 60 fps camera, where the loop waits for
    frames, both cores were faster end to end: 7.0 vs 8.1 ms (cpu-mbv2-e8), 11.3 vs 16.6 ms (cpu-effl0-e8)."""
    if threads is not None or not side or cores < 2 or spare_time:
        return threads, None
    return cores - 1, ("ONNX Runtime engines: {} of {} cores infer, one is left to {}; --threads {} uses all of "
                       "them".format(cores - 1, cores, " and ".join(side), cores))


def configure_run_threads(cfg, source, plan, backend, log):
    """Set the process's ORT pool for this run (run_threads), once the source says its frame rate."""
    from mess_edge.runtime.device import physical_cores
    from mess_edge.runtime.ort_runner import configure_ort_threads

    paced = source.live or cfg.realtime
    period = 1000.0 / (source.fps or 30.0) if paced else None
    threads, why = run_threads(cfg.threads, side_work(cfg), physical_cores(), loop_has_time(
        period, plan.expected_ms))
    configure_ort_threads(threads)
    if why and backend == "ort":
        log(why)
