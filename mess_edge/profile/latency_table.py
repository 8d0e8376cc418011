"""Profile stage: time every graph of an engine folder on this device.

``profile_engines`` writes lut.json (docs/artifacts.md): every segment, head, final and upsample graph
timed on random inputs of its real shape (th_pix = confidence.DEFAULT_TH_PIX) - with ONNX Runtime inside chained frames, as the
runtime runs them (``_time_in_chain``); with TensorRT inside frames wired and queued exactly as ``run`` does
(``_time_in_chain_trt``, run/chain_backends.wire_trt), from CUDA events - and the monolithic graph
alone, plus the conditions. With ONNX Runtime also every *stretch*: consecutive backbone graphs that the
chain runs as one fused graph when no selected exit reads the features between them (runtime/fuse.py); the
search prices a stretch by its own time, not the sum of its pieces' (search/costs.py).
``time_graph`` is shared with bench.py, which sets the chained path against the monolithic graph.

What is timed: ORT runs through IOBinding with inputs already in OrtValues, as the chain runs them;
TensorRT (in chain): every stage's CUDA-event time inside whole queued frames (*_ms = gpu_*_ms); alone
(``--alone``, and the monolithic graph): the engine with inputs already in device buffers, host wall clock
including the synchronisation, plus the GPU time from CUDA events (gpu_*_ms).
"""

import collections
import dataclasses
import os

import numpy as np

from mess_edge.artifacts import check_outputs, folder_lock, write_json_atomic
from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.errors import MessError
from mess_edge.profile import timing
from mess_edge.runtime.device import device_conditions, library_versions
from mess_edge.build.engine_set import engine_files, load_engines

LUT_FORMAT = "mess-edge-lut/1"
ROLE_ORDER = ("segment", "head", "final", "upsample", "monolithic")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    min_iters: int = 50        # at least this many timed runs per graph ...
    min_seconds: float = 1.0   # ... and at least this long (trtexec's --iterations and --duration)
    warmup_s: float = 0.5      # untimed runs before timing each graph
    th_pix: float = DEFAULT_TH_PIX  # pixel-confidence threshold fed to heads and the final exit
    seed: int = 0              # random inputs
    in_chain: bool = True      # ORT: time each graph inside chained frames (see _time_in_chain), not alone
    stretches: bool = True     # ORT: also time every fused stretch of backbone graphs a chain may run
    visit_warm_frames: int = 1   # ORT in chain: untimed frames of one chain before its timed ones, per visit ...
    visit_timed_frames: int = 8  # ... and timed frames (a deployed loop runs one chain frame after frame)
    device_index: int = 0        # TensorRT: the CUDA device the engines run on
    overhead: bool = True        # also measure the chain's own per-frame overhead (profile/overhead.py)


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
        return _time_alone(runner, config, rng)


def _time_alone(runner, config, rng):
    fn, gpu_ms = _timed_call(runner, random_feed(runner.input_metadata.values(), config.th_pix, rng))
    stats = timing.time_fn(fn, config.min_iters, config.min_seconds, config.warmup_s)
    return stats, (timing.summarize(gpu_ms[-stats.n:]) if gpu_ms else None)


def _conditions(engines, config, threading):
    if engines.backend != "ort" and config.in_chain:
        how = ("TensorRT: segments, heads, upsamples and final timed by CUDA events inside whole frames queued on "
               "one stream as the chain runs them (one host sync per frame); monolithic alone")
    elif engines.backend != "ort":
        how = "TensorRT engine alone, no host copies: *_ms host wall clock incl. sync, gpu_*_ms CUDA events"
    elif config.in_chain:
        how = ("ORT IOBinding, inputs as OrtValues; segments, heads, upsamples, final and fused stretches timed "
               "inside chained frames (every set of read exit points)")
    else:
        how = "ORT IOBinding, inputs as OrtValues; every graph timed alone"
    cond = device_conditions()
    cond.update(threads=threading, backend=engines.backend, precision=engines.precision,
                versions=library_versions(engines.backend), build_versions=engines.sidecar["versions"],
                warmup_s=config.warmup_s, min_iters=config.min_iters, min_seconds=config.min_seconds,
                th_pix=config.th_pix, visit_frames=[config.visit_warm_frames, config.visit_timed_frames],
                timing=how)
    return cond


