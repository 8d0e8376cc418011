"""Are MACs a good enough cost model? Rank correlation of MACs with measured latency, and what choosing an
instance on MACs instead of on the latency table costs on this device.

1. Spearman rank correlation (average ranks for ties) of each graph's MACs (manifest "gmacs") with its
   measured latency (lut.json "median_ms"): over the heads, over the backbone segments, and over both plus
   the final graph.
2. For a few budget fractions f and settings: the instance eq. 6 picks under a MACs budget of f x final-only
   GMACs (the search on the manifest, as `mess-edge search --budget-gmacs`) vs under a latency budget of
   f x final-only ms (as `mess-edge search --lut --budget-ms`), both searched on the same calibration memo
   (its first --max-images images, the ones then run through the chain);
   for each: latency predicted from the table, latency measured end to end through the chain (as in
   lut_fidelity.py: mean over images of the median of interleaved repetitions), calibration mIoU. Reported:
   how much slower (measured) the MACs-picked instance is.

Artifacts as in lut_fidelity.py (--engines DIR --memo FILE [...], or a small cpu-drn export built in
runs/bench-flops_vs_latency/). That quick build is untrained (every exit predicts background), so by default
its searches use a synthetic trained-like accuracy on the same heads (--accuracy, labelled in the output;
latencies stay real) and only budgeted instances, whose path does not depend on confidences, are compared.
No torch in this process. Saves benchmarks/results/flops_vs_latency.{json,md}.

    python benchmarks/flops_vs_latency.py [--quick] [--fractions 0.4,0.55,0.7,0.85] [--engines DIR --memo FILE]
                                          [--accuracy auto|memo|synthetic]
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.lut_fidelity import (add_artifact_options, load_average, load_images, measure,  # noqa: E402
                                     memo_subset, ort_threads_now, resolve_artifacts, setup_threads)
from mess_edge.artifacts import read_json  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402


def average_ranks(values):
    """float64 [n]: 1-based ranks of ``values``, tied values sharing the mean of their positions."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(a)]  # one past each group's last position
    ranks = np.empty(len(a))
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[group]
    return ranks


def spearman(x, y):
    """Spearman's rho of two equal-length sequences: Pearson correlation of their average ranks.

    nan when fewer than 2 values or when either side is constant (no ranking to correlate).
    """
    if len(x) != len(y):
        raise ValueError("got {} and {} values; expected equal lengths".format(len(x), len(y)))
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def graph_costs(manifest, lut):
    """[(name, role, gmacs, median_ms)] of every segment, head and the final graph."""
    ms = {e["name"]: e["median_ms"] for e in lut["segments"] + lut["heads"] + [lut["final"]]}
    return [(g["name"], g["role"], float(g["gmacs"]), float(ms[g["name"]])) for g in manifest["graphs"]
            if g["role"] in ("segment", "head", "final") and g["name"] in ms]


def correlations(rows):
    """{group: {"n", "spearman", "gmacs_per_s_min", "gmacs_per_s_max"}} for heads, segments, and all."""
    groups = {"heads": [r for r in rows if r[1] == "head"], "segments": [r for r in rows if r[1] == "segment"],
              "all (segments + heads + final)": rows}
    out = {}
    for name, rs in groups.items():
        speed = [g / (m / 1e3) for _, _, g, m in rs if g > 0]
        out[name] = {"n": len(rs), "spearman": spearman([r[2] for r in rs], [r[3] for r in rs]),
                     "gmacs_per_s_min": min(speed) if speed else None, "gmacs_per_s_max": max(speed) if speed else None}
    return out


def pick(inputs_memo, costs, setting, budget, shas):
    """The eq. 6 instance (dict) for ``budget`` in ``costs``' unit, or None when nothing fits."""
    from mess_edge.search import Objective, instance_dict, search

    try:
        result = search(inputs_memo, costs, setting, Objective(budget=budget))
    except MessError:
        return None
    return instance_dict(result, inputs_memo, costs, **shas)


