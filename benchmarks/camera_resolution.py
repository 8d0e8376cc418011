"""`mess-edge run` at camera resolution: does drawing and writing cap the frame rate?

Generated sources at 640x480, 1280x720 and 1920x1080 (moving shapes on a gradient), each run two ways, as a
camera faster than inference (newest frame wins, so the loop runs at the rate inference allows unless
something else takes its place):

- ``camera``: frames from memory at 600 fps through the whole loop (capture thread with preprocessing, chain,
  presenter thread with overlay and writer): a camera's frames arrive in memory, so nothing is decoded;
- ``file``: an mp4v clip written with OpenCV into a temporary folder, played with ``--realtime --loop`` at 600
  fps: the capture thread decodes it, which at 1920x1080 is itself slower than the network here;

each with no output, with mp4 output at the frame's size, and with mp4 output of a window-sized overlay
(``--overlay-width 960``, 1280x720 and 1920x1080 only); at 1280x720 also a camera at 60 fps (a real camera's
rate: the presenter is free when each result comes) with mp4 output. Each size runs twice, back to back, in a
fresh process each: with ONNX Runtime on all the physical cores and on one less, which is what ``mess-edge run``
takes when a file is decoded or an output written (threads.run_threads); the main table shows run's choice, a
second one the two side by side. Reported per row: loop fps / (1 / mean inference
latency) of the same run, overlay and output p50, end-to-end p50 (capture to written) against the mean
inference latency, and how many frames the writer kept. Then a file read without ``--realtime`` (every frame
written: the writer sets the pace) and the overlay alone, this version against the one before (git history),
on the same frames. ``--soak``: 10,000 camera frames at 1280x720 with mp4 output: RSS every 500 frames and
end-to-end latency per window (memory flat, no latency trend).

The model: ``--engines DIR --instance FILE``, or by default a committed benchmark model's (iii) instance
(``--model``, default cpu-mbv2-e8: the fastest, so the one whose frames leave the least time for drawing and
writing), made under ``--work`` and reused: calibrated on runs/ds128's cal (and test) split, exported, built for ONNX
Runtime, profiled (exit_ceilings.prepare), and searched (input-dependent, <= 1 pp, the default promise). Saves
benchmarks/results/camera_resolution.{json,md} (``--out``).

    python benchmarks/camera_resolution.py [--model cpu-mbv2-e8 | --engines DIR --instance FILE] [--frames 400]
        [--soak] [--quick] [--threads N (every row)] [--out NAME] [--render]
"""

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.modules.setdefault("torch", None)  # the measuring process never loads torch, as on a device

from benchmarks._common import cli, save  # noqa: E402

SIZES = ((640, 480), (1280, 720), (1920, 1080))
WINDOW_WIDTH = 960
CAMERA_FPS = 600.0
REAL_CAMERA_FPS = 60.0  # a 1280x720 USB or CSI camera's top rate
OLD_OVERLAY = "053278d"  # the commit whose overlay blended at the frame's size (issue 15's measurements)
TARGETS = {(640, 480): 0.95, (1280, 720): 0.9, (1920, 1080): 0.8}


def prepare(model, work, data=os.path.join(ROOT, "runs", "ds128")):
    """A committed benchmark model's (iii) instance (see the module docstring): (engine folder, instance path),
    made once under work/model (exit_ceilings.prepare: calibrated, exported, built and profiled)."""
    from exit_ceilings import prepare as prepare_model

    p = prepare_model(model, data, os.path.join(work, model), 1.0)
    instance = os.path.join(work, model, "instance.json")
    if not os.path.isfile(instance):
        cli("search", "--memo", p["memo"], "--manifest", os.path.join(p["onnx"], "manifest.json"), "--lut",
            p["lut"], "--setting", "input-dependent", "--max-drop", 1.0, "--out", instance)
    return p["engines"], instance


