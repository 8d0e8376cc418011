"""Soak test of `mess-edge run`: 10,000 frames of a looped small video through the whole loop (capture thread,
preprocessing, early-exit chain, presenter thread: overlay, mp4 writer), with the process's resident memory (RSS)
read every 500 frames and the frame-to-output latency (capture to written) per 500-frame window and between the
start and the end of the run: it must not grow.

A leak of even 1 KB per frame shows up as ~10 MB over the run; the check asserts the growth from the first
checkpoint after warm-up (frame 1,000) to the end stays under --max-growth-mb. With the mp4 output on, the
muxer holds a small per-frame index until the file is closed (tens of bytes a frame, measured ~0.4 MB over
the second half of 10,000 frames vs ~0.1 MB with --no-output): that is the container, not the loop.
Frame-to-output latency of a file read without drops includes the wait in the 2-frame read-ahead queue. Saves
benchmarks/results/soak.{json,md} (or --save-as NAME). Default: the tiny 64x64 engines of tests/_fixtures.py (needs the `onnx`
package to write them); on a device, pass --engines DIR --instance FILE instead. About a minute on 2 cores.

    python benchmarks/soak.py [--frames 10000] [--every 500] [--engines DIR --instance FILE] [--no-output]
    python benchmarks/soak.py --engines DIR --instance FILE --video CLIP_600FPS.mp4 --realtime --save-as soak_realtime
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from mess_edge.runtime.ort_runner import configure_ort_threads  # noqa: E402
from mess_edge.run.loop import RunConfig, run_stream  # noqa: E402


def rss_mb():
    """Resident set size of this process now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2.0 ** 20