def profile_engines(engine_dir, out=None, config=ProfileConfig(), progress=None):
    """Time every graph of ``engine_dir`` and write the LUT atomically to ``out`` (default
    ENGINE_DIR/lut.json): an interrupted run leaves no file. ``progress(i, n, name, stats)`` is called
    after each graph. Returns the LUT dict.

    ORT threading is the process's: call ort_runner.configure_ort_threads() first for the global pool
    (the commands do), as the process that runs the chain will.
    """
    engines = load_engines(engine_dir, device_index=config.device_index)
    out = out or os.path.join(engine_dir, "lut.json")
    check_outputs([("--out", out)], [("ENGINE_DIR", p) for p in engine_files(engines)])
    with folder_lock(engine_dir, "mess-edge profile"):  # two profiles of one folder would time each other
        lut = _profile(engines, config, progress)
        write_json_atomic(out, lut)
    return lut


def _profile(engines, config, progress):
    """The LUT dict of an EngineSet (see profile_engines)."""
    rng = np.random.default_rng(config.seed)
    graphs = [g for role in ROLE_ORDER for g in engines.by_role(role)]
    lut = {"format": LUT_FORMAT, "device": engines.sidecar["device"], "backend": engines.backend,
           "precision": engines.precision, "input_size": engines.manifest["input_hw"],
           "manifest_sha256": engines.sidecar["manifest_sha256"],
           "checkpoint_sha256": engines.manifest.get("checkpoint_sha256"), "conditions": None,
           "segments": [], "heads": [], "final": None, "upsample": None, "upsamples": [], "monolithic": None}
    fused = _fuse_stretches(engines) if config.stretches and engines.backend == "ort" else {}
    in_chain, stretches, in_chain_gpu = {}, {}, {}
    if config.in_chain and engines.backend == "ort":
        in_chain, stretches = _time_in_chain(engines, config, rng, fused)
    elif config.in_chain:
        in_chain_gpu = _time_in_chain_trt(engines, config, rng)
    else:
        for key, (names, runner) in fused.items():
            with runner:
                stretches[key] = _time_alone(runner, config, rng)[0]
    total = len(graphs) + len(stretches)
    for i, g in enumerate(graphs):
        if g["name"] in in_chain:
            stats, gpu = in_chain[g["name"]], None
        elif g["name"] in in_chain_gpu:
            stats = gpu = in_chain_gpu[g["name"]]
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
            progress(i + 1, total, g["name"], stats)
    if fused:  # absent (not empty) when not profiled: the search then sums the pieces of every stretch
        lut["stretches"] = []
        for i, key in enumerate(sorted(stretches)):
            names = fused[key][0]
            lut["stretches"].append(dict({"from": key[0], "to": key[1], "graphs": names},
                                         **timing.stats_dict(stretches[key])))
            if progress is not None:
                progress(len(graphs) + i + 1, total, "+".join(names), stretches[key])
    lut["upsample"] = _final_upsample(engines, lut["upsamples"])
    if config.overhead and lut["final"] is not None:
        from mess_edge.profile.overhead import frame_overhead

        lut["frame_overhead_ms"], lut["frame_overhead_paths"] = frame_overhead(engines, lut, config, rng)
    lut["conditions"] = _conditions(engines, config, threading_setting(engines))
    return lut


