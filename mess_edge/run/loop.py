"""The loop of ``mess-edge run``: an instance on a camera, a file or a stream; overlay out; statistics at the end.

The loop (``run_stream``) fits on one screen: take the newest frame from the capture thread, which has already
preprocessed it into a buffer allocated once while the previous frame was inferred; run the chain; hand the
result to the presenter thread (overlay, write / show: present.py); record. Ctrl-C stops it cleanly: the video
is closed (playable) and the statistics (stats.py) written. No torch on this path.
"""

import collections
import dataclasses
import os
import queue
import signal
import threading
import time
from typing import Optional, Tuple

from mess_edge.errors import MessError
from mess_edge.naming import histogram_text
from mess_edge.run.preprocess import check_fit
from mess_edge.run.sink import output_kind
from mess_edge.run.stats import RunStats


@dataclasses.dataclass(frozen=True)
class RunConfig:
    instance: str                          # instance.json path
    engines: str                           # engine folder (mess-edge build)
    camera: Optional[int] = None           # camera index, or ...
    source: Optional[str] = None           # ... video, image folder / glob, rtsp:// http:// URL, GStreamer pipeline
    output: Optional[str] = None           # video path (sink.VIDEO_EXTS), or a PNG folder (existing, or ending in /)
    display: bool = True                   # show a window (only where DISPLAY is set)
    stats: Optional[str] = None            # statistics JSON path
    max_frames: Optional[int] = None       # stop after this many processed frames
    deadline_ms: Optional[float] = None    # anytime instances: time to the newest output
    realtime: bool = False                 # files: pace at the file's fps, newest frame wins (drops), like a camera
    loop: bool = False                     # files: start again at the end
    queue_size: Optional[int] = None       # capture queue, 1-2 frames [default: 1 live (newest), 2 files (read-ahead)]
    timeout_s: float = 5.0                 # streams: open / read timeout
    reconnect_delays_s: Tuple[float, ...] = (0.5, 1.0, 2.0)  # live sources: waits before each reconnect attempt
    final_only_frames: int = 20            # frames that also run final-only (speedup); 0: off
    final_only_every: int = 5              # ... every K-th frame, so the sample spans the run, not its cold start
    camera_size: Optional[Tuple[int, int]] = None  # cameras: ask for this (width, height) in pixels
    camera_fps: Optional[float] = None     # cameras: ask for this frame rate
    camera_fourcc: Optional[str] = None    # cameras: ask for this pixel format, e.g. "MJPG" (USB cameras: more fps)
    status_every_s: float = 2.0            # seconds between status lines
    fit: str = "letterbox"                 # how frames go into the network's input: letterbox, crop or stretch
    overlay_width: Optional[int] = None    # draw (show, write) the overlay this many pixels wide [default: the frame's]
    device_index: int = 0                  # TensorRT: the CUDA device the engines run on
    threads: Optional[int] = None          # ONNX Runtime intra-op threads [default: run_threads]


