"""The measured speedup of an instance on this device: its chain against the final-only paths, frame by frame.

``interleaved`` is the timing harness: several inference paths over the same real frames, in alternating order
per frame (no path always runs on a warm cache), with their mIoU when labels are given. ``bench_instance``
(`mess-edge bench ENGINE_DIR --instance INSTANCE.json --data DIR`) sets an instance's chain against the chained
final-only path and the monolithic graph: the speedup the latency table predicted, measured. Device side: no
torch; frames come from a VOC-layout folder (with labels) or any `mess-edge run` source (without).
"""

import collections
import time

import numpy as np

from mess_edge.errors import MessError

# Frames each path runs in a row in `mess-edge bench --instance` (interleaved's ``block``): long enough that a
# path runs on its own warm caches as a deployment does, short enough (~0.1 s here) that the machine's drift
# falls on every path alike.
DEFAULT_BLOCK = 25


def interleaved(paths, frames, labels=None, num_classes=None, reps=1, warmup=5, show_progress=False, block=1):
    """Time ``paths`` ({name: fn(i, x) -> (label map int [H, W], graph taken or None)}) on ``frames`` (float32
    [1, 3, H, W] each), in blocks of ``block`` frames: every path runs a block's frames in a row before the next
    path takes the same block, the paths' order reversed on every other block (drift of the machine falls on
    all paths alike). ``block`` 1 is frame by frame: every path then starts on caches another path filled, which
    a deployment (one path, frame after frame) never sees; on a 2-core CPU that costs an early-exit instance
    3-4% more than the plain paths (benchmarks/bench_order.py). ``labels`` (uint8 [H, W] per frame, 255
    ignored) adds each path's mIoU, from the first pass.
    Returns {name: {"mean_ms", "median_ms", "n", "miou" (percent or None), "exits" ({graph: frames} or None),
    "taken" (graph per frame or None), "ms" (per frame, first pass)}}. ``show_progress``: a bar (or log lines)
    on stderr, advanced outside the timed calls."""
    from mess_edge.metrics import confusion_matrix, miou
    from mess_edge.progress import progress

    if not frames:
        raise MessError("got no frames to time; expected at least one image")
    if not (isinstance(block, int) and block >= 1):
        raise MessError("got block {!r}; expected a whole number of frames >= 1; try 25".format(block))
    names = list(paths)
    for i, x in enumerate(frames[:warmup]):
        for name in names:
            paths[name](i, x)
    times = {k: [] for k in names}
    conf = {k: np.zeros((num_classes, num_classes), np.int64) for k in names} if labels is not None else None
    taken = {k: [] for k in names}
    bar = progress(reps * len(frames), "bench {}".format(" / ".join(names)), show_progress, unit="frames")
    with bar:
        for rep in range(reps):
            for b, start in enumerate(range(0, len(frames), block)):
                stop = min(start + block, len(frames))
                for name in (names if (b + rep) % 2 == 0 else names[::-1]):
                    fn, ms = paths[name], times[name]
                    for i in range(start, stop):
                        t0 = time.perf_counter()
                        out, graph = fn(i, frames[i])
                        ms.append((time.perf_counter() - t0) * 1e3)
                        if rep == 0:
                            taken[name].append(graph)
                            if conf is not None:
                                conf[name] += confusion_matrix(out, labels[i], num_classes)
                bar.update(stop - start)
    result = collections.OrderedDict()
    for name in names:
        ms = np.asarray(times[name])
        graphs = taken[name] if any(g is not None for g in taken[name]) else None
        result[name] = {"mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)), "n": int(ms.size),
                        "miou": 100.0 * miou(conf[name]) if conf is not None else None,
                        "exits": dict(collections.Counter(graphs)) if graphs else None, "taken": graphs,
                        "ms": ms[:len(frames)].tolist()}
    return result


def load_frames(engines, data=None, split="test", source=None, limit=200):
    """Up to ``limit`` preprocessed frames (float32 [1, 3, H, W]) and their label maps at the input size (None
    from a ``source``): from the VOC-layout folder ``data`` (its ``split``), or any `mess-edge run` source."""
    import cv2

    from mess_edge.run.preprocess import Preprocessor

    if (data is None) == (source is None):
        raise MessError("got {}; expected exactly one of --data DIR or --source PATH".format(
            "both --data and --source" if data is not None else "neither --data nor --source"))
    hw = tuple(engines.manifest["input_hw"])
    pre = Preprocessor(hw, engines.manifest["normalization"])
    frames, labels = [], None
    if data is not None:
        from mess_edge.data.voc import VocDataset

        ds = VocDataset(data, split)
        labels = []
        for i in range(min(limit, len(ds))):
            image, label = ds.load(i)
            frames.append(pre(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)).copy())
            if label.shape != hw:
                label = cv2.resize(label, hw[::-1], interpolation=cv2.INTER_NEAREST)
            labels.append(label)
        return frames, labels
    from mess_edge.run.capture import Source

    src = Source(source).open()
    try:
        if src.live:
            raise MessError("got --source {}; expected a video file or images (a live source has no end to "
                            "time against); try recording a clip first".format(source))
        while len(frames) < limit:
            status, frame = src.read()
            if status == "end":
                break
            if status == "ok":
                frames.append(pre(frame).copy())
    finally:
        src.close()
    return frames, None


