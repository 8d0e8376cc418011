"""Bench stage: each graph's latency beside its GMACs, and the chained final-only path against the monolithic
graph, on this device.

``bench_engines`` times every graph alone (profile.time_graph), then the chained final-only path (segments ->
final, which ends in the upsample; features kept as OrtValues / on the GPU) against the fastest monolithic
setting found, by paired interleaved runs. ``format_bench`` prints the result as a table.
"""

import dataclasses
import os
import time

import numpy as np

from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.profile import timing
from mess_edge.build.engine_set import load_engines
from mess_edge.profile.latency_table import ROLE_ORDER, ProfileConfig, random_feed, threading_setting, time_graph


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    min_iters: int = 30        # per-graph table: timed runs per graph (at least)
    min_seconds: float = 0.3   # per-graph table: seconds per graph (at least)
    warmup_s: float = 0.3      # untimed runs before each measurement
    pilot_s: float = 0.5       # seconds per monolithic setting when looking for the fastest one
    pairs: int = 200           # interleaved chain / monolithic pairs
    seed: int = 0
    device_index: int = 0      # TensorRT: the CUDA device the engines run on


class _ChainHandle(object):
    """Lets the runtime's Chain sit in the list of runners bench deactivates at the end."""

    def __init__(self, chain):
        self.chain, self.is_active = chain, True

    def deactivate(self):
        self.chain.__exit__(None, None, None)
        self.is_active = False


def _chain(engines, image, th_pix, fused=True):
    """(fn -> labels, runners): the chained final-only path; features never leave the backend.

    ORT, ``fused``: exactly what the runtime runs for a final-only instance (chain.Chain, which fuses the
    segments no selected exit reads, i.e. here every segment with the final graph). ``fused=False``: one
    session per segment, features passed as OrtValues (the unfused chain, for comparison).
    """
    segs = engines.by_role("segment")
    names = [g["name"] for g in segs] + ["final"]
    if engines.backend == "ort" and fused:
        from mess_edge.run.chain import INSTANCE_FORMAT, Chain

        chain = Chain(engines, {"format": INSTANCE_FORMAT, "setting": "final-only", "exits": [], "final": True})
        chain.__enter__()
        return (lambda: chain.run(image).labels[None]), [_ChainHandle(chain)]
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
    # TensorRT: the chain's own wiring (run/chain_backends.wire_trt), one stream, one host sync at the end
    from mess_edge.run.chain_backends import wire_trt

    runners, _ = wire_trt(engines, names[:-1])
    rs = list(runners.values())

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
        feed = random_feed(r.input_metadata.values(), DEFAULT_TH_PIX, np.random.default_rng(seed))
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
    code = ("import json, sys; from mess_edge.profile.bench import own_pool_pilot; print(json.dumps("
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
    engines = load_engines(engine_dir, device_index=config.device_index)
    rng = np.random.default_rng(config.seed)
    pcfg = ProfileConfig(config.min_iters, config.min_seconds, config.warmup_s, DEFAULT_TH_PIX, config.seed)
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
    chain, chain_runners = _chain(engines, image, DEFAULT_TH_PIX)
    unfused = None
    if engines.backend == "ort":
        unfused, more = _chain(engines, image, DEFAULT_TH_PIX, fused=False)
        chain_runners += more
    settings = _monolithic_settings(engines, image)
    try:
        pilots = [timing.time_fn(fn, 20, config.pilot_s, config.warmup_s).median_ms for _, fn, _ in settings]
        best = int(np.argmin(pilots))
        mono = settings[best][1]
        agreement = float(np.mean(chain() == mono()))
        chain_alone = timing.time_fn(chain, 20, config.pilot_s, config.warmup_s).median_ms
        paired = timing.time_paired(mono, chain, config.pairs, config.warmup_s)
        unfused_ratio = None if unfused is None else timing.time_paired(
            mono, unfused, max(20, config.pairs // 4), config.warmup_s).ratio_median
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
            "labels_agreement": agreement, "pairs": paired.n_pairs, "unfused_paired_ratio_median": unfused_ratio, "threading": threading_setting(engines),
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
    if result.get("unfused_paired_ratio_median") is not None:
        lines.append("(the runtime fuses the segments no selected exit reads; one session per segment instead: "
                     "ratio median {:.3f})".format(result["unfused_paired_ratio_median"]))
    return "\n".join(lines)