def _check(cfg):
    if (cfg.camera is None) == (cfg.source is None):
        raise MessError("got {}; expected exactly one of --camera N or --source PATH_OR_URL; try --camera 0".format(
            "both --camera and --source" if cfg.camera is not None else "neither --camera nor --source"))
    if cfg.camera is not None and (isinstance(cfg.camera, bool) or not isinstance(cfg.camera, int) or
                                   not 0 <= cfg.camera < 10000):
        raise MessError("got --camera {}; expected a camera index >= 0 (0 is the first camera, /dev/video0); try "
                        "--camera 0, or --source for a file or URL".format(cfg.camera))
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise MessError("got --max-frames {}; expected >= 1".format(cfg.max_frames))
    if cfg.deadline_ms is not None and cfg.deadline_ms < 0:
        raise MessError("got --deadline-ms {}; expected >= 0".format(cfg.deadline_ms))
    asked = [flag for flag, v in (("--camera-size", cfg.camera_size), ("--camera-fps", cfg.camera_fps),
                                  ("--camera-fourcc", cfg.camera_fourcc)) if v is not None]
    if asked and cfg.camera is None:
        raise MessError("got {} with --source; expected --camera N (these set a camera's capture mode); try "
                        "dropping {}".format(" and ".join(asked), " and ".join(asked)))
    if cfg.camera_size is not None and (len(cfg.camera_size) != 2 or min(cfg.camera_size) < 1):
        raise MessError("got --camera-size {}; expected WIDTHxHEIGHT in pixels, like 1280x720".format(
            "x".join(str(v) for v in cfg.camera_size)))
    if cfg.camera_fps is not None and not cfg.camera_fps > 0:
        raise MessError("got --camera-fps {:g}; expected a rate > 0, like 30".format(cfg.camera_fps))
    if cfg.camera_fourcc is not None and (len(cfg.camera_fourcc) != 4 or not cfg.camera_fourcc.isprintable()):
        raise MessError("got --camera-fourcc {!r}; expected a 4-character pixel format, like MJPG or YUYV".format(
            cfg.camera_fourcc))
    if cfg.queue_size is not None and not 1 <= cfg.queue_size <= 2:
        raise MessError("got a capture queue of {}; expected 1 or 2 frames".format(cfg.queue_size))
    check_fit(cfg.fit)
    if cfg.overlay_width is not None and cfg.overlay_width < 32:
        raise MessError("got --overlay-width {}; expected a width of at least 32 pixels, like 960".format(
            cfg.overlay_width))
    if cfg.output:
        output_kind(cfg.output)  # an unknown extension is an error before the camera opens


STOP_SIGNALS = ("SIGINT", "SIGTERM")  # Ctrl-C; what `timeout`, systemd and `docker stop` send


def _signals_stop(stop, caught):
    """Ctrl-C and SIGTERM set ``stop`` and append the signal's number to ``caught`` (a second one raises
    KeyboardInterrupt as usual); returns {signal: previous handler}, empty off the main thread, where Python
    allows no handler."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        caught.append(signum)
        stop.set()
    return {sig: signal.signal(sig, handler) for sig in (getattr(signal, n) for n in STOP_SIGNALS)}


def run_stream(cfg, log=None, on_frame=None, on_output=None, own_ort=False):
    """Run ``cfg.instance`` on the frames of ``cfg.camera`` / ``cfg.source``; return the statistics dict
    (also written to ``cfg.stats``). ``on_frame(index, result, to_result_ms)`` is called on the loop's thread
    after each frame's inference (capture to label map); ``on_output(index, end_to_end_ms)`` after each frame's
    output (capture to written / shown), on the presenter's thread when there is an output or a window.
    ``own_ort``: this process owns its ONNX Runtime use (the run command), so run_stream sets its one pool
    once the source is open (run_threads); else the caller has (configure_ort_threads) or uses ORT elsewhere in
    the process, where a global pool would refuse its plain sessions (tests)."""
    from mess_edge.run.capture import Source
    from mess_edge.run.chain import Chain, load_instance
    from mess_edge.build.engine_set import load_engines

    _check(cfg)
    _check_outputs(cfg)
    log = log or (lambda line: None)
    engines = load_engines(cfg.engines, device_index=cfg.device_index)
    chain = Chain(engines, load_instance(cfg.instance), cfg.deadline_ms)  # checks the instance before the camera
    if cfg.deadline_ms is not None and chain.plan.setting != "anytime":
        raise MessError("got --deadline-ms with a {} instance; expected an anytime instance; try mess-edge search "
                        "--setting anytime".format(chain.plan.setting))
    live = cfg.camera is not None
    settings = {k: v for k, v in (("size", cfg.camera_size), ("fps", cfg.camera_fps), ("fourcc", cfg.camera_fourcc))
                if v is not None}
    source = Source(cfg.camera if live else cfg.source, camera=live, timeout_s=cfg.timeout_s, loop=cfg.loop,
                    camera_settings=settings)
    try:
        source.open()
        if source.delivers is not None:
            log(_camera_line(cfg.camera, source.delivers, settings))
        if own_ort:
            from mess_edge.run.threads import configure_run_threads

            configure_run_threads(cfg, source, chain.plan, engines.backend, log)
        with chain:  # the engines' sessions open here, in the pool just set
            return _loop(cfg, chain, source, engines, log, on_frame, on_output)
    finally:
        source.close()


def _check_outputs(cfg):
    """--output and --stats: new paths (never the instance, the engines or the source file), writable, before
    the camera opens."""
    from mess_edge.artifacts import Output, check_outputs
    from mess_edge.run.sink import VIDEO_EXTS

    video = cfg.output is not None and os.path.splitext(cfg.output)[1].lower() in VIDEO_EXTS
    source = cfg.source if cfg.source is not None and os.path.exists(cfg.source) else None
    check_outputs([Output("--output", cfg.output, folder=not video), Output("--stats", cfg.stats)],
                  [("INSTANCE", cfg.instance), ("--engines", cfg.engines), ("--source", source)])


def _ort_threads(backend):
    """The intra-op threads ONNX Runtime engines ran with (None for TensorRT, or when the process set none)."""
    from mess_edge.runtime.ort_runner import ort_threading

    t = ort_threading() if backend == "ort" else None
    return t.intra_threads if t is not None else None


def parse_size(text):
    """"1280x720" -> (1280, 720); MessError otherwise."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise MessError("got --camera-size {}; expected WIDTHxHEIGHT in pixels, like 1280x720".format(text))
    return int(parts[0]), int(parts[1])


