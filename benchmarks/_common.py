"""Helpers shared by the benchmarks: running mess-edge stages as subprocesses and saving result tables."""

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def chain_prices(lut):
    """(ms(entry), backbone(k), final-only ms) of a lut.json, priced as the chain runs: an entry's mean where the
    table has one (else its median); backbone(k) = segments 0..k, the fused stretch from 0 when the table has one
    (k = the number of segments: through the final graph)."""
    def ms(e):
        return float(e.get("mean_ms", e["median_ms"]))

    graphs = [ms(s) for s in lut["segments"]] + [ms(lut["final"])]
    fused = {int(s["to"]): ms(s) for s in lut.get("stretches", []) if int(s["from"]) == 0}

    def backbone(k):
        return fused[k] if k in fused else float(sum(graphs[:k + 1]))

    return ms, backbone, backbone(len(graphs) - 1)


def cli(*args, capture=True):
    """Run `mess-edge ARGS` in its own process; return stdout. Raises on failure with the stderr tail."""
    cmd = [sys.executable, "-m", "mess_edge.cli"] + [str(a) for a in args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE, text=True,
                       cwd=ROOT)
    if r.returncode:
        raise RuntimeError("mess-edge {} failed: {}".format(" ".join(map(str, args)), r.stderr[-1500:]))
    return r.stdout


def cli_json(*args):
    return json.loads(cli(*args))


def search_replay_bench(memo, manifest, lut, drop, test, engines, data, inst, bench):
    """`mess-edge search` (input-dependent, the default promise) at ``drop`` pp on ``memo`` into ``inst``, the
    instance replayed on the test memo ``test`` (a Memo), and `mess-edge bench --instance` on ``engines`` (200
    test images of ``data`` x 3, in bench's default blocks) into ``bench``: the row calibration_size and head_space
    report.
    measured_speedup is over the faster plain model (bench's baseline: final-only chain or monolithic graph),
    measured_vs_final_only over the path the prediction is made against; predicted_on_bench_images is the table's
    prediction at the exits the bench's own images take (the search's is at its calibration images' exits)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    from mess_edge.search.instance import simulate
    from mess_edge.search.risk import subset_memo

    cli("search", "--memo", memo, "--manifest", manifest, "--lut", lut, "--setting", "input-dependent",
        "--max-drop", drop, "--out", inst)
    with open(inst) as f:
        instance = json.load(f)
    replay = simulate(test, instance)
    cli("bench", engines, "--instance", inst, "--data", data, "--images", 200, "--reps", 3, "--json", bench)
    with open(bench) as f:
        b = json.load(f)
    # the same table priced at the exits the bench's images (the test split's first 200) take: what bench measures
    seen = simulate(subset_memo(test, np.arange(min(200, test.n_images))), instance)
    final = float(test.head_miou()[test.n_heads]) * 100.0
    return {"max_drop_pp": drop, "exits": [e["graph"] for e in instance["exits"]],
            "exit_fractions_cal": instance["exit_fractions"],
            "predicted_speedup": instance["final_only_cost"] / instance["expected_cost"],
            "test_final_miou": final, "test_drop_pp": final - replay["miou"],
            "test_exit_fractions": replay["exit_fractions"], "measured_speedup": b["speedup"],
            "baseline": b["baseline"], "measured_vs_final_only": b.get("speedup_vs_final_only", b["speedup"]),
            "bench_predicted_speedup": b["predicted_speedup"], "bench_drop_pp": b["miou_drop_pp"],
            "bench_exit_histogram": seen["exit_histogram"], "bench_block": b.get("block", 1),
            "predicted_on_bench_images": instance["final_only_cost"] / seen["expected_cost"]}


def exits_text(graphs):
    """["head_e0_c1b1r0h0", ...] -> "e0_c1b1r0h0 ..." ("final only" when empty), for result tables."""
    return " ".join(g.replace("head_", "") for g in graphs) or "final only"


def fractions_text(fractions):
    """{graph or "final": fraction} -> "e0_c1b1r0h0 45%, final 55%", for result tables."""
    return ", ".join("{} {:.0%}".format(k.replace("head_", ""), v) for k, v in fractions.items())


def conditions():
    sys.path.insert(0, ROOT)
    from mess_edge.runtime.device import cpu_model

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count()}


def save(name, payload, markdown):
    """Write benchmarks/results/NAME.json and NAME.md (atomically) and print the markdown."""
    sys.path.insert(0, ROOT)
    from mess_edge.artifacts import write_bytes_atomic, write_json_atomic

    os.makedirs(RESULTS, exist_ok=True)
    payload = dict(payload, conditions=conditions())
    write_json_atomic(os.path.join(RESULTS, name + ".json"), payload)
    write_bytes_atomic(os.path.join(RESULTS, name + ".md"), (markdown.rstrip() + "\n").encode())
    print(markdown)


def mean_std(values):
    import numpy as np

    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
