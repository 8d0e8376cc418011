"""Profile stage: time every graph of an engine folder on this device.

``profile_engines`` writes lut.json (SPEC_INTERFACES.md): every segment, head, final and upsample graph
timed on random inputs of its real shape (th_pix 0.5) - with ONNX Runtime inside chained frames, as the
runtime runs them (``_time_in_chain``); with TensorRT alone, from CUDA events - and the monolithic graph
alone, plus the conditions.
``time_graph`` is shared with bench.py, which sets the chained path against the monolithic graph.

What is timed: ORT runs through IOBinding with inputs already in OrtValues, as the chain runs them;
TensorRT runs the engine alone with inputs already in device buffers (no host copies): host wall clock
including the synchronisation, plus the GPU time from CUDA events (gpu_*_ms).
"""

import dataclasses
import os

import numpy as np

from mess_edge.artifacts import write_json_atomic
from mess_edge.runtime import timing
from mess_edge.runtime.device import device_conditions, library_versions
from mess_edge.runtime.engines import load_engines

LUT_FORMAT = "mess-edge-lut/1"
ROLE_ORDER = ("segment", "head", "final", "upsample", "monolithic")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    min_iters: int = 50        # at least this many timed runs per graph ...
    min_seconds: float = 1.0   # ... and at least this long (trtexec's --iterations and --duration)
    warmup_s: float = 0.5      # untimed runs before timing each graph
    th_pix: float = 0.5        # pixel-confidence threshold fed to heads and the final exit
    seed: int = 0              # random inputs
    in_chain: bool = True      # ORT: time each graph inside chained frames (see _time_in_chain), not alone


def random_feed(metas, th_pix, rng):
    """{input name: array} for TensorMeta inputs: standard normal floats, th_pix for "th_pix", zeros else."""
    feed = {}
    for m in metas:
        if m.name == "th_pix":
            feed[m.name] = np.full(m.shape, th_pix, dtype=m.dtype)
        elif np.issubdtype(m.dtype, np.floating):
            feed[m.name] = rng.standard_normal(m.shape).astype(m.dtype)
        else:
            feed[m.name] = np.zeros(m.shape, dtype=m.dtype)
    return feed


def _timed_call(runner, feed):
    """(fn, gpu_ms) to run ``runner`` once on ``feed`` the way the chain does; ``gpu_ms`` collects the
    CUDA-event time of every TensorRT call (None for ORT)."""
    if hasattr(runner, "infer_ortvalues"):
        values = {k: runner.ortvalue(v) for k, v in feed.items()}
        runner.infer_ortvalues(values)  # validates once; the timed calls skip the checks
        return (lambda: runner.infer_ortvalues(values, check_inputs=False)), None
    runner.enqueue(feed, host_outputs=())  # inputs stay in device buffers from here on
    runner.synchronize()
    gpu_ms = []
    return (lambda: gpu_ms.append(runner.time_gpu_ms())), gpu_ms


def time_graph(engines, name, config, rng):
    """(host TimingStats, GPU TimingStats or None) of graph ``name`` of an EngineSet, timed alone. The
    host time is perf_counter around one call including its synchronisation; the GPU time (TensorRT)
    comes from CUDA events around the engine alone, warm-up excluded."""
    with engines.runner(name) as runner:
        fn, gpu_ms = _timed_call(runner, random_feed(runner.input_metadata.values(), config.th_pix, rng))
        stats = timing.time_fn(fn, config.min_iters, config.min_seconds, config.warmup_s)
        return stats, (timing.summarize(gpu_ms[-stats.n:]) if gpu_ms else None)


def _conditions(engines, config, threading):
    cond = device_conditions()
    cond.update(threads=threading, backend=engines.backend, precision=engines.precision,
                versions=library_versions(engines.backend), build_versions=engines.sidecar["versions"],
                warmup_s=config.warmup_s, min_iters=config.min_iters, min_seconds=config.min_seconds,
                th_pix=config.th_pix, timing=("ORT IOBinding, inputs as OrtValues; " + (
                    "segments, heads, upsamples and final timed inside chained frames" if config.in_chain else
                    "every graph timed alone") if engines.backend == "ort"
                                               else "TensorRT engine alone, no host copies: *_ms host wall "
                                                    "clock incl. sync, gpu_*_ms CUDA events"))
    return cond