def bench_instance(engine_dir, instance_path, data=None, split="test", source=None, images=200, reps=3,
                   deadline_ms=None, show_progress=False, device_index=0, block=DEFAULT_BLOCK):
    """The instance's chain vs the chained final-only path and the monolithic graph on real frames, interleaved.
    Returns {"configs": interleaved's dict for "instance", "final-only", "monolithic", "baseline" (the faster
    final-only path by mean), "speedup" (baseline mean / instance mean), "paired_speedup_median" (per frame,
    baseline / instance), "predicted_speedup" (from the instance's cost table, ms instances only),
    "miou_drop_pp" (baseline - instance, with labels), "frames", "reps", ...}. ``deadline_ms``: anytime
    instances, as `mess-edge run --deadline-ms`. ``show_progress``, ``block``: as interleaved's. ``device_index``:
    TensorRT's CUDA device."""
    from mess_edge.run.chain import Chain, load_instance
    from mess_edge.build.engine_set import load_engines

    engines = load_engines(engine_dir, device_index=device_index)
    inst = load_instance(instance_path)
    if deadline_ms is not None and inst.get("setting") != "anytime":
        raise MessError("got --deadline-ms with a {} instance; expected an anytime instance; try mess-edge search "
                        "--setting anytime".format(inst.get("setting")))
    frames, labels = load_frames(engines, data, split, source, images)
    chains = [Chain(engines, inst, deadline_ms), Chain(engines, dict(inst, setting="final-only"))]
    monolithic = engines.by_role("monolithic")
    mono = engines.runner(monolithic[0]["name"]) if monolithic else None
    entered = []
    try:
        for c in chains:
            entered.append(c.__enter__())

        def run_chain(chain):
            def fn(i, x):
                r = chain.run(x)
                return r.labels, r.graph
            return fn

        paths = collections.OrderedDict([("instance", run_chain(chains[0])), ("final-only", run_chain(chains[1]))])
        if mono is not None:  # the original single-exit network, where the export has it
            mono.activate()
            image_input = monolithic[0]["inputs"][0]["name"]
            paths["monolithic"] = lambda i, x: (mono.infer({image_input: x}, check_inputs=False)["labels"][0], None)
        configs = interleaved(paths, frames, labels, engines.manifest["num_classes"], reps,
                              show_progress=show_progress, block=block)
    finally:
        for c in entered:
            c.__exit__(None, None, None)
        if mono is not None and mono.is_active:
            mono.deactivate()
    base = min((k for k in ("final-only", "monolithic") if k in configs), key=lambda k: configs[k]["mean_ms"])
    paired = np.asarray(configs[base]["ms"]) / np.asarray(configs["instance"]["ms"])
    predicted = (inst["final_only_cost"] / inst["expected_cost"]  # an anytime deadline is not in the table's cost
                 if inst.get("cost_unit") == "ms" and inst.get("expected_cost") and deadline_ms is None else None)
    for c in configs.values():
        c.pop("taken")
    return {"instance": instance_path, "engines": engine_dir, "setting": inst["setting"], "configs": configs,
            "baseline": base, "speedup": configs[base]["mean_ms"] / configs["instance"]["mean_ms"],
            # the table's prediction is against the chained final-only path: the like-for-like measured figure
            "speedup_vs_final_only": configs["final-only"]["mean_ms"] / configs["instance"]["mean_ms"],
            "paired_speedup_median": float(np.median(paired)), "predicted_speedup": predicted,
            "miou_drop_pp": (configs[base]["miou"] - configs["instance"]["miou"]) if labels is not None else None,
            "frames": len(frames), "reps": reps, "block": block, "deadline_ms": deadline_ms, "data": data,
            "split": split if data else None, "source": source,
            "backend": engines.backend, "device": engines.sidecar["device"]["id"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def format_instance_bench(r):
    """The result of bench_instance as a few lines."""
    lines = ["{:<12} {:>10} {:>10} {:>8}  {}".format("path", "mean ms", "median ms", "mIoU", "exits")]
    for name, c in r["configs"].items():
        lines.append("{:<12} {:>10.3f} {:>10.3f} {:>8}  {}".format(
            name, c["mean_ms"], c["median_ms"], "-" if c["miou"] is None else "{:.2f}".format(c["miou"]),
            ", ".join("{} {}".format(k, v) for k, v in sorted(c["exits"].items())) if c["exits"] else "-"))
    block = r.get("block", 1)
    text = "speedup {:.2f}x over {} (mean ms; {} frames x {} passes, interleaved {})".format(
        r["speedup"], r["baseline"], r["frames"], r["reps"],
        "frame by frame" if block == 1 else "in blocks of {} frames".format(block))
    if r["predicted_speedup"] is not None:
        text += "; the latency table predicted {:.2f}x".format(r["predicted_speedup"])
        if r["baseline"] != "final-only" and r.get("speedup_vs_final_only") is not None:
            text += " over the chained final-only path, measured {:.2f}x".format(r["speedup_vs_final_only"])
    if r["miou_drop_pp"] is not None:
        text += "; mIoU {:+.2f} pp".format(-r["miou_drop_pp"])
    return "\n".join(lines + [text])
