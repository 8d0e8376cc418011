"""Profile and bench stages: time every graph of an engine folder on this device.

``profile_engines`` writes lut.json (SPEC_INTERFACES.md): every segment, head, final, upsample and the
monolithic graph timed alone on random inputs of its real shape (th_pix 0.5), plus the conditions.
``bench_engines`` prints each graph's latency beside its GMACs, and the chained final-only path
(segments -> final, which ends in the upsample; features kept as OrtValues / on the GPU) against the fastest monolithic
setting found, by paired interleaved runs.

What is timed: ORT runs through IOBinding with inputs already in OrtValues, as the chain runs them;
TensorRT runs the engine alone with inputs already in device buffers (no host copies): host wall clock
including the synchronisation, plus the GPU time from CUDA events (gpu_*_ms).
"""

import dataclasses
import os
import time

import numpy as np

from mess_edge.artifacts import write_json_atomic
from mess_edge.runtime import timing
from mess_edge.runtime.build import load_engines
from mess_edge.runtime.device import device_conditions, library_versions

LUT_FORMAT = "mess-edge-lut/1"
ROLE_ORDER = ("segment", "head", "final", "upsample", "monolithic")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    min_iters: int = 50        # at least this many timed runs per graph ...
    min_seconds: float = 1.0   # ... and at least this long (trtexec's --iterations and --duration)
    warmup_s: float = 0.5      # untimed runs before timing each graph
    th_pix: float = 0.5        # pixel-confidence threshold fed to heads and the final exit
    seed: int = 0              # random inputs


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
                th_pix=config.th_pix, timing=("ORT IOBinding, inputs as OrtValues" if engines.backend == "ort"
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
    for i, g in enumerate(graphs):
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
    lut["conditions"] = _conditions(engines, config, _threading(engines))
    write_json_atomic(out or os.path.join(engine_dir, "lut.json"), lut)
    return lut


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


def _threading(engines):
    """How ORT sessions were threaded here: the process pool (None if never configured) and the
    setting a session got."""
    if engines.backend != "ort":
        return None
    from mess_edge.runtime.ort_runner import ort_threading, session_options
    pool = ort_threading()
    return {"process_pool": pool._asdict() if pool is not None else None, "session": session_options()[1]}


# -- bench ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchConfig:
    min_iters: int = 30        # per-graph table: timed runs per graph (at least)
    min_seconds: float = 0.3   # per-graph table: seconds per graph (at least)
    warmup_s: float = 0.3      # untimed runs before each measurement
    pilot_s: float = 0.5       # seconds per monolithic setting when looking for the fastest one
    pairs: int = 200           # interleaved chain / monolithic pairs
    seed: int = 0


def _chain(engines, image, th_pix):
    """(fn -> labels, runners): the chained final-only path; features never leave the backend."""
    segs = engines.by_role("segment")
    final = engines.graph("final")  # last segment + final head + upsample -> labels
    names = [g["name"] for g in segs] + ["final"]
    if engines.backend == "ort":
        rs = [engines.runner(n).activate() for n in names]
        image_v = rs[0].ortvalue(image)
        ins = [g["inputs"][0]["name"] for g in segs]

        def run():
            v = image_v
            for r, name_in in zip(rs[:-1], ins):
                v = r.infer_ortvalues({name_in: v}, check_inputs=False)["feat"]
            return rs[-1].infer_ortvalues({"feat": v}, check_inputs=False)["labels"].numpy()
        return run, rs
    # TensorRT: one stream; each runner's first input reads the previous runner's output buffer
    rs = [engines.runner(names[0]).activate()]
    for g in segs[1:] + [final]:
        r = engines.runner(g["name"], stream=rs[0].stream).activate()
        r.use_device_input(g["inputs"][0]["name"], rs[-1].device_tensor("feat"))
        rs.append(r)

    def run():
        rs[0].enqueue({"image": image}, host_outputs=(), check_inputs=False)
        for r in rs[1:-1]:
            r.enqueue(host_outputs=(), check_inputs=False)
        rs[-1].enqueue(host_outputs=["labels"], check_inputs=False)
        rs[-1].synchronize()
        return np.array(rs[-1].host_output("labels"))
    return run, rs


def _monolithic_settings(engines, image):
    """[(description, fn -> labels, runner)] of the monolithic settings worth trying on this backend."""
    settings = []
    if engines.backend == "ort":
        r = engines.runner("monolithic").activate()
        v = r.ortvalue(image)
        settings.append(("{}, session.run".format(r.threading), lambda: r.infer({"image": image}, False)["labels"], r))
        settings.append(("{}, IOBinding".format(r.threading),
                         lambda: r.infer_ortvalues({"image": v}, False)["labels"].numpy(), r))
    else:
        r = engines.runner("monolithic", host_outputs=["labels"]).activate()

        def run():
            r.enqueue({"image": image}, check_inputs=False)
            r.synchronize()
            return np.array(r.host_output("labels"))
        settings.append(("TensorRT, pinned copies", run, r))
    return settings


def own_pool_pilot(path, threads, seconds, warmup_s, seed=0):
    """Median ms of an ORT graph in a session with its OWN spinning pool of ``threads`` (ORT's default
    setting). A process with the global pool cannot make such a session: bench runs this in a fresh one.
    """
    from mess_edge.runtime.ort_runner import OrtRunner, configure_ort_threads

    n = int(threads)
    configure_ort_threads(n, global_pool=False)
    with OrtRunner(path, threads=n, spinning=True) as r:
        feed = random_feed(r.input_metadata.values(), 0.5, np.random.default_rng(seed))
        return timing.time_fn(lambda: r.infer(feed, False), 20, seconds, warmup_s).median_ms


def _own_pool_in_subprocess(path, seconds, warmup_s):
    """own_pool_pilot in a child process with this process's thread count: (median ms, None) or
    (None, why it failed)."""
    import json
    import subprocess
    import sys

    from mess_edge.runtime.device import physical_cores
    from mess_edge.runtime.ort_runner import ort_threading

    threads = ort_threading().intra_threads if ort_threading() is not None else physical_cores()
    code = ("import json, sys; from mess_edge.runtime.profile import own_pool_pilot; print(json.dumps("
            "own_pool_pilot(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        out = subprocess.run([sys.executable, "-c", code, path, str(threads), str(seconds), str(warmup_s)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120 + 10 * seconds, check=True)
        return float(json.loads(out.stdout.decode().strip().splitlines()[-1])), None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as e:
        return None, "{}: {}".format(type(e).__name__, e)


def bench_engines(engine_dir, config=BenchConfig(), progress=None):
    """Per-graph latency / GMACs table and chained final-only vs the fastest monolithic setting.

    Returns {"rows": [{name, role, gmacs, median_ms, p90_ms, gmacs_per_s}], "monolithic_settings":
    [{setting, median_ms, paired}], "best_monolithic" (fastest in-process setting, the paired reference),
    "chain_median_ms", "monolithic_median_ms", "paired_ratio_median" (chain / monolithic, median over
    interleaved pairs), "paired_ratio_p10", "paired_ratio_p90", "ratio_vs_fastest_any" (chain median
    alone / fastest monolithic median, in-process or separate-process), "labels_agreement" (fraction of
    pixels where chain and monolithic labels agree), "pairs", "threading", ...}. Threading: as in
    profile_engines.
    """
    engines = load_engines(engine_dir)
    rng = np.random.default_rng(config.seed)
    pcfg = ProfileConfig(config.min_iters, config.min_seconds, config.warmup_s, 0.5, config.seed)
    rows = []
    graphs = [g for role in ROLE_ORDER for g in engines.by_role(role)]
    for i, g in enumerate(graphs):
        s = time_graph(engines, g["name"], pcfg, rng)[0]
        rows.append({"name": g["name"], "role": g["role"], "gmacs": g.get("gmacs"), "median_ms": s.median_ms,
                     "p90_ms": s.p90_ms, "gmacs_per_s": (g["gmacs"] / (s.median_ms / 1e3)) if g.get("gmacs") else None})
        if progress is not None:
            progress(i + 1, len(graphs), g["name"], s)
    h, w = engines.manifest["input_hw"]
    image = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    chain, chain_runners = _chain(engines, image, 0.5)
    settings = _monolithic_settings(engines, image)
    try:
        pilots = [timing.time_fn(fn, 20, config.pilot_s, config.warmup_s).median_ms for _, fn, _ in settings]
        best = int(np.argmin(pilots))
        mono = settings[best][1]
        agreement = float(np.mean(chain() == mono()))
        chain_alone = timing.time_fn(chain, 20, config.pilot_s, config.warmup_s).median_ms
        paired = timing.time_paired(mono, chain, config.pairs, config.warmup_s)
    finally:
        for r in chain_runners + [s[2] for s in settings]:
            if r.is_active:
                r.deactivate()
    listed = [{"setting": d, "median_ms": m, "paired": k == best} for k, ((d, _, _), m) in
              enumerate(zip(settings, pilots))]
    if engines.backend == "ort" and tuple(engines.sidecar["providers"]) == ("cpu",):
        median, why = _own_pool_in_subprocess(engines.path("monolithic"), config.pilot_s, config.warmup_s)
        listed.append({"setting": "own spinning pool, session.run, separate process", "median_ms": median,
                       "paired": False, "error": why})
    fastest = min(x["median_ms"] for x in listed if x["median_ms"] is not None)
    return {"rows": rows, "monolithic_settings": listed, "best_monolithic": settings[best][0],
            "chain_median_ms": paired.b.median_ms, "monolithic_median_ms": paired.a.median_ms,
            "paired_ratio_median": paired.ratio_median, "paired_ratio_p10": paired.ratio_p10,
            "paired_ratio_p90": paired.ratio_p90, "ratio_vs_fastest_any": chain_alone / fastest,
            "labels_agreement": agreement, "pairs": paired.n_pairs, "threading": _threading(engines),
            "backend": engines.backend,
            "precision": engines.precision, "device": engines.sidecar["device"]["id"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def format_bench(result):
    """The bench result as a text table plus a summary."""
    lines = ["{:<26} {:<10} {:>9} {:>10} {:>10} {:>10}".format("graph", "role", "GMACs", "median ms", "p90 ms",
                                                               "GMAC/s")]
    for r in result["rows"]:
        lines.append("{:<26} {:<10} {:>9.4f} {:>10.4f} {:>10.4f} {:>10}".format(
            r["name"], r["role"], r["gmacs"] or 0.0, r["median_ms"], r["p90_ms"],
            "-" if r["gmacs_per_s"] is None else "{:.2f}".format(r["gmacs_per_s"])))
    lines.append("")
    for s in result["monolithic_settings"]:
        lines.append("monolithic [{}]: {}{}".format(s["setting"], "failed: {}".format(s.get("error"))
                                                   if s["median_ms"] is None else "{:.4f} ms".format(s["median_ms"]),
                                                   "  <- paired reference" if s["paired"] else ""))
    lines.append("chained final-only vs best monolithic [{}], {} paired runs: chain {:.4f} ms, monolithic "
                 "{:.4f} ms, ratio median {:.3f} (p10 {:.3f}, p90 {:.3f}); chain alone vs fastest setting {:.3f}; labels "
                 "agree on {:.2%} of pixels".format(result["best_monolithic"], result["pairs"],
                                                    result["chain_median_ms"], result["monolithic_median_ms"],
                                                    result["paired_ratio_median"], result["paired_ratio_p10"],
                                                    result["paired_ratio_p90"], result["ratio_vs_fastest_any"],
                                                    result["labels_agreement"]))
    return "\n".join(lines)
