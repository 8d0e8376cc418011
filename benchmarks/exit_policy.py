"""Fig. 4 of the paper: the image-level exit policy with and without edge enhancement against averaging the
per-pixel confidence, compared at matched cost, on real memoised predictions.

For each policy (edge: eq. 7 after eqs. 8-9; raw: eq. 7 alone; mean: the mean top-1 confidence, the
classification-style baseline) the input-dependent search (eq. 6) picks the most accurate configuration
under each latency budget (a fraction of final-only's) on the calibration memo; the chosen instance is then
replayed on the test memo. Same exits, heads and threshold grids for all three: only the confidence differs.

    python benchmarks/exit_policy.py --work runs/early_exit/cpu-drn      # artifacts of early_exit.py (default)

When the memos carry the LC arrays (mess_edge.search.lc), a Table 3 analogue follows: the per-pixel Deep Layer
Cascade against MESS's image-level policy (one early exit + final), both the cheapest in MACs within an mIoU
drop of final-only on the calibration memo, as speedup in MACs over final-only; test mIoU of the same points.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, save  # noqa: E402

POLICIES = ("edge", "raw", "mean")


def run(work, fractions, max_exits):
    from mess_edge.errors import MessError
    from mess_edge.search import Objective, instance_dict, load_search_inputs, search, simulate

    manifest = os.path.join(work, "onnx", "manifest.json")
    lut = os.path.join(work, "engines", "lut.json")
    cal = load_search_inputs(os.path.join(work, "memo_cal.npz"), manifest, lut)
    test = load_search_inputs(os.path.join(work, "memo_test.npz"), manifest, lut)
    rows = []
    for frac in fractions:
        row = {"budget_fraction": frac}
        for pol in POLICIES:
            try:
                res = search(cal.memo, cal.costs, "input-dependent", Objective(budget=frac * cal.costs.final_only()),
                             max_exits=max_exits, policy=pol)
            except MessError:  # nothing fits this budget
                res = None
            if res is None:
                row[pol] = None
                continue
            inst = instance_dict(res, cal.memo, cal.costs)
            sim = simulate(test.memo, inst, test.costs)
            row[pol] = {"cal_miou": res.miou * 100, "test_miou": sim["miou"], "cost_ms": res.cost,
                        "test_cost_ms": sim["expected_cost"], "config": res.description}
        rows.append(row)
    return rows, cal


LC_DROPS_PP = (0.1, 1.0, 10.0)  # the paper's Table 3 rows: error <= 0.1 %, (1 pp), <= 10 %


def lc_table(work, drops=LC_DROPS_PP):
    """Table 3 rows (LC vs MESS, MACs) or None when the calibration memo has no LC arrays."""
    from mess_edge.errors import MessError
    from mess_edge.search import instance_dict, load_search_inputs, simulate
    from mess_edge.search.lc import lc_point, lc_search

    manifest = os.path.join(work, "onnx", "manifest.json")
    cal = load_search_inputs(os.path.join(work, "memo_cal.npz"), manifest)  # no lut: the MAC cost model
    test = load_search_inputs(os.path.join(work, "memo_test.npz"), manifest)
    if not cal.memo.has_lc:
        return None
    same_heads = [cal.memo.head_label(h) for h in range(cal.memo.n_heads)] == [
        test.memo.head_label(h) for h in range(test.memo.n_heads)]
    rows = []
    for drop in drops:
        r = lc_search(cal.memo, cal.costs, drop)
        row = {"max_drop_pp": drop, "final_only_gmacs": r["final_only_macs"], "final_cal_miou": r["final_miou"] * 100,
               "final_test_miou": float(test.memo.head_miou()[-1]) * 100, "lc": None, "mess": None}
        lc = r["lc"]
        if lc is not None:
            row["lc"] = {"head": cal.memo.head_label(lc["head"]), "th_pix": lc["th"], "gmacs": lc["macs"],
                         "speedup": lc["speedup"], "deeper_fraction": lc["deeper_fraction"],
                         "cal_miou": lc["miou"] * 100, "test_miou": None}
            if test.memo.has_lc and same_heads:
                row["lc"]["test_miou"] = lc_point(test.memo, test.costs, lc["head"], lc["t_index"])["miou"] * 100
        mess = r["mess"]
        if mess is not None:
            row["mess"] = {"config": mess["description"], "gmacs": mess["macs"], "speedup": mess["speedup"],
                           "cal_miou": mess["miou"] * 100, "test_miou": None}
            try:
                inst = instance_dict(mess["result"], cal.memo, cal.costs)
                row["mess"]["test_miou"] = simulate(test.memo, inst, test.costs)["miou"]
            except MessError:
                pass
        rows.append(row)
    return rows


def lc_markdown(rows):
    """The "Table 3 analogue" section from lc_table's rows."""
    def cell(v, extra):
        if v is None:
            return "- (none meets it)"
        test = "-" if v["test_miou"] is None else "{:.2f}".format(v["test_miou"])
        return "{:.2f}x ({:.4g} GMACs), mIoU {} ({:.2f}); {}".format(v["speedup"], v["gmacs"], test, v["cal_miou"],
                                                                      extra(v))
    md = ["", "## Table 3 analogue: LC vs MESS", "",
          "Cheapest point within the mIoU drop of final-only on the calibration memo; speedup = final-only GMACs / "
          "the method's GMACs; mIoU % on the test memo (cal in brackets). LC: per-pixel exits at one head (its "
          "MACs count the whole downstream volume inside the receptive field of any pixel that goes deeper); "
          "MESS: input-dependent, one early exit + final, edge-enhanced image confidence.", "",
          "| error <= | final-only | LC (per pixel) | MESS (per image) |", "|---|---|---|---|"]
    for r in rows:
        md.append("| {:g} pp | {:.4g} GMACs, mIoU {:.2f} ({:.2f}) | {} | {} |".format(
            r["max_drop_pp"], r["final_only_gmacs"], r["final_test_miou"], r["final_cal_miou"],
            cell(r["lc"], lambda v: "{} t={:g}, deeper {:.0f} %".format(v["head"], v["th_pix"],
                                                                         100 * v["deeper_fraction"])),
            cell(r["mess"], lambda v: v["config"])))
    return md


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "early_exit", "cpu-drn"))
    p.add_argument("--fractions", default="0.5,0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--max-exits", type=int, default=1, help="early exits (the paper's Fig. 4: a 2-exit instance)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    fractions = [float(f) for f in a.fractions.split(",")]
    rows, cal = run(a.work, fractions, a.max_exits)
    md = ["# Exit policies at matched latency (Fig. 4 analogue; {})".format(os.path.basename(a.work)), "",
          "Input-dependent instances with {} early exit(s) + final, chosen on the calibration memo for the most "
          "accurate configuration within each latency budget; mIoU % on the test memo (cal in brackets).".format(
              a.max_exits), "",
          "| budget (x final-only) | edge-enhanced eq. 7 | eq. 7 | mean confidence |", "|---|---|---|---|"]
    gains = []
    for r in rows:
        cells = []
        for pol in POLICIES:
            v = r[pol]
            cells.append("-" if v is None else "{:.2f} ({:.2f}), {:.3f} ms".format(v["test_miou"], v["cal_miou"],
                                                                                v["test_cost_ms"]))
        if r["edge"] and r["mean"]:
            gains.append(r["edge"]["test_miou"] - r["mean"]["test_miou"])
        md.append("| {:.2f} | {} |".format(r["budget_fraction"], " | ".join(cells)))
    if gains:
        md += ["", "Edge-enhanced image confidence vs averaging, test mIoU at matched budget: mean {:+.2f} pp, "
               "max {:+.2f} pp (paper: up to +6.34 pp, +1.17 pp on average).".format(sum(gains) / len(gains),
                                                                                       max(gains))]
    table3 = lc_table(a.work)
    if table3 is not None:
        md += lc_markdown(table3)
    save("exit_policy", {"rows": rows, "work": a.work, "max_exits": a.max_exits, "table3": table3}, "\n".join(md))


if __name__ == "__main__":
    main()