def make_engines(folder):
    """Tiny engines (64x64, 3 exit points, 2 heads each) and an input-dependent instance; their paths."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from _fixtures import make_onnx_dir

    from mess_edge.build.builder import build_engines

    make_onnx_dir(os.path.join(folder, "onnx"), input_hw=(64, 64), widths=(8, 16, 16), num_classes=5)
    engines = build_engines(os.path.join(folder, "onnx"), "ort", out_dir=os.path.join(folder, "engines"))
    instance = os.path.join(folder, "instance.json")
    exits = [{"exit": k, "graph": "head_e{}_c1b1r0h0".format(k), "arch": {}, "th_img": 0.6} for k in (0, 1)]
    from mess_edge.artifacts import sha256_file

    with open(instance, "w") as f:  # provenance: the manifest these engines were built from
        json.dump({"format": "mess-edge-instance/1", "setting": "input-dependent", "final": True, "th_pix": 0.5,
                   "policy": "edge", "exits": exits,
                   "manifest_sha256": sha256_file(os.path.join(folder, "onnx", "manifest.json"))}, f)
    return engines, instance


def make_video(path, n_frames=100, size=64):
    """A short clip of random discs on a brightening background (mp4v)."""
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (size, size))
    rng = np.random.default_rng(0)
    for i in range(n_frames):
        img = np.full((size, size, 3), 40 + i, np.uint8)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(8, size - 8, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(img, (x, y), int(rng.integers(4, 16)), colour, -1)
        writer.write(img)
    writer.release()
    return path


def soak(engines, instance, video, frames, every, output, threads, realtime=False):
    configure_ort_threads(threads)  # this process owns its ONNX Runtime use, as `mess-edge run` does
    e2e = np.zeros(frames, np.float64)  # preallocated: the probe itself must not grow the heap
    infer = np.zeros(frames, np.float64)
    rss = []
    t0 = time.perf_counter()
    count = [0, 0]  # frames processed, frames output (the capture's frame index keeps counting across loops)

    def on_frame(index, result, to_result_ms):
        k = count[0]
        infer[k] = result.times_ms["total"]
        count[0] = k + 1
        if (k + 1) % every == 0:
            rss.append((k + 1, rss_mb(), time.perf_counter() - t0, count[1]))

    def on_output(index, end_to_end_ms):  # the presenter's thread when there is an output
        e2e[count[1]] = end_to_end_ms
        count[1] += 1

    rss.append((0, rss_mb(), 0.0, 0))
    load = [os.getloadavg()[0]]  # latency differences between start and end often are the machine's load
    cfg = RunConfig(instance, engines, source=video, loop=True, max_frames=frames, output=output, display=False,
                    status_every_s=1e9, realtime=realtime)
    stats = run_stream(cfg, on_frame=on_frame, on_output=on_output)
    load.append(os.getloadavg()[0])
    stats["load_average_start_end"] = load
    return stats, rss, e2e[:count[1]], infer[:count[0]]


def percentiles(x):
    return {"p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--every", type=int, default=500, help="frames between RSS readings")
    ap.add_argument("--engines", default=None, help="engine folder (default: tiny fixture engines)")
    ap.add_argument("--instance", default=None, help="instance.json for --engines")
    ap.add_argument("--video", default=None, help="video to loop (default: a generated 64x64 clip)")
    ap.add_argument("--no-output", action="store_true", help="do not write the overlay video")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--realtime", action="store_true",
                    help="play the clip at its fps, newest frame wins (a camera); with --video at a high fps, "
                         "capture runs faster than inference")
    ap.add_argument("--max-growth-mb", type=float, default=10.0)
    ap.add_argument("--save-as", default="soak", help="results name under benchmarks/results/")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mess-soak-") as tmp:
        if args.engines is None:
            engines, instance = make_engines(tmp)
        elif args.instance is None:
            sys.exit("--engines needs --instance")
        else:
            engines, instance = args.engines, args.instance
        video = args.video or make_video(os.path.join(tmp, "loop.mp4"))
        output = None if args.no_output else os.path.join(tmp, "soak.mp4")
        stats, rss, e2e, infer = soak(engines, instance, video, args.frames, args.every, output, args.threads,
                                      args.realtime)
    warm = next((r for r in rss if r[0] >= 2 * args.every), rss[-1])
    growth = rss[-1][1] - warm[1]
    half = next((r for r in rss if r[0] >= rss[-1][0] // 2), rss[-1])  # a leak keeps growing; warm-up does not
    k = min(args.every, len(e2e) // 2)  # outputs per window (fewer than frames when the presenter skips)
    first, last = percentiles(e2e[:k]), percentiles(e2e[-k:])
    ki = min(args.every, len(infer) // 2)
    windows = [percentiles(e2e[a[3]:b[3]]) if b[3] > a[3] else None for a, b in zip(rss, rss[1:])]
    result = {"frames": stats["frames"], "frames_in": stats["frames_in"], "dropped": stats["dropped"],
              "corrupt": stats["corrupt"], "exit_histogram": stats["exit_histogram"], "wall_s": stats["wall_s"],
              "fps": stats["fps"], "inference_fps": stats["inference_fps"], "frames_written": stats["frames_written"],
              "not_presented": stats["not_presented"], "realtime": args.realtime,
              "rss_mb": [{"frame": f, "rss_mb": round(m, 2), "t_s": round(t, 2), "outputs": n} for f, m, t, n in rss],
              "end_to_end_ms_windows": windows,
              "rss_growth_mb": growth, "rss_growth_from_frame": warm[0], "max_growth_mb": args.max_growth_mb,
              "rss_growth_second_half_mb": rss[-1][1] - half[1],
              "end_to_end_ms_first": first, "end_to_end_ms_last": last,
              "inference_ms_p50_first": float(np.median(infer[:ki])),
              "inference_ms_p50_last": float(np.median(infer[-ki:])),
              "latency_window_outputs": k, "output_video": output is not None,
              "load_average_start_end": stats["load_average_start_end"],
              "engines": "tiny fixture (64x64)" if args.engines is None else args.engines}
    md = ["# Soak: {} frames through `mess-edge run` (looped video{}, output {})".format(
        stats["frames"], ", realtime" if args.realtime else "", "mp4" if output else "off"), "",
        "| frame | RSS (MB) | elapsed (s) | frame-to-output p50 / p90 / p99 (ms), outputs since the last row |",
        "|---:|---:|---:|---:|"]
    md += ["| {} | {:.1f} | {:.1f} | {} |".format(f, m, t, "{p50:.1f} / {p90:.1f} / {p99:.1f}".format(**w) if w else "")
           for (f, m, t, _), w in zip(rss, [None] + windows)]
    md += ["", "RSS growth from frame {} to the end: **{:+.2f} MB** (limit {} MB); over the second half {:+.2f} MB."
           .format(warm[0], growth, args.max_growth_mb, result["rss_growth_second_half_mb"]),
           "Frame-to-output latency (capture to written), first vs last {} outputs: p50 {:.2f} vs {:.2f}, p90 "
           "{:.2f} vs {:.2f}, p99 {:.2f} vs {:.2f} ms; inference p50 {:.3f} vs {:.3f} ms.".format(
               k, first["p50"], last["p50"], first["p90"], last["p90"], first["p99"], last["p99"],
               result["inference_ms_p50_first"], result["inference_ms_p50_last"]),
           "({}; 1-minute load average {:.1f} at the start, {:.1f} at the end.)".format(
               "Newest frame wins at capture and at the presenter" if args.realtime else
               "A file read without drops: the frame-to-output latency includes the wait in the 2-frame queue",
               *stats["load_average_start_end"]),
           "Loop: {:.0f} fps over {:.1f} s vs 1 / mean inference latency {:.0f} fps; frames in {}, dropped {}, "
           "corrupt {}; written {}, not presented {}; exits {}.".format(
               stats["fps"], stats["wall_s"], stats["inference_fps"], stats["frames_in"], stats["dropped"],
               stats["corrupt"], stats["frames_written"], stats["not_presented"], stats["exit_histogram"])]
    from _common import save
    save(args.save_as, result, "\n".join(md))
    if growth > args.max_growth_mb:
        sys.exit("RSS grew {:.2f} MB (> {} MB): a leak".format(growth, args.max_growth_mb))


if __name__ == "__main__":
    main()