def profile_engines(engine_dir, out=None, config=ProfileConfig(), progress=None):
    """Time every graph of ``engine_dir`` and write the LUT atomically to ``out`` (default
    ENGINE_DIR/lut.json): an interrupted run leaves no file. ``progress(i, n, name, stats)`` is called
    after each graph. Returns the LUT dict.

    ORT threading is the process's: call ort_runner.configure_ort_threads() first for the global pool
    (the commands do), as the process that runs the chain will.
    """
    engines = load_engines(engine_dir)
    rng = np.random.default_rng(config.seed)
    graphs = [g for role in ROLE_ORDER for g in engines.by_role(role)]
    lut = {"format": LUT_FORMAT, "device": engines.sidecar["device"], "backend": engines.backend,
           "precision": engines.precision, "input_size": engines.manifest["input_hw"],
           "manifest_sha256": engines.sidecar["manifest_sha256"],
           "checkpoint_sha256": engines.manifest.get("checkpoint_sha256"), "conditions": None,
           "segments": [], "heads": [], "final": None, "upsample": None, "upsamples": [], "monolithic": None}
    in_chain = {}
    if config.in_chain and engines.backend == "ort":
        in_chain = _time_in_chain(engines, config, rng)
    for i, g in enumerate(graphs):
        if g["name"] in in_chain:
            stats, gpu = in_chain[g["name"]], None
        else:
            stats, gpu = time_graph(engines, g["name"], config, rng)
        row = timing.stats_dict(stats)
        row["name"] = g["name"]
        if gpu is not None:
            row.update(gpu_median_ms=gpu.median_ms, gpu_mean_ms=gpu.mean_ms, gpu_p90_ms=gpu.p90_ms,
                       gpu_p99_ms=gpu.p99_ms)
        if g["role"] == "segment":
            lut["segments"].append(dict(row, index=g["index"]))
        elif g["role"] == "head":
            lut["heads"].append(dict(row, exit=g["exit"], arch=dict(g["arch"])))
        elif g["role"] == "upsample":
            lut["upsamples"].append(dict(row, input_shape=g["inputs"][0]["shape"]))
        else:
            lut[g["role"]] = row
        if progress is not None:
            progress(i + 1, len(graphs), g["name"], stats)
    lut["upsample"] = _final_upsample(engines, lut["upsamples"])
    lut["conditions"] = _conditions(engines, config, threading_setting(engines))
    write_json_atomic(out or os.path.join(engine_dir, "lut.json"), lut)
    return lut


def _time_in_chain(engines, config, rng):
    """{graph name: TimingStats} of every segment, head, upsample and the final graph, each timed inside
    chained frames the way the runtime runs them.

    Why: on a CPU a graph timed alone in a loop keeps its weights and activations in cache; inside a frame
    the graphs before it have evicted them. Measured on cpu-drn with one thread: timed alone, heads ran
    1.23x, segment_1 1.31x and segment_0 1.11x faster than inside the chain, so a table of solo timings
    predicted chained latency ~12% low. Each sweep here is one frame: every segment in order, after segment
    k one head of exit k (round robin over that exit's heads) and its upsample, then the final graph; each
    call is timed on its own, features pass as OrtValues. Sweeps repeat until every graph has at least
    ``min_iters`` samples and ``min_seconds`` have passed.
    """
    import itertools
    import time

    segs = engines.by_role("segment")
    heads = {}
    for h in engines.by_role("head"):
        heads.setdefault(h["exit"], []).append(h)
    ups = {tuple(u["inputs"][0]["shape"]): u["name"] for u in engines.by_role("upsample")}
    names = [g["name"] for g in segs] + [h["name"] for hs in heads.values() for h in hs] + ["final"]
    names += sorted(set(ups.values()))
    runners = {n: engines.runner(n).activate() for n in names}
    samples = {n: [] for n in names}
    try:
        first = segs[0]["inputs"][0]
        image = runners[segs[0]["name"]].ortvalue(rng.standard_normal(first["shape"]).astype(np.float32))
        th = runners[names[-1]].ortvalue(np.array([config.th_pix], np.float32))
        turn = {k: itertools.cycle(hs) for k, hs in heads.items()}
        clock = time.perf_counter

        def call(name, feed, out, record):
            t0 = clock()
            value = runners[name].infer_ortvalues(feed, check_inputs=False)[out]
            if record:
                samples[name].append((clock() - t0) * 1e3)
            return value

        def sweep(record):
            x = image
            for seg in segs:
                x = call(seg["name"], {seg["inputs"][0]["name"]: x}, "feat", record)
                for h in ([next(turn[seg["index"]])] if seg["index"] in turn else []):
                    logits = call(h["name"], {"feat": x, "th_pix": th}, "logits", record)
                    call(ups[tuple(h["outputs"][0]["shape"])], {"logits": logits}, "labels", record)
            call("final", {"feat": x}, "labels", record)

        end = clock() + config.warmup_s
        sweep(False)
        while clock() < end:
            sweep(False)
        end = clock() + config.min_seconds
        while clock() < end or min(len(v) for v in samples.values()) < config.min_iters:
            sweep(True)
    finally:
        for r in runners.values():
            r.deactivate()
    return {n: timing.summarize(v) for n, v in samples.items()}


def _final_upsample(engines, rows):
    """The spec's single "upsample" entry: the upsample of the early heads' logits (the one most heads use).

    The final graph ends in its own upsample, so this is paid only by images leaving at an early exit.
    """
    shapes = [h["outputs"][0]["shape"] for h in engines.by_role("head")]
    if shapes:
        common = max(shapes, key=shapes.count)
        for row in rows:
            if row["input_shape"] == common:
                return row
    return rows[0] if rows else None


def threading_setting(engines):
    """How ORT sessions were threaded here: the process pool (None if never configured) and the
    setting a session got."""
    if engines.backend != "ort":
        return None
    from mess_edge.runtime.ort_runner import ort_threading, session_options
    pool = ort_threading()
    return {"process_pool": pool._asdict() if pool is not None else None, "session": session_options()[1]}