def _geometry_dict(g):
    """preprocess.Geometry -> the statistics' "fit_geometry" (None before the first frame)."""
    if g is None:
        return None
    return {"frame_hw": list(g.frame_hw), "input_hw": list(g.net_hw), "content": list(g.content),
            "source": list(g.source)}


def _camera_line(index, got, asked):
    """"camera 0 delivers 640x480 at 30 fps (YUYV); asked 1280x720 at 60 fps (MJPG)": drivers fall back silently."""
    def mode(m):
        parts = ["x".join(str(v) for v in m["size"])] if m.get("size") else []
        parts += ["at {:g} fps".format(m["fps"])] if m.get("fps") else []
        parts += ["({})".format(m["fourcc"])] if m.get("fourcc") else []
        return " ".join(parts) or "its default mode"

    def same(key):
        if key == "fps":
            return bool(got.get("fps")) and abs(got["fps"] - asked["fps"]) <= 0.5
        return got.get(key) == asked[key]

    line = "camera {} delivers {}".format(index, mode(got))
    return line + ("" if all(same(k) for k in asked) else "; asked {}".format(mode(asked)))


def _loop(cfg, chain, source, engines, log, on_frame, on_output):
    import numpy as np

    from mess_edge.artifacts import write_json_atomic
    from mess_edge.run.overlay import Overlay
    from mess_edge.run.preprocess import Preprocessor
    from mess_edge.run.sink import FrameSink
    from mess_edge.run.capture import END, Capture
    from mess_edge.run.present import Presenter

    # TensorRT: the capture pool's buffers are the runner's pinned memory, copied to the GPU as they are
    pre = Preprocessor(engines.manifest["input_hw"], engines.manifest["normalization"], fit=cfg.fit,
                       allocate=getattr(chain.backend, "input_buffer", None))
    drops = source.live or cfg.realtime
    pace = (source.fps or 30.0) if cfg.realtime and not source.live else None
    capture = Capture(source, cfg.queue_size or (1 if source.live else 2), newest_wins=drops, pace_fps=pace,
                      max_frames=None if drops else cfg.max_frames, reconnect_delays_s=cfg.reconnect_delays_s,
                      prepare=pre)  # frames arrive preprocessed
    show = cfg.display and bool(os.environ.get("DISPLAY"))
    if cfg.display and not show:
        log("no window: DISPLAY is not set, so there is no screen to open one on; --no-display says you know")
    stats, presenter, stop = RunStats(), None, threading.Event()
    fps, t_prev, t_status, wall0, aside, error = 0.0, None, time.perf_counter(), time.perf_counter(), 0.0, None
    chain.warm_up(pre(np.zeros(tuple(pre.hw) + (3,), np.uint8)))  # before the capture thread owns ``pre``
    caught = []
    previous = _signals_stop(stop, caught)
    try:
        if cfg.output or show:  # overlay, window and writer run on their own thread (present.py)
            overlay = Overlay(fit=cfg.fit, width=cfg.overlay_width, classes=engines.manifest.get("classes"))
            presenter = Presenter(FrameSink(cfg.output, source.fps) if cfg.output else None, show, drops,
                                  {g["name"]: g["role"] for g in engines.graphs}, stop, on_output, overlay)
            presenter.start()
        capture.start()
        wall0 = time.perf_counter()
        while not stop.is_set():
            try:
                item = capture.queue.get(timeout=0.1)
            except queue.Empty:  # nothing yet: look at the stop flag again
                continue
            if item is END:
                break
            index, frame, t_cap, x = item.index, item.image, item.t_cap, item.input
            result = chain.run(x)
            t2 = time.perf_counter()
            rate = 1.0 / max(t2 - t_prev, 1e-9) if t_prev else 0.0
            fps, t_prev = (0.9 * fps + 0.1 * rate) if fps else rate, t2
            if presenter is not None:  # the rate is shown once it has a second of frames behind it
                presenter.submit(index, frame, result, fps if t2 - wall0 >= 1.0 else None, t_cap)
            stage_ms = collections.OrderedDict([("preprocess", item.prepare_ms), ("to_result", (t2 - t_cap) * 1e3)])
            if presenter is None:  # nothing to present: the result is the output
                stage_ms["end_to_end"] = stage_ms["to_result"]
                if on_output is not None:
                    on_output(index, stage_ms["to_result"])
            stats.frame(result, stage_ms)
            if on_frame is not None:
                on_frame(index, result, stage_ms["to_result"])
            if presenter is not None and presenter.error is not None:  # this frame is counted: stop now
                raise presenter.error
            # After the frame's result, so not in its latency; every K-th frame: the first frames of a run are
            # cold (caches, thread pools, the capture thread filling its queue) and would flatter the speedup.
            # The instance runs again beside the final-only path, in alternating order: both are timed under the
            # same conditions (the presenter thread is busy with this frame right now).
            if stats.frames % cfg.final_only_every == 0 and len(stats.final_only_ms) < cfg.final_only_frames:
                t3 = time.perf_counter()
                if len(stats.final_only_ms) % 2 == 0:
                    fo, again = chain.run_final_only(x), chain.run(x)
                else:
                    again, fo = chain.run(x), chain.run_final_only(x)
                stats.final_only_ms.append(fo.times_ms["total"])
                stats.paired_ms.append(again.times_ms["total"])
                stats.sampled_ms.append(result.times_ms["total"])
                aside += time.perf_counter() - t3  # nor in the loop's wall time
            capture.release(item)  # x is free for the next frame
            if t2 - t_status >= cfg.status_every_s:
                t_status = t2
                log("frame {:>6}  {:6.1f} fps  infer {:7.3f} ms  exits {}  dropped {}  corrupt {}  not presented {}"
                    .format(stats.frames, fps, result.times_ms["total"], histogram_text(stats.exits), capture.dropped,
                            capture.corrupt, presenter.skipped if presenter else 0))
            if cfg.max_frames is not None and stats.frames >= cfg.max_frames:
                break
    except BaseException as e:
        error = e
        raise
    finally:
        wall = time.perf_counter() - wall0 - aside
        capture.stop()
        if presenter is not None:
            presenter.close()  # presents the waiting result, closes the video (playable) and the window
            error = error or presenter.error
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop.is_set():
            capture.end_reason = "interrupted" if caught else "stopped from the window"  # or q / Esc
        if error is not None:
            capture.end_reason = "error: {}".format(str(error).splitlines()[0] if str(error) else type(error).__name__)
        summary = stats.summary(capture, wall, presenter)
        summary.update(source=str(source.spec), camera_mode=source.delivers, instance=cfg.instance,
                       engines=cfg.engines, setting=chain.plan.setting, backend=engines.backend,
                       deadline_ms=cfg.deadline_ms, display=show, output=cfg.output, fit=cfg.fit,
                       signal=signal.Signals(caught[0]).name if caught else None,
                       fit_geometry=_geometry_dict(pre.current), overlay_width=cfg.overlay_width,
                       ort_threads=_ort_threads(engines.backend))
        if cfg.stats:
            write_json_atomic(cfg.stats, summary)
    if capture.error is not None:
        raise capture.error
    if presenter is not None and presenter.error is not None:
        raise presenter.error
    return summary
