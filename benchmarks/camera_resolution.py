"""`mess-edge run` at camera resolution: does drawing and writing cap the frame rate?

Generated sources at 640x480, 1280x720 and 1920x1080 (moving shapes on a gradient), each run two ways, as a
camera faster than inference (newest frame wins, so the loop runs at the rate inference allows unless
something else takes its place):

- ``camera``: frames from memory at 600 fps through the whole loop (capture thread with preprocessing, chain,
  presenter thread with overlay and writer): a camera's frames arrive in memory, so nothing is decoded;
- ``file``: an mp4v clip written with OpenCV into a temporary folder, played with ``--realtime --loop`` at 600
  fps: the capture thread decodes it, which at 1920x1080 is itself slower than the network here;

each with no output, with mp4 output at the frame's size, and with mp4 output of a window-sized overlay
(``--overlay-width 960``, 1280x720 and 1920x1080 only). Reported per row: loop fps / (1 / mean inference
latency) of the same run, overlay and output p50, end-to-end p50 (capture to written) against the mean
inference latency, and how many frames the writer kept. Then a file read without ``--realtime`` (every frame
written: the writer sets the pace) and the overlay alone, this version against the one before (git history),
on the same frames. ``--soak``: 10,000 camera frames at 1280x720 with mp4 output: RSS every 500 frames and
end-to-end latency per window (memory flat, no latency trend).

The model: ``--engines DIR --instance FILE``, or by default a small one made here under ``--work`` (reused when
present): the shipped stage-1 checkpoint (mess_edge/assets/cpu-mbv2-stage1.pt), a short stage 2 (1 epoch on 64
DigitScenes images), calibrated on 60, exported, built for ONNX Runtime, profiled, and its input-dependent
instance at <= 1 pp drop ((iii) of early_exit.py). Saves benchmarks/results/camera_resolution.{json,md}.

    python benchmarks/camera_resolution.py [--engines DIR --instance FILE] [--frames 400] [--soak] [--quick]
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
OLD_OVERLAY = "053278d"  # the commit whose overlay blended at the frame's size (issue 15's measurements)
TARGETS = {(640, 480): 0.95, (1280, 720): 0.9, (1920, 1080): 0.8}


def prepare(work):
    """The default model (see the module docstring): (engine folder, instance path), made once under work."""
    p = {k: os.path.join(work, v) for k, v in dict(data="data", stage2="stage2.pt", memo="memo.npz", onnx="onnx",
                                                    engines="engines", instance="instance.json").items()}
    if os.path.isfile(p["instance"]):
        return p["engines"], p["instance"]
    if not os.path.isdir(p["data"]):
        cli("data", "digitscenes", "--out", p["data"], "--n-train", 64, "--n-cal", 60, "--n-test", 60)
    if not os.path.isfile(p["stage2"]):
        cli("train", "--data", p["data"], "--stage", 2, "--init", os.path.join(ROOT, "mess_edge", "assets",
                                                                               "cpu-mbv2-stage1.pt"),
            "--space", "small", "--epochs", 1, "--loss-stride", 4, "--val-images", 16, "--out", p["stage2"])
    cli("calibrate", p["stage2"], "--data", p["data"], "--out", p["memo"])
    cli("export", p["stage2"], "--out", p["onnx"])
    cli("build", p["onnx"], "--backend", "ort", "--out", p["engines"])
    cli("profile", p["engines"], "--out", os.path.join(p["engines"], "lut.json"), "--min-seconds", 0.3)
    cli("search", "--memo", p["memo"], "--manifest", os.path.join(p["onnx"], "manifest.json"), "--lut",
        os.path.join(p["engines"], "lut.json"), "--setting", "input-dependent", "--max-drop", 1.0, "--out",
        p["instance"])
    return p["engines"], p["instance"]


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


def run_camera(cfg, frames, on_frame=None, on_output=None):
    """run_stream (loop.py) with a MemoryCamera in place of the OpenCV source."""
    from mess_edge.build.engine_set import load_engines
    from mess_edge.run import loop
    from mess_edge.run.chain import Chain, load_instance

    engines = load_engines(cfg.engines)
    with Chain(engines, load_instance(cfg.instance)) as chain:
        return loop._loop(cfg, chain, MemoryCamera(frames), engines, lambda line: None, on_frame, on_output)


def measure(engines, instance, kind, frames, clip, n, output, width, realtime=True):
    """One row: the run's summary reduced to what the table shows."""
    from mess_edge.run.loop import RunConfig, run_stream

    cfg = RunConfig(instance, engines, source="camera" if kind == "camera" else clip, output=output,
                    display=False, max_frames=n, realtime=realtime, loop=True, final_only_frames=0,
                    overlay_width=width, status_every_s=1e9)
    load0 = os.getloadavg()[0]
    s = run_camera(cfg, frames) if kind == "camera" else run_stream(cfg)
    lat = s["latency_ms"]

    def p50(k):
        return lat[k]["p50"] if lat.get(k) else None
    return {"source": kind, "output": "mp4" if output else "none", "overlay_width": width, "realtime": realtime,
            "frames": s["frames"], "fps": s["fps"], "inference_fps": s["inference_fps"],
            "ratio": s["fps"] / s["inference_fps"], "mean_inference_ms": s["mean_inference_ms"],
            "capture_fps": s["frames_in"] / s["wall_s"], "preprocess_p50_ms": p50("preprocess"),
            "present_wait_p50_ms": p50("present_wait"), "overlay_p50_ms": p50("overlay"), "output_p50_ms": p50("output"), "end_to_end_p50_ms": p50("end_to_end"),
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


def markdown(rows, alone, every_frame, soak_result, conditions):
    md = ["# `mess-edge run` at camera resolution", "",
          "Model: {model}. ONNX Runtime on the CPU, {threads} threads; sources faster than inference ({fps:g} fps, "
          "newest frame wins). 1-minute load average of this shared machine during the runs: {load}.".format(
              **conditions), "",
          "| source | size | output | loop fps | 1 / mean inference | **ratio** | target | capture fps | overlay p50 "
          "| output p50 | end-to-end p50 | e2e / mean inference | written |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out = "none" if r["output"] == "none" else "mp4 {}".format(
            "window {}".format(r["overlay_width"]) if r["overlay_width"] else "full size")
        md.append("| {} | {} | {} | {:.0f} | {:.0f} | **{:.2f}** | {} | {:.0f} | {} | {} | {} | {} | {} |".format(
            r["source"], r["size"], out, r["fps"], r["inference_fps"], r["ratio"],
            fmt(TARGETS.get(tuple(int(v) for v in r["size"].split("x")))) if r["output"] != "none" else "",
            r["capture_fps"], fmt(r["overlay_p50_ms"], "{:.2f} ms"), fmt(r["output_p50_ms"], "{:.2f} ms"),
            fmt(r["end_to_end_p50_ms"], "{:.1f} ms"),
            fmt(r["end_to_end_p50_ms"] / r["mean_inference_ms"] if r["end_to_end_p50_ms"] else None, "{:.1f}x"),
            "{} of {}".format(r["written"], r["frames"]) if r["output"] != "none" else "-"))
    md += ["", "Every frame written (a file without `--realtime`: the writer sets the pace, by design):", "",
           "| size | output | loop fps | 1 / mean inference | ratio | output p50 |", "|---|---|---:|---:|---:|---:|"]
    md += ["| {} | mp4 {} | {:.0f} | {:.0f} | {:.2f} | {} |".format(
        r["size"], "window {}".format(r["overlay_width"]) if r["overlay_width"] else "full size", r["fps"],
        r["inference_fps"], r["ratio"], fmt(r["output_p50_ms"], "{:.2f} ms")) for r in every_frame]
    md += ["", "The overlay alone (status text and legend included), median ms per frame, interleaved on the same "
           "frames; `old` is the overlay of {} (blend at the frame's size):".format(OLD_OVERLAY), "",
           "| size | " + " | ".join(alone[0]["ms"]) + " | old / new |",
           "|---|" + "---:|" * (len(alone[0]["ms"]) + 1)]
    md += ["| {} | {} | {} |".format(a["size"], " | ".join("{:.2f}".format(v) for v in a["ms"].values()),
                                     fmt(a["ms"].get("old", 0) / a["ms"]["new"] if "old" in a["ms"] else None,
                                         "{:.1f}x")) for a in alone]
    if soak_result:
        s = soak_result
        md += ["", "Soak: {} memory-camera frames at 1280x720, mp4 out ({} written), {:.0f} s: RSS growth after "
               "warm-up **{:+.2f} MB**, over the second half {:+.2f} MB; end-to-end p50 per 500 frames {} ms "
               "(slope {} ms per window); loop {:.0f} fps vs 1 / mean inference {:.0f} fps.".format(
                   s["frames"], s["written"], s["seconds"], s["rss_growth_after_warmup_mb"],
                   s["rss_growth_second_half_mb"],
                   " ".join("{:.1f}".format(v) for v in s["end_to_end_p50_per_window_ms"]),
                   fmt(s["end_to_end_p50_slope_ms_per_window"], "{:+.3f}"), s["fps"], s["inference_fps"])]
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=None)
    ap.add_argument("--instance", default=None)
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "camera_resolution"))
    ap.add_argument("--frames", type=int, default=400, help="frames per row")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads [default: physical cores]")
    ap.add_argument("--quick", action="store_true", help="150 frames per row, no soak")
    ap.add_argument("--soak", action="store_true", help="also 10,000 frames at 1280x720")
    ap.add_argument("--soak-frames", type=int, default=10000)
    ap.add_argument("--out", default="camera_resolution", help="result name under benchmarks/results/")
    args = ap.parse_args()
    if (args.engines is None) != (args.instance is None):
        sys.exit("--engines and --instance go together")
    engines, instance = (args.engines, args.instance) if args.engines else prepare(args.work)
    if args.quick:
        args.frames, args.soak = 150, False
    from mess_edge.build.engine_set import load_engines
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads(args.threads)
    manifest = load_engines(engines).manifest
    rows, alone, every_frame, loads = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="mess-camres-") as tmp:
        for size in SIZES:
            frames = scenes(size)
            clip = write_clip(os.path.join(tmp, "clip_{}x{}.mp4".format(*size)), frames)
            out = os.path.join(tmp, "out.mp4")
            widths = [None] + ([WINDOW_WIDTH] if size[0] > WINDOW_WIDTH else [])
            for kind in ("camera", "file"):
                for output, width in [(None, None)] + [(out, w) for w in widths]:
                    r = measure(engines, instance, kind, frames, clip, args.frames, output, width)
                    r["size"] = "{}x{}".format(*size)
                    rows.append(r)
                    loads += r["load_average"]
                    print("{source:6} {size:9} {output:4} w={overlay_width} ratio {ratio:.2f} ({fps:.0f} / "
                          "{inference_fps:.0f} fps) e2e p50 {end_to_end_p50_ms} ms".format(**r), flush=True)
            r = measure(engines, instance, "file", frames, clip, args.frames // 2, out, widths[-1], realtime=False)
            r["size"] = "{}x{}".format(*size)
            every_frame.append(r)
            alone.append({"size": "{}x{}".format(*size), "ms": overlay_alone(frames, tuple(manifest["input_hw"]),
                                                                            manifest.get("classes") or ["0", "1"])})
        soak_result = soak(engines, instance, scenes((1280, 720)), args.soak_frames) if args.soak else None
    model = ("the short stage 2 of the shipped stage-1 checkpoint made by prepare() (instance (iii), "
             "input-dependent, <= 1 pp)" if args.engines is None else engines)
    with open(instance) as f:
        inst = json.load(f)
    conditions = {"model": model, "threads": args.threads or "default", "fps": CAMERA_FPS,
                  "load": "{:.1f}-{:.1f}".format(min(loads), max(loads))}
    payload = {"rows": rows, "every_frame": every_frame, "overlay_alone_ms": alone, "soak": soak_result,
               "instance": {"path": instance, "setting": inst.get("setting"),
                            "exits": [e["graph"] for e in inst.get("exits", [])]},
               "input_hw": manifest["input_hw"], "targets": {"{}x{}".format(*k): v for k, v in TARGETS.items()},
               "run_conditions": conditions}
    save(args.out, payload, markdown(rows, alone, every_frame, soak_result, conditions))


if __name__ == "__main__":
    main()