def _fuse_stretches(engines):
    """{(first, last): (graph names, inactive OrtRunner of the fused graph)} for every stretch of >= 2 backbone
    graphs (segment k = graph k, final = graph N) that some chain may run: first is 0 or just after an exit
    point with heads, last is an exit point with heads or the final graph. Stretches that fail to fuse are
    left out: the chain runs those unfused, and the search sums their pieces."""
    from mess_edge.runtime.fuse import fuse_graphs
    from mess_edge.runtime.ort_runner import OrtRunner

    names = [g["name"] for g in engines.by_role("segment")] + ["final"]
    n = len(names) - 1
    points = sorted({h["exit"] for h in engines.by_role("head")})
    out = {}
    for first in [0] + [p + 1 for p in points]:
        for last in [p for p in points if p > first] + [n]:
            if last > first:
                try:
                    model, _ = fuse_graphs(engines, names[first:last + 1])
                except MessError:
                    continue
                label = "{}..{} (fused)".format(names[first], names[last])
                out[(first, last)] = (names[first:last + 1], OrtRunner(model, providers=engines.sidecar["providers"],
                                                                       name=label))
    return out


def _time_in_chain_trt(engines, config, rng):
    """{graph: GPU TimingStats}: every segment, head, upsample and the final graph timed by its CUDA events inside
    whole frames wired and queued as the runtime's TrtBackend runs them (run/chain_backends.wire_trt: one stream,
    features in device buffers, one host sync per frame), so the table times what ``run`` executes."""
    import time

    from mess_edge.run.chain import _upsample_for
    from mess_edge.run.chain_backends import wire_trt

    segments = [g["name"] for g in engines.by_role("segment")]
    heads = {g["name"]: g["exit"] for g in engines.by_role("head")}
    ups = {h: _upsample_for(engines, h) for h in heads}
    h, w = engines.manifest["input_hw"]
    image = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    th = np.array([config.th_pix], np.float32)
    runners, _ = wire_trt(engines, segments, heads, True, ups)
    try:
        order = list(runners.items())

        def frame():
            for key, r in order:
                feed = {"image": image} if key == segments[0] else ({"th_pix": th} if key in heads else {})
                r.enqueue(feed, check_inputs=False)
            order[-1][1].synchronize()  # one host sync per frame, as when the host reads the last exit
            return [(ups[key[3:]] if key.startswith("up:") else key, r.gpu_ms()) for key, r in order]

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < config.warmup_s:
            frame()
        samples, n, t0 = collections.defaultdict(list), 0, time.perf_counter()
        while n < config.min_iters or time.perf_counter() - t0 < config.min_seconds:
            for name, ms in frame():
                samples[name].append(ms)
            n += 1
    finally:
        for r in reversed(list(runners.values())):
            r.deactivate()
    return {name: timing.summarize(ms) for name, ms in samples.items()}


