"""The chained runtime's own cost per frame: what ``run`` pays beyond the graphs the latency table times.

A frame through run/chain.Chain costs the graphs' times plus Python glue: stage bookkeeping, feeding and
binding, the confidence read back to the host, the decision, the label-map copy. The table times graphs by
``infer_ortvalues`` (TensorRT: CUDA events) alone, so a search pricing only graphs predicts ``run`` low
(issue 13: -11% on the demo's instance). ``frame_overhead`` runs the real Chain, as ``bench --instance`` times
it (perf_counter around ``Chain.run``), on the final-only path and on one single-exit path per exit point,
and subtracts what the table says that path's graphs cost (the same mean_ms entries the search reads). The
difference is the overhead of a frame leaving at that exit; the search adds it per exit taken
(search/costs.py). It also absorbs what differs between the table's frames and the chain's, which is what a
prediction of ``run`` needs.
"""

import time

import numpy as np

from mess_edge.run.chain import INSTANCE_FORMAT, Chain


def _path_cost(lut, names, heads, exit_point, head):
    """Table mean ms of the graphs the chain runs on one path: backbone graphs 0..last (one fused stretch
    when the table has it), then ``head`` and its upsample (early exit) or nothing more (final graph)."""
    last = len(names) - 1 if head is None else exit_point
    stretch = [s for s in lut.get("stretches") or [] if s["from"] == 0 and s["to"] == last]
    by_name = {e["name"]: e for e in lut["segments"] + lut["heads"] + lut["upsamples"] + [lut["final"]]}
    total = stretch[0]["mean_ms"] if stretch else sum(by_name[n]["mean_ms"] for n in names[:last + 1])
    if head is not None:
        total += by_name[head["name"]]["mean_ms"] + by_name[heads[head["name"]]]["mean_ms"]
    return total


def frame_overhead(engines, lut, config, rng):
    """(frame_overhead_ms, detail): {"final": ms, "exits": {"<exit point>": ms}} per exit taken, each the mean
    wall time of ``Chain.run`` on that path minus the table's mean_ms of its graphs (clamped at 0: glue costs
    time), and {path: {"measured_mean_ms", "table_ms", "n"}}. Paths alternate, ``visit_timed_frames`` frames
    each after ``visit_warm_frames`` untimed ones, until each has ``min_iters`` frames and ``min_seconds``
    passed."""
    from mess_edge.run.chain import _upsample_for

    names = [g["name"] for g in engines.by_role("segment")] + ["final"]
    first_head = {}
    for h in engines.by_role("head"):
        first_head.setdefault(h["exit"], h)
    ups = {h["name"]: _upsample_for(engines, h["name"]) for h in first_head.values()}
    paths = {"final": ({"format": INSTANCE_FORMAT, "setting": "final-only", "exits": [], "final": True}, None)}
    for e, h in sorted(first_head.items()):
        inst = {"format": INSTANCE_FORMAT, "setting": "budgeted", "final": False,
                "exits": [{"exit": e, "graph": h["name"], "th_img": None}]}
        paths["exit_{}".format(e)] = (inst, h)
    image = rng.standard_normal([1, 3] + list(engines.manifest["input_hw"])).astype(np.float32)
    chains = {k: Chain(engines, inst) for k, (inst, _) in paths.items()}
    samples = {k: [] for k in paths}
    clock = time.perf_counter
    for c in chains.values():
        c.__enter__()
    try:
        for c in chains.values():
            c.warm_up(image)
        end = clock() + config.min_seconds
        while clock() < end or min(len(v) for v in samples.values()) < config.min_iters:
            for k in rng.permutation(sorted(paths)):
                for f in range(config.visit_warm_frames + config.visit_timed_frames):
                    t0 = clock()
                    chains[k].run(image)
                    if f >= config.visit_warm_frames:
                        samples[k].append((clock() - t0) * 1e3)
    finally:
        for c in chains.values():
            c.__exit__(None, None, None)
    detail, overhead = {}, {"final": None, "exits": {}}
    for k, (_, head) in paths.items():
        table = _path_cost(lut, names, ups, head and head["exit"], head)
        measured = float(np.mean(samples[k]))
        detail[k] = {"measured_mean_ms": measured, "table_ms": float(table), "n": len(samples[k])}
        ms = max(0.0, measured - table)
        if head is None:
            overhead["final"] = ms
        else:
            overhead["exits"][str(head["exit"])] = ms
    return overhead, detail