def synthetic_accuracy(memo, seed=0):
    """``memo`` with its confusion matrices and confidence histograms replaced by mess_edge.search.synthetic's
    trained-like ones (deeper exits more accurate, confidence tracking correctness) on the same heads, images
    and resolutions: a stand-in for the accuracy of an untrained quick build. Within an exit point, which
    head is more accurate is arbitrary (the synthetic order, not the real architecture's)."""
    from mess_edge.search import Memo
    from mess_edge.search.synthetic import random_memo

    points = sorted(set(memo.head_exit.tolist()))
    per = max(int(np.sum(memo.head_exit == p)) for p in points)
    syn = random_memo(len(points), per, memo.n_images, memo.n_classes, len(memo.hist_bins) - 1,
                      gt_pixels=int(memo.confusion[-1, 0].sum()), native_pixels=int(memo.n_pixels[0, 0]), seed=seed)
    rank = [int(np.sum(memo.head_exit[:h] == memo.head_exit[h])) for h in range(memo.n_heads)]
    rows = [points.index(int(memo.head_exit[h])) * per + rank[h] for h in range(memo.n_heads)] + [syn.n_heads]
    return Memo(confusion=syn.confusion[rows], hist_edge=syn.hist_edge[rows], hist_raw=syn.hist_raw[rows],
                hist_bins=memo.hist_bins, mean_conf=syn.mean_conf[rows], n_pixels=syn.n_pixels[rows],
                head_exit=memo.head_exit, head_arch=memo.head_arch, meta=dict(memo.meta, accuracy="synthetic"))


def compare(art, settings, fractions, reps, max_images, seed=0, synthetic=False, log=print):
    """The benchmark's result dict (see the module doc). ``synthetic``: search on synthetic_accuracy(memo)."""
    from mess_edge.build.engine_set import load_engines
    from mess_edge.search import load_search_inputs, simulate

    manifest_path = os.path.join(art.onnx_dir, "manifest.json")
    lat = load_search_inputs(art.memo_path, manifest_path, art.lut_path)
    macs = load_search_inputs(art.memo_path, manifest_path)
    lut = read_json(art.lut_path, "lut")
    corr = correlations(graph_costs(lat.manifest, lut))
    memo = lat.memo if lat.memo.n_images <= max_images else memo_subset(lat.memo, np.arange(max_images))
    final_miou = float(memo.head_miou()[-1] * 100)  # a quick untrained build's exits all predict background
    if synthetic:
        memo = synthetic_accuracy(memo, seed)
    shas = {"memo_sha256": lat.memo_sha256, "manifest_sha256": lat.manifest_sha256,
            "checkpoint_sha256": lat.checkpoint_sha256}
    fo_ms, fo_gmacs = float(lat.costs.final_only()), float(macs.costs.final_only())
    pairs = []
    for setting in settings:
        for f in fractions:
            by_ms = pick(memo, lat.costs, setting, f * fo_ms, dict(shas, lut_sha256=lat.lut_sha256))
            by_macs = pick(memo, macs.costs, setting, f * fo_gmacs, dict(shas, lut_sha256=None))
            pairs.append({"setting": setting, "fraction": f, "budget_ms": f * fo_ms, "budget_gmacs": f * fo_gmacs,
                          "latency_pick": by_ms, "macs_pick": by_macs})
    unique = {}
    for p in pairs:
        for key in ("latency_pick", "macs_pick"):
            if p[key] is not None:
                unique.setdefault(_key(p[key]), p[key])
    engines = load_engines(art.engines_dir)
    images = load_images(memo, lat.manifest, memo.n_images, art.data_dir)
    load = [load_average()]
    measured = dict(zip(unique, measure(engines, list(unique.values()), images, reps, seed=seed, log=log)[0]))
    load.append(load_average())
    rows = []
    for p in pairs:
        row = {k: p[k] for k in ("setting", "fraction", "budget_ms", "budget_gmacs")}
        for key in ("latency_pick", "macs_pick"):
            inst = p[key]
            if inst is None:
                row[key] = None
                continue
            sim = simulate(memo, inst, lat.costs)
            row[key] = {"instance": _describe(inst), "predicted_ms": sim["expected_cost"],
                        "expected_gmacs": simulate(memo, inst, macs.costs)["expected_cost"],
                        "measured_ms": measured[_key(inst)]["measured_ms"], "calibration_miou": sim["miou"],
                        "instance_json": inst}
            row[key]["measured_over_budget_ms"] = bool(row[key]["measured_ms"] > p["budget_ms"])
        a, b = row["latency_pick"], row["macs_pick"]
        row["macs_pick_slower"] = (b["measured_ms"] / a["measured_ms"] - 1.0) if a and b else None
        row["same_instance"] = bool(a and b and _key(p["latency_pick"]) == _key(p["macs_pick"]))
        rows.append(row)
    both = [r for r in rows if r["macs_pick_slower"] is not None]
    slower = [r["macs_pick_slower"] for r in both]
    over = [sum(bool(r[k]["measured_over_budget_ms"]) for r in both) for k in ("macs_pick", "latency_pick")]
    miou = [r["macs_pick"]["calibration_miou"] - r["latency_pick"]["calibration_miou"] for r in both]
    headline = ("Spearman(MACs, ms): heads {:.2f}, segments {:.2f}, all {:.2f}; over {} budgets the MACs pick differs "
                "in {}: measured latency {} vs the latency pick on average (most {}), mIoU {} pp; measured over the "
                "ms budget: MACs pick {}x, latency pick {}x").format(
        corr["heads"]["spearman"], corr["segments"]["spearman"], corr["all (segments + heads + final)"]["spearman"],
        len(both), sum(not r["same_instance"] for r in both),
        "{:+.1%}".format(float(np.mean(slower))) if slower else "-",
        "{:+.1%}".format(max(slower)) if slower else "-",
        "{:+.2f}".format(float(np.mean(miou))) if miou else "-", over[0], over[1])
    return {"correlations": corr, "graphs": [dict(zip(("name", "role", "gmacs", "median_ms"), r))
                                             for r in graph_costs(lat.manifest, lut)],
            "final_only_ms": fo_ms, "final_only_gmacs": fo_gmacs, "rows": rows, "headline": headline,
            "memo_final_miou": final_miou, "accuracy": "synthetic" if synthetic else "memo",
            "reps": reps, "images": memo.n_images, "threads": ort_threads_now(), "load_average_start_end": load,
            "artifacts": dict(art._asdict()), "torch_imported": "torch" in sys.modules}


