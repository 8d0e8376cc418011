"""Does the search's promise hold on new images? Re-splits of a pooled cal + test memo pair (issue 13, item 4).

The cal and test memos of one checkpoint are pooled; each of N seeded re-splits searches (input-dependent, MAC
costs from the manifest) on one half with each promise (calibration: the plain eq. 5 search; new-images: the
risk-controlled one of mess_edge.search.risk) and replays the choice on the other half. Per max_drop: the share
of re-splits whose held-out drop stays within budget, the mean held-out drop, and the mean predicted speedup.

    python benchmarks/risk_control.py --memos /tmp/risk/memo_cal.npz /tmp/risk/memo_test.npz \\
        --manifest /tmp/risk/onnx/manifest.json --splits 20
    python benchmarks/risk_control.py --memos C/memo_cal.npz C/memo_test.npz --manifest C/onnx/manifest.json \\
        --lut C/engines/lut.json --out risk_control-cpu-effl0-e8     # C = runs/ceilings/cpu-effl0-e8
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import save  # noqa: E402
from mess_edge.search.inputs import load_search_inputs  # noqa: E402
from mess_edge.search.memo import load_memo, miou_from_stats  # noqa: E402
from mess_edge.search.optimizer import Objective, search  # noqa: E402
from mess_edge.search.risk import Promise, concat_memos, controlled_search, subset_memo  # noqa: E402
from mess_edge.search.space import assign_images  # noqa: E402


def held_out_drop(memo, result, policy):
    """Final-only mIoU minus the chosen configuration's on ``memo`` (pp)."""
    stats = memo.stats(np.float64)
    taken = assign_images(memo, result.config, policy)
    m = miou_from_stats(stats[taken, np.arange(memo.n_images)].sum(axis=0))
    return float(miou_from_stats(stats[-1].sum(axis=0)) - m) * 100.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--memos", nargs=2, required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--drops", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--lut", default=None, help="measured latency table (default: MAC costs from the manifest)")
    ap.add_argument("--order-fraction", type=float, default=0.5,
                    help="new-images: share of the search's images that orders the candidates (Promise)")
    ap.add_argument("--out", default="risk_control", help="result name under benchmarks/results/")
    a = ap.parse_args()
    costs = load_search_inputs(a.memos[0], a.manifest, a.lut).costs
    pooled = concat_memos(load_memo(a.memos[0]), load_memo(a.memos[1]))
    n = pooled.n_images
    rows = {(d, p): [] for d in a.drops for p in ("calibration", "new-images")}
    for s in range(a.splits):
        perm = np.random.default_rng(1000 + s).permutation(n)
        cal, new = subset_memo(pooled, np.sort(perm[:n // 2])), subset_memo(pooled, np.sort(perm[n // 2:]))
        for d in a.drops:
            obj = Objective(max_drop=d / 100.0)
            plain = search(cal, costs, "input-dependent", obj)
            promise = Promise("new-images", delta=a.delta, seed=s, order_fraction=a.order_fraction)
            ctrl, _ = controlled_search(cal, costs, "input-dependent", obj, promise)
            for p, r in (("calibration", plain), ("new-images", ctrl)):
                rows[(d, p)].append((held_out_drop(new, r, "edge"), r.final_only_cost / r.cost))
        report(a, n, rows, s + 1)  # saved after every split: a long run that is cut short keeps what it did


def report(a, n, rows, done):
    """Write benchmarks/results/<out>.{json,md} from the first ``done`` re-splits."""
    table, md = [], ["# Risk control: does `--max-drop` hold on held-out images?", "",
                     "{} of {} re-splits of {} pooled images ({} + {}), input-dependent, {}, delta {}, order "
                     "fraction {}; memos {}.".format(done, a.splits, n, n // 2, n - n // 2,
                                        "latency from " + a.lut if a.lut else "MAC costs", a.delta, a.order_fraction,
                                        " + ".join(a.memos)), "",
                     "| max drop (pp) | promise | within budget | mean held-out drop (pp) | worst (pp) | "
                     "mean predicted speedup |", "|---|---|---|---|---|---|"]
    for (d, p), v in rows.items():
        drops, speed = np.array([x[0] for x in v]), np.array([x[1] for x in v])
        row = {"max_drop_pp": d, "promise": p, "within_budget": float(np.mean(drops <= d)),
               "mean_drop_pp": float(drops.mean()), "worst_drop_pp": float(drops.max()),
               "mean_speedup": float(speed.mean()), "drops_pp": drops.tolist(), "speedups": speed.tolist()}
        table.append(row)
        md.append("| {:g} | {} | {:.0%} | {:.2f} | {:.2f} | {:.2f}x |".format(
            d, p, row["within_budget"], row["mean_drop_pp"], row["worst_drop_pp"], row["mean_speedup"]))
    save(a.out, {"memos": a.memos, "manifest": a.manifest, "lut": a.lut, "splits": a.splits, "splits_done": done,
                 "delta": a.delta, "order_fraction": a.order_fraction, "n_images": n, "rows": table}, "\n".join(md))


if __name__ == "__main__":
    main()
