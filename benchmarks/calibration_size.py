"""What the promise on new images costs against the number of calibration images (issue 13: the calibration margin).

`mess-edge search`'s default promise (Learn-then-Test, mess_edge.search.risk) certifies the drop on images the
search never saw, and the fewer images it certifies on, the wider its bound, the more speedup it gives up. Here
one checkpoint's calibration memo of many images (a DigitScenes cal split of 2,000: each image is seeded by its
split and index, so the first 500 are the benchmark's usual cal split) is subsampled to N images (N = 250, 500,
1,000, 2,000; ``--draws`` seeded draws each); every draw searches (input-dependent, the measured latency table)
with each promise and every budget, and its choice is replayed on the fixed test split (500 images, never
searched on). Per N, budget and promise: the share of draws whose test drop stays within budget, the mean test
drop, and the mean speedup predicted from the table on the search's own images (an estimate).

With ``--engines DIR --data DATA`` it also measures, as a user would: `mess-edge search` (default promise) on the
pool's first N images for each N and each of ``--bench-drops``, the instance replayed on the test memo (its drop on
the 500 test images), and `mess-edge bench --instance` (200 test images x 3, in blocks): the speedup measured
through the runtime over the faster plain model (the chained final-only path or the monolithic graph), and over the
final-only path the prediction is made against. ``--reprofile`` profiles the engines again into a fresh table just
before each measured row and searches with it, as a user profiling on the day would: a shared VM's speed drifts by
10-20% within hours, and a table from an earlier hour then mispredicts the measurement.

    mess-edge data digitscenes --out runs/ds128c --n-train 16 --n-cal 2000 --n-test 500
    mess-edge calibrate benchmarks/models/cpu-effl0-e8/stage2.pt --data runs/ds128c --out C/memo_cal2000.npz
    python benchmarks/calibration_size.py --cal-memo C/memo_cal2000.npz --test-memo C/memo_test.npz \\
        --manifest C/onnx/manifest.json --lut C/engines/lut.json --out calibration_size-cpu-effl0-e8 \\
        [--engines C/engines --data runs/ds128]
                                                                    # C = runs/ceilings/cpu-effl0-e8
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import cli, exits_text, fractions_text, save, search_replay_bench  # noqa: E402
from benchmarks.risk_control import held_out_drop  # noqa: E402
from mess_edge.search.inputs import load_search_inputs  # noqa: E402
from mess_edge.search.memo import load_memo, save_memo  # noqa: E402
from mess_edge.search.optimizer import Objective, search  # noqa: E402
from mess_edge.search.risk import Promise, controlled_search, subset_memo  # noqa: E402

PROMISES = ("calibration", "new-images")


def measure(pool, test, costs, sizes, drops, draws, delta):
    """{(n, drop, promise): [(test drop pp, predicted speedup), ...]} over ``draws`` seeded subsets of the pool."""
    rows = {(n, d, p): [] for n in sizes for d in drops for p in PROMISES}
    for n in sizes:
        for k in range(draws):
            rng = np.random.default_rng(2000 + k)
            idx = np.arange(pool.n_images) if n >= pool.n_images else np.sort(rng.permutation(pool.n_images)[:n])
            cal = subset_memo(pool, idx)
            for d in drops:
                obj = Objective(max_drop=d / 100.0)
                plain = search(cal, costs, "input-dependent", obj)
                ctrl, _ = controlled_search(cal, costs, "input-dependent", obj, Promise("new-images", delta=delta,
                                                                                          seed=k))
                for p, r in zip(PROMISES, (plain, ctrl)):
                    rows[(n, d, p)].append((held_out_drop(test, r, "edge"), r.final_only_cost / r.cost))
            print("N {:5d} draw {} done".format(n, k + 1), flush=True)
    return rows


def table(rows):
    out = []
    for (n, d, p), v in rows.items():
        drop, speed = np.array([x[0] for x in v]), np.array([x[1] for x in v])
        out.append({"n_cal": n, "max_drop_pp": d, "promise": p, "within_budget": float(np.mean(drop <= d)),
                    "mean_test_drop_pp": float(drop.mean()), "worst_test_drop_pp": float(drop.max()),
                    "mean_predicted_speedup": float(speed.mean()), "test_drops_pp": drop.tolist(),
                    "predicted_speedups": speed.tolist()})
    return out


def measured(a, pool, test, tmp):
    """The first N pool images -> `mess-edge search` -> replay on the test memo and `mess-edge bench`, per N and
    budget (see the module docstring)."""
    out = []
    for n in a.sizes:
        memo = a.cal_memo
        if n < pool.n_images:
            memo = os.path.join(tmp, "memo_first{}.npz".format(n))
            save_memo(memo, subset_memo(pool, np.arange(n)))
        for d in a.bench_drops:
            lut = a.lut
            if a.reprofile:
                lut = os.path.join(tmp, "lut_{}_{:g}.json".format(n, d))
                cli("profile", a.engines, "--out", lut)
            out.append(dict(search_replay_bench(memo, a.manifest, lut, d, test, a.engines, a.data, os.path.join(
                tmp, "instance_{}_{:g}.json".format(n, d)), os.path.join(tmp, "bench_{}_{:g}.json".format(n, d))),
                n_cal=n, reprofiled=bool(a.reprofile)))
            print("N {:5d} <= {:g} pp: measured {:.2f}x ({:.2f}x over final-only, predicted {:.2f}x), test drop "
                  "{:.2f} pp".format(n, d, out[-1]["measured_speedup"], out[-1]["measured_vs_final_only"],
                                     out[-1]["predicted_speedup"], out[-1]["test_drop_pp"]), flush=True)
    return out


def markdown(a, pool_n, test_n, rows, measured_rows=()):
    md = ["# The promise on new images against the number of calibration images", "",
          "Memos {} (pool of {} cal images) and {} ({} test images, never searched on); input-dependent, latency "
          "from {}; delta {}; {} seeded draws of N cal images per N (all {} when N is the pool). Speedups are "
          "predicted from the table on the draw's own images (estimates); drops are measured on the test "
          "images.".format(a.cal_memo, pool_n, a.test_memo, test_n, a.lut, a.delta, a.draws, pool_n), "",
          "| max drop (pp) | N cal | calibration: within / mean test drop / speedup | new images: within / mean "
          "test drop / speedup |", "|---|---:|---|---|"]
    by = {(r["n_cal"], r["max_drop_pp"], r["promise"]): r for r in rows}
    for d in sorted({r["max_drop_pp"] for r in rows}):
        for n in sorted({r["n_cal"] for r in rows}):
            cells = ["{:.0%} / {:.2f} pp / {:.2f}x".format(r["within_budget"], r["mean_test_drop_pp"],
                                                        r["mean_predicted_speedup"])
                     for r in (by[(n, d, p)] for p in PROMISES)]
            md.append("| {:g} | {} | {} | {} |".format(d, n, *cells))
    if measured_rows:
        fresh = all(r.get("reprofiled") for r in measured_rows)
        blocks = sorted({r.get("bench_block", 1) for r in measured_rows})
        order = "frame by frame" if blocks == [1] else "in blocks of {} frames".format(
            " / ".join(str(b) for b in blocks))
        md += ["", "Measured as a user would: `mess-edge search` (default promise) on the pool's first N images{}, "
               "the instance replayed on the {} test images, and `mess-edge bench --instance` ({}; 200 test images x "
               "3, interleaved {}). **measured** is over the faster plain model (bench's baseline), the next column "
               "over the chained final-only path the prediction (the search's, at its own images' exits) is made "
               "against, then the same table's prediction at the exits the bench's 200 images take, and the "
               "measurement's error against it:".format(
                   ", priced on a table profiled just before (`--reprofile`)" if fresh else "", test_n, a.engines,
                   order), "",
               "| max drop (pp) | N cal | exits | predicted | **measured** | measured / final-only | predicted on the "
               "bench's images (error) | test drop (pp) | exits taken on test |",
               "|---|---:|---|---:|---:|---:|---:|---:|---|"]

        def seen(r):
            if "predicted_on_bench_images" not in r:
                return "-"
            p = r["predicted_on_bench_images"]
            return "{:.2f}x ({:+.1%})".format(p, r["measured_vs_final_only"] / p - 1.0)

        md += ["| {:g} | {} | {} | {:.2f}x | **{:.2f}x** | {} | {} | {:.2f} | {} |".format(
            r["max_drop_pp"], r["n_cal"], exits_text(r["exits"]), r["predicted_speedup"], r["measured_speedup"],
            "{:.2f}x".format(r["measured_vs_final_only"]) if "measured_vs_final_only" in r else "-", seen(r),
            r["test_drop_pp"], fractions_text(r["test_exit_fractions"]))
            for r in measured_rows]
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cal-memo", help="the pool: a memo of many calibration images")
    ap.add_argument("--test-memo", help="the held-out images every choice is replayed on")
    ap.add_argument("--manifest")
    ap.add_argument("--lut", help="the measured latency table the search prices with")
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--drops", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--out", default="calibration_size", help="result name under benchmarks/results/")
    ap.add_argument("--engines", default=None, help="measure too: the engine folder the lut was profiled on")
    ap.add_argument("--data", default=None, help="measure too: the dataset whose test split bench runs")
    ap.add_argument("--bench-drops", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--reprofile", action="store_true",
                    help="measure too: profile --engines again before each measured row and search on that table")
    ap.add_argument("--measure-only", action="store_true",
                    help="skip the draws (keep the saved ones; with no --engines, the saved measurements too)")
    ap.add_argument("--render", action="store_true",
                    help="rebuild NAME.md from the saved benchmarks/results/NAME.json (--out), nothing rerun")
    a = ap.parse_args()
    if a.render:
        return render(a.out)
    missing = [o for o in ("cal_memo", "test_memo", "manifest", "lut") if getattr(a, o) is None]
    if missing:
        sys.exit("calibration_size needs {} (or --render)".format(
            ", ".join("--" + o.replace("_", "-") for o in missing)))
    if (a.engines is None) != (a.data is None):
        sys.exit("--engines and --data go together")
    pool, test = load_memo(a.cal_memo), load_memo(a.test_memo)
    if max(a.sizes) > pool.n_images:
        sys.exit("got --sizes up to {}; the pool {} has {} images".format(max(a.sizes), a.cal_memo, pool.n_images))
    costs = load_search_inputs(a.cal_memo, a.manifest, a.lut).costs
    saved = {}
    if a.measure_only:  # the draws of the saved result (and its measured rows, when not measured again)
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", a.out + ".json")) as f:
            saved = json.load(f)
        rows = saved["rows"]
        a.draws = len(rows[0]["test_drops_pp"])
    else:
        rows = table(measure(pool, test, costs, a.sizes, a.drops, a.draws, a.delta))
    measured_rows = saved.get("measured", [])
    if a.engines:
        with tempfile.TemporaryDirectory(prefix="mess-calsize-") as tmp:
            measured_rows = measured(a, pool, test, tmp)
    else:  # the saved measurements keep their engines and data (none without --measure-only)
        a.engines, a.data = saved.get("engines"), saved.get("data")
    save(a.out, {"cal_memo": a.cal_memo, "test_memo": a.test_memo, "manifest": a.manifest, "lut": a.lut,
                 "pool_images": pool.n_images, "test_images": test.n_images, "draws": a.draws, "delta": a.delta,
                 "rows": rows, "measured": measured_rows, "engines": a.engines, "data": a.data},
         markdown(a, pool.n_images, test.n_images, rows, measured_rows))


def render(out):
    """NAME.md again from the saved NAME.json: the memos need not exist any more."""
    from mess_edge.artifacts import write_bytes_atomic

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", out + ".json")
    if not os.path.isfile(path):
        sys.exit("no saved result {}: run the benchmark first".format(path))
    with open(path) as f:
        saved = json.load(f)
    a = argparse.Namespace(**{k: saved[k] for k in ("cal_memo", "test_memo", "lut", "delta", "draws", "engines")})
    md = markdown(a, saved["pool_images"], saved["test_images"], saved["rows"], saved["measured"])
    write_bytes_atomic(path[:-len(".json")] + ".md", (md.rstrip() + "\n").encode())
    print(md)


if __name__ == "__main__":
    main()