def _key(inst):
    return json.dumps([inst["setting"], [(e["graph"], e["th_img"]) for e in inst["exits"]], inst["final"],
                       inst.get("th_pix")])


def _describe(inst):
    parts = [e["graph"][5:] + ("" if e["th_img"] is None else "@{:.2f}".format(e["th_img"])) for e in inst["exits"]]
    parts += ["final"] if inst["final"] else []
    tail = " (th_pix {:.2f})".format(inst["th_pix"]) if inst.get("th_pix") is not None else ""
    return " > ".join(parts) + tail


def markdown(res):
    lines = ["# MACs vs latency as the cost model", "",
             "## Rank correlation of MACs (manifest) with measured latency (lut.json median)", "",
             "| graphs | n | Spearman rho | GMAC/s min | GMAC/s max |", "|---|---:|---:|---:|---:|"]
    for name, c in res["correlations"].items():
        lines.append("| {} | {} | {:.3f} | {} | {} |".format(name, c["n"], c["spearman"], *(
            "-" if v is None else "{:.2f}".format(v) for v in (c["gmacs_per_s_min"], c["gmacs_per_s_max"]))))
    lines += ["", "## Instance picked on a MACs budget vs on a latency budget (eq. 6, same fraction of final-only)",
              "", "Final-only: {:.3f} ms, {:.4f} GMACs. Measured: mean over {} calibration images (fixed paths: "
              "the first 8) of the median of {} interleaved repetitions; 1-min load average {} at the start, {} at "
              "the end.".format(
                  res["final_only_ms"], res["final_only_gmacs"], res["images"], res["reps"],
                  *res["load_average_start_end"]), "",
              "| setting | budget | picked on | instance | GMACs | predicted ms | measured ms | over ms budget | "
              "cal. mIoU | MACs pick vs latency pick (measured) |", "|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in res["rows"]:
        budget = "{:.0%}: {:.3f} ms / {:.4f} GMACs".format(r["fraction"], r["budget_ms"], r["budget_gmacs"])
        for key, label in (("latency_pick", "latency"), ("macs_pick", "MACs")):
            p = r[key]
            cells = ["none fits"] + ["-"] * 5 if p is None else [
                p["instance"], "{:.4f}".format(p["expected_gmacs"]), "{:.3f}".format(p["predicted_ms"]),
                "{:.3f}".format(p["measured_ms"]), "yes" if p["measured_over_budget_ms"] else "no",
                "{:.2f}".format(p["calibration_miou"])]
            slower = "-" if key == "latency_pick" or r["macs_pick_slower"] is None else "{:+.1%}{}".format(
                r["macs_pick_slower"], " (same instance)" if r["same_instance"] else "")
            lines.append("| {} | {} | {} | {} | {} |".format(r["setting"], budget, label, " | ".join(cells), slower))
    if res["accuracy"] == "synthetic":
        lines += ["", "mIoU here is SYNTHETIC (--accuracy synthetic, the default for the untrained build this script "
                  "makes: the memo's accuracy (final exit {:.2f} % mIoU) replaced by a trained-like stand-in on the "
                  "same heads); every latency is real.".format(res["memo_final_miou"])]
    elif res["memo_final_miou"] < 15.0:
        lines += ["", "Note: the final exit's calibration mIoU is {:.2f} % (an untrained export?): accuracy ties make "
                  "both searches pick the cheapest instance in their own unit; use a trained export or --accuracy "
                  "synthetic.".format(res["memo_final_miou"])]
    lines += ["", "Result: " + res["headline"] + "."]
    return "\n".join(lines)


def main(argv=None):
    from benchmarks._common import save

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_artifact_options(ap)
    ap.add_argument("--quick", action="store_true", help="fewer budgets and repetitions")
    ap.add_argument("--settings", default=None, help="default budgeted,input-dependent (synthetic: budgeted)")
    ap.add_argument("--accuracy", choices=("auto", "memo", "synthetic"), default="auto",
                    help="mIoU the searches use: the memo's, or a trained-like synthetic stand-in on the same heads "
                         "(auto: synthetic when this script built the untrained artifacts itself, else memo); with "
                         "synthetic only budgeted can be measured (the chain exits on real confidences)")
    ap.add_argument("--fractions", default=None, help="budget fractions of final-only (default 0.4,0.55,0.7,0.85; "
                                                      "quick 0.5,0.8)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per image (default 15; quick 5)")
    ap.add_argument("--max-images", type=int, default=None, help="memo images searched and run (default 64; quick 32)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    art = resolve_artifacts(a, "flops_vs_latency", 0.3 if a.quick else 1.0)  # host stages: subprocesses
    setup_threads(art, a.threads)  # before any session: all of this process's sessions join one pool
    fractions = [float(f) for f in (a.fractions or ("0.5,0.8" if a.quick else "0.4,0.55,0.7,0.85")).split(",")]
    synthetic = a.accuracy == "synthetic" or (a.accuracy == "auto" and not a.engines)
    settings = [s.strip() for s in (a.settings or ("budgeted" if synthetic else
                                                   "budgeted,input-dependent")).split(",")]
    if synthetic and "input-dependent" in settings:
        raise MessError("got synthetic accuracy with setting input-dependent; expected budgeted or anytime (the chain "
                        "exits on the real confidences, not the synthetic ones); try --settings budgeted, or "
                        "--accuracy memo with a trained export")
    res = compare(art, settings, fractions, a.reps or (5 if a.quick else 15), a.max_images or (32 if a.quick else 64),
                  seed=a.seed, synthetic=synthetic)
    save("flops_vs_latency", res, markdown(res))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MessError as e:
        sys.exit("error: {}".format(e))