def _time_in_chain(engines, config, rng, fused):
    """({graph name: TimingStats}, {(first, last): TimingStats}): every segment, head, upsample, the final
    graph and every stretch of ``fused`` (_fuse_stretches), each timed inside chained frames the way the
    runtime runs them.

    Why: on a CPU a graph timed alone in a loop keeps its weights and activations in cache; inside a frame
    the graphs before it have evicted them. Measured on cpu-drn with one thread: timed alone, heads ran
    1.23x, segment_1 1.31x and segment_0 1.11x faster than inside the chain, so a table of solo timings
    predicted chained latency ~12% low. A frame is what a chain whose exits read the exit points ``cuts``
    runs for one image: the backbone in the stretches runtime/fuse.py cuts it into (a stretch of several
    graphs fused, as in ``fused``), after each cut one head of that exit point, until the image leaves at a
    random cut (that head's upsample ends the frame) or reaches the final graph. No upsample runs after a
    head the image passes, as in the chain: one there would cool the caches of the next stretch and time it
    high. One sweep visits the chain of every set of cuts once, in a random order, with the next head of
    each cut point (round robin); a visit runs ``visit_warm_frames`` untimed frames, then
    ``visit_timed_frames`` timed ones, as a deployed loop runs its chain frame after frame. Measured against
    the chains of benchmarks/lut_fidelity.py (1 thread, loaded 2-core machine): without the untimed frame the
    table predicted them 3-8% high (cpu-drn); with 1 timed frame per visit two profiles gave median signed
    errors of -0.3% and +5.5%, with 8 timed frames +1.4% and +0.9% (cpu-mbv2).
    Each call is timed on its own, features pass as OrtValues.
    Sweeps repeat until every graph and stretch has at least ``min_iters`` samples and ``min_seconds`` have
    passed. A graph no frame runs alone (a segment between two exit points without heads) is left out of the
    first dict.
    """
    import itertools
    import time

    from mess_edge.runtime.fuse import backbone_stretches

    segs = engines.by_role("segment")
    n = len(segs)
    path = [g["name"] for g in segs] + ["final"]  # backbone graph k
    inputs = [engines.graph(name)["inputs"][0]["name"] for name in path]
    heads = {}
    for h in engines.by_role("head"):
        heads.setdefault(h["exit"], []).append(h)
    ups = {tuple(u["inputs"][0]["shape"]): u["name"] for u in engines.by_role("upsample")}
    frames = [backbone_stretches(n, cuts) for k in range(len(heads) + 1)
              for cuts in itertools.combinations(sorted(heads), k)]
    head_list = [h for hs in heads.values() for h in hs]
    runners = {name: engines.runner(name) for name in path + [h["name"] for h in head_list]}
    runners.update((u, engines.runner(u)) for u in set(ups.values()))
    runners.update((key, runner) for key, (_, runner) in fused.items())
    timed = {h["name"] for h in head_list} | {ups[tuple(h["outputs"][0]["shape"])] for h in head_list}
    timed |= {(a, b) if (a, b) in fused else path[k] for stretches in frames for a, b in stretches
              for k in range(a, b + 1)}
    samples = {key: [] for key in timed}  # graph name or (first, last) -> ms
    try:
        for r in runners.values():
            r.activate()
        # The image stays a numpy array, bound as host memory by the first graph: the chain gets it so.
        image = rng.standard_normal(segs[0]["inputs"][0]["shape"]).astype(np.float32)
        th = runners["final"].ortvalue(np.array([config.th_pix], np.float32))
        turn = {k: itertools.cycle(hs) for k, hs in heads.items()}
        clock = time.perf_counter

        def call(key, feed, out, record):
            t0 = clock()
            value = runners[key].infer_ortvalues(feed, check_inputs=False)[out]
            if record:
                samples[key].append((clock() - t0) * 1e3)
            return value

        def stretch(a, b, x, record):
            if (a, b) in fused:
                return call((a, b), {inputs[a]: x}, "labels" if b == n else "feat", record)
            for k in range(a, b + 1):  # one graph, or a stretch that did not fuse: graph by graph, as the chain
                x = call(path[k], {inputs[k]: x}, "labels" if k == n else "feat", record)
            return x

        def frame(stretches, chosen, leave, record):
            x = image  # the first stretch reads the image, each later one the feature before it
            for j, (a, b) in enumerate(stretches):
                x = stretch(a, b, x, record)
                if b < n:
                    logits = call(chosen[b]["name"], {"feat": x, "th_pix": th}, "logits", record)
                    if j == leave:  # the image leaves here: its labels, and the frame ends
                        call(ups[tuple(chosen[b]["outputs"][0]["shape"])], {"logits": logits}, "labels", record)
                        return

        def sweep(record):
            for k in rng.permutation(len(frames)):
                chosen = {b: next(turn[b]) for _, b in frames[k] if b < n}  # this visit's chain: one head per cut
                for f in range(config.visit_warm_frames + config.visit_timed_frames):
                    leave = int(rng.integers(len(frames[k])))  # the cut the image leaves at; the last: final
                    frame(frames[k], chosen, leave, record and f >= config.visit_warm_frames)

        end = clock() + config.warmup_s
        sweep(False)
        while clock() < end:
            sweep(False)
        end = clock() + config.min_seconds
        while clock() < end or min(len(v) for v in samples.values()) < config.min_iters:
            sweep(True)
    finally:
        for r in runners.values():
            if r.is_active:
                r.deactivate()
    stats = {k: timing.summarize(v) for k, v in samples.items()}
    return ({k: v for k, v in stats.items() if not isinstance(k, tuple)},
            {k: v for k, v in stats.items() if isinstance(k, tuple)})


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
