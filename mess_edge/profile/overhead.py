"""The chained runtime's own cost per frame: what ``run`` pays beyond the graphs the latency table times.

A frame through run/chain.Chain costs the graphs' times plus Python glue: stage bookkeeping, feeding and
binding, the confidence read back to the host, the decision, the label-map copy. The table times graphs by
``infer_ortvalues`` (TensorRT: CUDA events) alone, so a search pricing only graphs predicts ``run`` low
(issue 13: -11% on the demo's instance). ``frame_overhead`` runs the real Chain, as ``bench --instance`` times
it (perf_counter around ``Chain.run``), on the final-only path and on one single-exit path per exit point.
With ONNX Runtime the glue is timed directly, frame by frame: the frame's wall time minus the time spent
inside its graphs' ``infer_ortvalues`` calls (timed in the same frame, so a loaded machine slows both
alike). Measured on a machine at load 10 on 2 cores, the other way (the wall time minus what the table says
the path's graphs cost) came out 4-11% *below* zero: the table's noise, not the glue. TensorRT, whose work is
queued, uses that other way (clamped at 0). The search adds the overhead per exit taken (search/costs.py).
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
    wall time of ``Chain.run`` on that path minus (ORT) its graphs' time in the same frames, or (TensorRT)
    the table's mean_ms of its graphs, clamped at 0; and {path: {"measured_mean_ms", "table_ms", "n"
    (, "in_graphs_mean_ms")}}. Paths alternate, ``visit_timed_frames`` frames
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
    glue = {k: [] for k in paths}
    clock = time.perf_counter
    in_graphs = [0.0]  # ms spent inside infer_ortvalues during the current frame

    def timed(infer):
        def call(*args, **kwargs):
            t = clock()
            try:
                return infer(*args, **kwargs)
            finally:
                in_graphs[0] += (clock() - t) * 1e3
        return call

    for c in chains.values():
        c.__enter__()
        for r in getattr(c.backend, "runners", {}).values():
            if hasattr(r, "infer_ortvalues"):  # ORT: time the graphs inside the chain's own frames
                r.infer_ortvalues = timed(r.infer_ortvalues)
    direct = engines.backend == "ort"
    try:
        for c in chains.values():
            c.warm_up(image)
        end = clock() + config.min_seconds
        while clock() < end or min(len(v) for v in samples.values()) < config.min_iters:
            for k in rng.permutation(sorted(paths)):
                for f in range(config.visit_warm_frames + config.visit_timed_frames):
                    in_graphs[0] = 0.0
                    t0 = clock()
                    chains[k].run(image)
                    if f >= config.visit_warm_frames:
                        samples[k].append((clock() - t0) * 1e3)
                        glue[k].append(samples[k][-1] - in_graphs[0])
    finally:
        for c in chains.values():
            c.__exit__(None, None, None)
    detail, overhead = {}, {"final": None, "exits": {}}
    for k, (_, head) in paths.items():
        table = _path_cost(lut, names, ups, head and head["exit"], head)
        measured = float(np.mean(samples[k]))
        detail[k] = {"measured_mean_ms": measured, "table_ms": float(table), "n": len(samples[k])}
        if direct:
            detail[k]["in_graphs_mean_ms"] = measured - float(np.mean(glue[k]))
        ms = max(0.0, float(np.mean(glue[k])) if direct else measured - table)
        if head is None:
            overhead["final"] = ms
        else:
            overhead["exits"][str(head["exit"])] = ms
    return overhead, detail