def scenes(size, n=24):
    """n BGR uint8 frames of (width, height): discs and bars moving over a gradient with some texture."""
    import cv2

    w, h = size
    rng = np.random.default_rng(0)
    base = np.zeros((h, w, 3), np.uint8)
    base[:] = np.linspace(30, 200, w, dtype=np.uint8)[None, :, None]
    base = cv2.add(base, rng.integers(0, 24, (h, w, 3), dtype=np.uint8))
    frames = []
    for i in range(n):
        img = base.copy()
        for k in range(4):
            x = int((0.1 + 0.2 * k + 0.02 * i) % 1.0 * w)
            cv2.circle(img, (x, h // 2 + (k - 2) * h // 8), h // 8, (40 + 50 * k, 220 - 40 * k, 90), -1)
        cv2.rectangle(img, (w // 3, (i * h // n) % h), (w // 3 + w // 10, (i * h // n) % h + h // 12),
                      (200, 30, 160), -1)
        frames.append(img)
    return frames


def write_clip(path, frames, fps=CAMERA_FPS):
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


class MemoryCamera(object):
    """A camera-like Source (capture.Source's interface): frames from memory at ``fps``, newest wins
    downstream (live). Frames are handed out as they are (never modified), as a driver's buffers would be."""

    kind, live, delivers = "camera", True, None

    def __init__(self, frames, fps=CAMERA_FPS):
        self.frames, self.fps, self.spec = frames, None, "memory camera {}x{} at {:g} fps".format(
            frames[0].shape[1], frames[0].shape[0], fps)
        self.period, self.i, self.t_next = 1.0 / fps, 0, None

    def open(self):
        return self

    def read(self):
        now = time.perf_counter()
        self.t_next = now if self.t_next is None else self.t_next + self.period
        if self.t_next > now:
            time.sleep(self.t_next - now)
        else:
            self.t_next = now  # behind (the machine was busy): no burst to catch up
        self.i += 1
        return "ok", self.frames[self.i % len(self.frames)]

    def reopen(self):
        return True

    def close(self):
        pass


def run_camera(cfg, frames, on_frame=None, on_output=None, fps=CAMERA_FPS):
    """run_stream (loop.py) with a MemoryCamera at ``fps`` in place of the OpenCV source."""
    from mess_edge.build.engine_set import load_engines
    from mess_edge.run import loop
    from mess_edge.run.chain import Chain, load_instance

    engines = load_engines(cfg.engines)
    with Chain(engines, load_instance(cfg.instance)) as chain:
        return loop._loop(cfg, chain, MemoryCamera(frames, fps), engines, lambda line: None, on_frame, on_output)


def measure(engines, instance, kind, frames, clip, n, output, width, realtime=True, camera_fps=CAMERA_FPS):
    """One row: the run's summary reduced to what the table shows."""
    from mess_edge.run.loop import RunConfig, run_stream

    cfg = RunConfig(instance, engines, source="camera" if kind == "camera" else clip, output=output,
                    display=False, max_frames=n, realtime=realtime, loop=True, final_only_frames=0,
                    overlay_width=width, status_every_s=1e9)
    load0 = os.getloadavg()[0]
    s = run_camera(cfg, frames, fps=camera_fps) if kind == "camera" else run_stream(cfg)
    lat = s["latency_ms"]

    def p50(k):
        return lat[k]["p50"] if lat.get(k) else None
    return {"source": kind if camera_fps == CAMERA_FPS else "{} at {:g} fps".format(kind, camera_fps),
            "source_fps": camera_fps if kind == "camera" else CAMERA_FPS, "output": "mp4" if output else "none",
            "overlay_width": width, "realtime": realtime,
            "frames": s["frames"], "fps": s["fps"], "inference_fps": s["inference_fps"],
            "ratio": s["fps"] / s["inference_fps"], "mean_inference_ms": s["mean_inference_ms"],
            "capture_fps": s["frames_in"] / s["wall_s"], "preprocess_p50_ms": p50("preprocess"),
            "present_wait_p50_ms": p50("present_wait"), "overlay_p50_ms": p50("overlay"),
            "output_p50_ms": p50("output"), "end_to_end_p50_ms": p50("end_to_end"),
            "to_result_p50_ms": p50("to_result"), "written": s["frames_written"], "not_presented": s["not_presented"],
            "exit_histogram": s["exit_histogram"], "load_average": [load0, os.getloadavg()[0]]}


def old_overlay_class():
    """The Overlay of OLD_OVERLAY (blend at the frame's size), loaded from git; None without git history."""
    try:
        src = subprocess.run(["git", "show", OLD_OVERLAY + ":mess_edge/run/overlay.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="mess-old-overlay-"), "old_overlay.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_overlay", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Overlay


def overlay_alone(frames, labels_hw, classes, reps=40):
    """Median ms per call, old vs new overlay, interleaved on the same frames and label maps."""
    from mess_edge.run.overlay import Overlay

    old_cls = old_overlay_class()
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, len(classes), labels_hw).astype(np.int32) for _ in range(4)]
    lines = ["exit e1 c0b0r0h0  conf 0.93", "seg 1.2  head 0.1  up 0.2 ms", "infer 1.9 ms  412.0 fps"]
    fns = collections.OrderedDict([("new", Overlay(fit="letterbox", classes=classes)),
                                   ("new, window-sized", Overlay(fit="letterbox", classes=classes,
                                                                 width=WINDOW_WIDTH))])
    if old_cls is not None:
        fns["old"] = old_cls()
    ms = {k: [] for k in fns}
    for r in range(reps):
        for k, fn in fns.items():
            f, lab = frames[r % len(frames)], labels[r % len(labels)]
            t = time.perf_counter()
            fn(f, lab, lines)
            ms[k].append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v[2:])) for k, v in ms.items()}


def soak(engines, instance, frames, n=10000, every=500):
    """10,000 memory-camera frames at the frames' size, mp4 out: RSS every ``every`` frames, end-to-end per
    window, and the trend (slope of the window medians)."""
    from mess_edge.run.loop import RunConfig
    from soak import rss_mb

    e2e, rss, count, t0 = np.zeros(n + 8), [(0, rss_mb())], [0, 0], time.perf_counter()
    lock = threading.Lock()

    def on_frame(index, result, ms):
        count[0] += 1
        if count[0] % every == 0:
            with lock:
                rss.append((count[0], rss_mb(), count[1]))

    def on_output(index, ms):
        with lock:
            if count[1] < len(e2e):
                e2e[count[1]] = ms
            count[1] += 1

    with tempfile.TemporaryDirectory(prefix="mess-soak-") as tmp:
        cfg = RunConfig(instance, engines, source="camera", output=os.path.join(tmp, "soak.mp4"), display=False,
                        max_frames=n, final_only_frames=0, status_every_s=1e9)
        s = run_camera(cfg, frames, on_frame, on_output)
    rss[0] = rss[0] + (0,)
    windows = [float(np.median(e2e[a[2]:b[2]])) for a, b in zip(rss, rss[1:]) if b[2] > a[2]]
    warm = next((r for r in rss if r[0] >= 2 * every), rss[-1])
    slope = float(np.polyfit(np.arange(len(windows)), windows, 1)[0]) if len(windows) > 2 else None
    return {"frames": s["frames"], "seconds": time.perf_counter() - t0, "fps": s["fps"],
            "inference_fps": s["inference_fps"], "written": s["frames_written"],
            "rss_mb": [[f, round(m, 2)] for f, m, _ in rss], "rss_growth_after_warmup_mb": rss[-1][1] - warm[1],
            "rss_growth_second_half_mb": rss[-1][1] - rss[len(rss) // 2][1],
            "end_to_end_p50_per_window_ms": windows, "end_to_end_p50_slope_ms_per_window": slope,
            "mean_inference_ms": s["mean_inference_ms"]}


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def out_text(r):
    return "none" if r["output"] == "none" else "mp4 {}".format(
        "window {}".format(r["overlay_width"]) if r["overlay_width"] else "full size")


def run_choice(r, c):
    """The ORT threads `mess-edge run` takes for row ``r`` (threads.run_threads): one core left when a file is decoded
    or an output written and the loop has no idle time for that work (a source faster than twice the
    instance's expected latency)."""
    from mess_edge.run.threads import loop_has_time, run_threads

    side = [] if r["source"].startswith("camera") and r["output"] == "none" else ["work"]
    period = 1000.0 / r.get("source_fps", CAMERA_FPS) if r.get("realtime", True) else None
    return run_threads(None, side, c["cores"], loop_has_time(period, c.get("expected_ms")))[0] or c["cores"]


def run_default(rows, conditions):
    """The rows `mess-edge run` would give (run_choice)."""
    if len(conditions["settings"]) == 1:
        return rows
    return [r for r in rows if r["threads"] == run_choice(r, conditions)]


def markdown(rows, alone, every_frame, soak_result, conditions):
    c = conditions
    threads = ("{} threads".format(c["settings"][0]) if len(c["settings"]) == 1 else
               "`mess-edge run`'s threads: {} when a file is decoded or an output written faster than twice the "
               "instance's expected {} per frame, else {}".format(c["presenting"], fmt(c.get("expected_ms"),
                                                                                       "{:.2f} ms"), c["cores"]))
    md = ["# `mess-edge run` at camera resolution", "",
          "Model: {}. ONNX Runtime on the CPU ({} physical cores), {}; sources faster than inference ({:g} fps, "
          "newest frame wins). 1-minute load average of this shared machine during the runs: {}.".format(
              c["model"], c["cores"], threads, c["fps"], c["load"]), "",
          "| source | size | output | loop fps | 1 / mean inference | **ratio** | target | capture fps | overlay p50 "
          "| output p50 | end-to-end p50 | e2e / mean inference | written |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in run_default(rows, c):
        md.append("| {} | {} | {} | {:.0f} | {:.0f} | **{:.2f}** | {} | {:.0f} | {} | {} | {} | {} | {} |".format(
            r["source"], r["size"], out_text(r), r["fps"], r["inference_fps"], r["ratio"],
            fmt(TARGETS.get(tuple(int(v) for v in r["size"].split("x")))) if r["output"] != "none" and r.get(
                "source_fps", CAMERA_FPS) == CAMERA_FPS else "",
            r["capture_fps"], fmt(r["overlay_p50_ms"], "{:.2f} ms"), fmt(r["output_p50_ms"], "{:.2f} ms"),
            fmt(r["end_to_end_p50_ms"], "{:.1f} ms"),
            fmt(r["end_to_end_p50_ms"] / r["mean_inference_ms"] if r["end_to_end_p50_ms"] else None, "{:.1f}x"),
            "{} of {}".format(r["written"], r["frames"]) if r["output"] != "none" else "-"))
    if len(c["settings"]) > 1:
        a, b = c["settings"]
        md += ["", "ORT threads side by side, {} and {} (each size's two runs back to back): loop fps, mean inference, "
               "ratio and end-to-end p50 (`run`'s choice in the table above):".format(a, b), "",
               "| source | size | output | loop fps {a} / {b} | mean inference {a} / {b} | ratio {a} / {b} | "
               "e2e p50 {a} / {b} |".format(a=a, b=b), "|---|---|---|---:|---:|---:|---:|"]
        pairs = collections.OrderedDict()
        for r in rows:
            pairs.setdefault((r["source"], r["size"], out_text(r)), {})[r["threads"]] = r
        for (source, size, out), by in pairs.items():
            if a in by and b in by:
                x, y = by[a], by[b]
                md.append("| {} | {} | {} | {:.0f} / {:.0f} | {:.2f} / {:.2f} ms | {:.2f} / {:.2f} | {} / {} |".format(
                    source, size, out, x["fps"], y["fps"], x["mean_inference_ms"], y["mean_inference_ms"],
                    x["ratio"], y["ratio"], fmt(x["end_to_end_p50_ms"], "{:.1f} ms"),
                    fmt(y["end_to_end_p50_ms"], "{:.1f} ms")))
    md += ["", "Every frame written (a file without `--realtime`: the writer sets the pace, by design):", "",
           "| size | threads | output | loop fps | 1 / mean inference | ratio | output p50 |",
           "|---|---:|---|---:|---:|---:|---:|"]
    md += ["| {} | {} | {} | {:.0f} | {:.0f} | {:.2f} | {} |".format(
        r["size"], r["threads"], out_text(r), r["fps"], r["inference_fps"], r["ratio"],
        fmt(r["output_p50_ms"], "{:.2f} ms")) for r in every_frame]
    md += ["", "The overlay alone (status text and legend included), median ms per frame, interleaved on the same "
           "frames; `old` is the overlay of {} (blend at the frame's size):".format(OLD_OVERLAY), "",
           "| size | " + " | ".join(alone[0]["ms"]) + " | old / new |",
           "|---|" + "---:|" * (len(alone[0]["ms"]) + 1)]
    md += ["| {} | {} | {} |".format(a["size"], " | ".join("{:.2f}".format(v) for v in a["ms"].values()),
                                     fmt(a["ms"].get("old", 0) / a["ms"]["new"] if "old" in a["ms"] else None,
                                         "{:.1f}x")) for a in alone]
    if soak_result:
        s = soak_result
        md += ["", "Soak ({} ORT threads): {} memory-camera frames at 1280x720, mp4 out ({} written), {:.0f} s: RSS "
               "growth after warm-up **{:+.2f} MB**, over the second half {:+.2f} MB; end-to-end p50 per 500 frames "
               "{} ms (slope {} ms per window; overall {:.1f}x the mean inference latency of {:.2f} ms); loop {:.0f} "
               "fps vs 1 / mean inference {:.0f} fps.".format(
                   s["threads"], s["frames"], s["written"], s["seconds"], s["rss_growth_after_warmup_mb"],
                   s["rss_growth_second_half_mb"],
                   " ".join("{:.1f}".format(v) for v in s["end_to_end_p50_per_window_ms"]),
                   fmt(s["end_to_end_p50_slope_ms_per_window"], "{:+.3f}"),
                   float(np.median(s["end_to_end_p50_per_window_ms"])) / s["mean_inference_ms"],
                   s["mean_inference_ms"], s["fps"], s["inference_fps"])]
    return "\n".join(md)


def child_rows(engines, instance, size, frames_per_row, tmp):
    """Every row of one frame size (camera and file; no output, mp4 at the frame's size, mp4 window-sized), then
    the every-frame row, in this process (whose ORT threads are already set)."""
    frames = scenes(size)
    clip = write_clip(os.path.join(tmp, "clip_{}x{}.mp4".format(*size)), frames)
    out = os.path.join(tmp, "out.mp4")
    widths = [None] + ([WINDOW_WIDTH] if size[0] > WINDOW_WIDTH else [])
    rows = []
    for kind in ("camera", "file"):
        for output, width in [(None, None)] + [(out, w) for w in widths]:
            rows.append(dict(measure(engines, instance, kind, frames, clip, frames_per_row, output, width),
                             size="{}x{}".format(*size)))
    if size == (1280, 720):  # a camera at a camera's rate: the presenter is free when each result comes
        for output, width in [(out, w) for w in widths]:
            rows.append(dict(measure(engines, instance, "camera", frames, clip, max(60, frames_per_row // 2), output,
                                     width, camera_fps=REAL_CAMERA_FPS), size="{}x{}".format(*size)))
    every = dict(measure(engines, instance, "file", frames, clip, frames_per_row // 2, out, widths[-1],
                         realtime=False), size="{}x{}".format(*size))
    return rows, every


def run_child(args, threads, size=None, soak_frames=None):
    """This script in a fresh process with ``threads`` ORT threads (a process sets its pool once): the rows of
    ``size``, or the soak; returns its JSON."""
    with tempfile.TemporaryDirectory(prefix="mess-camres-child-") as tmp:
        path = os.path.join(tmp, "child.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--engines", args.engines, "--instance", args.instance,
               "--frames", str(args.frames), "--child-threads", str(threads), "--child-out", path]
        cmd += ["--child-size", "{}x{}".format(*size)] if size else ["--child-soak", str(soak_frames)]
        subprocess.run(cmd, check=True)
        with open(path) as f:
            return json.load(f)


def child_main(args):
    from mess_edge.artifacts import write_json_atomic
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads(args.child_threads)
    with tempfile.TemporaryDirectory(prefix="mess-camres-") as tmp:
        if args.child_soak:
            payload = {"soak": soak(args.engines, args.instance, scenes((1280, 720)), args.child_soak)}
        else:
            size = tuple(int(v) for v in args.child_size.split("x"))
            rows, every = child_rows(args.engines, args.instance, size, args.frames, tmp)
            for r in rows + [every]:
                r["threads"] = args.child_threads
                print("{threads} threads {source:6} {size:9} {output:4} w={overlay_width} ratio {ratio:.2f} ({fps:.0f}"
                      " / {inference_fps:.0f} fps) e2e p50 {end_to_end_p50_ms} ms".format(**r), flush=True)
            payload = {"rows": rows, "every_frame": every}
    write_json_atomic(args.child_out, payload)


def main():
    from mess_edge.run.chain import expected_ms
    from mess_edge.run.threads import run_threads
    from mess_edge.runtime.device import physical_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=None)
    ap.add_argument("--instance", default=None)
    ap.add_argument("--model", default="cpu-mbv2-e8", help="benchmarks/models/<name> [cpu-mbv2-e8]")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "camera_resolution"))
    ap.add_argument("--frames", type=int, default=400, help="frames per row")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime threads of every row [default: both run's choice with an output (the physical "
                    "cores less one) and all the cores, side by side]")
    ap.add_argument("--quick", action="store_true", help="150 frames per row, no soak")
    ap.add_argument("--soak", action="store_true", help="also 10,000 frames at 1280x720")
    ap.add_argument("--soak-frames", type=int, default=10000)
    ap.add_argument("--out", default="camera_resolution", help="result name under benchmarks/results/")
    ap.add_argument("--render", action="store_true", help="only write the markdown again from the saved --out JSON")
    ap.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-size", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-soak", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_out:
        return child_main(args)
    if args.render:
        with open(os.path.join(HERE, "results", args.out + ".json")) as f:
            p = json.load(f)
        return save(args.out, {k: v for k, v in p.items() if k != "conditions"}, markdown(
            p["rows"], p["overlay_alone_ms"], p["every_frame"], p["soak"], p["run_conditions"]))
    if (args.engines is None) != (args.instance is None):
        sys.exit("--engines and --instance go together")
    if args.engines is None:
        args.engines, args.instance = prepare(args.model, args.work)
    if args.quick:
        args.frames, args.soak = 150, False
    cores = physical_cores()
    presenting = run_threads(None, ["drawing"], cores)[0] or cores  # what `mess-edge run` takes with an output
    settings = [args.threads] if args.threads else sorted({cores, presenting}, reverse=True)
    from mess_edge.build.engine_set import load_engines

    manifest = load_engines(args.engines).manifest
    rows, alone, every_frame = [], [], []
    for size in SIZES:
        for threads in settings:  # interleaved by size, so drift of the machine falls on both settings alike
            got = run_child(args, threads, size=size)
            rows += got["rows"]
            every_frame.append(got["every_frame"])
        alone.append({"size": "{}x{}".format(*size), "ms": overlay_alone(scenes(size), tuple(manifest["input_hw"]),
                                                                        manifest.get("classes") or ["0", "1"])})
    soak_threads = args.threads or presenting
    soak_result = (dict(run_child(args, soak_threads, soak_frames=args.soak_frames)["soak"], threads=soak_threads)
                   if args.soak else None)
    model = ("{}'s (iii) instance (input-dependent, <= 1 pp), {}".format(args.model, args.engines)
             if args.work in args.engines else args.engines)
    with open(args.instance) as f:
        inst = json.load(f)
    loads = [v for r in rows for v in r["load_average"]]
    conditions = {"model": model, "cores": cores, "settings": settings, "presenting": presenting,
                  "expected_ms": expected_ms(inst),
                  "fps": CAMERA_FPS, "load": "{:.1f}-{:.1f}".format(min(loads), max(loads))}
    payload = {"rows": rows, "every_frame": every_frame, "overlay_alone_ms": alone, "soak": soak_result,
               "instance": {"path": args.instance, "setting": inst.get("setting"),
                            "exits": [e["graph"] for e in inst.get("exits", [])]},
               "input_hw": manifest["input_hw"], "targets": {"{}x{}".format(*k): v for k, v in TARGETS.items()},
               "run_conditions": conditions}
    save(args.out, payload, markdown(rows, alone, every_frame, soak_result, conditions))


if __name__ == "__main__":
    main()
