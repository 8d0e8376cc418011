"""How `mess-edge bench --instance` orders the paths it times, and what the order does to the measured speedup.

bench times the instance's chain, the chained final-only path and the monolithic graph on the same frames. Frame
by frame (``--block 1``, bench's only order before), every path starts each frame on caches another path has just
filled; a deployment runs one path frame after frame and never sees that. In blocks of B frames every path runs
B frames in a row before the next takes the same B, the order reversed on every other block, so a block of
~0.1 s still spreads the machine's drift over all paths alike. Here one instance is benched at several block
sizes, the sizes rotated round by round, in one process: the speedup over the faster plain model and over the
final-only path, and each path's mean against the latency table the instance was priced on (the search's
prediction is at its calibration images' exits; with ``--test-memo`` the same table is also priced at the exits
the bench's own images take, which is what the bench measures). B = the number of images is each path alone.

    python benchmarks/bench_order.py --engines runs/ceilings/cpu-drn-e8/engines --instance INSTANCE.json \\
        --data runs/ds128 --test-memo runs/ceilings/cpu-drn-e8/memo_test.npz --out bench_order-cpu-drn-e8
                                      # runs/ceilings/M: made by benchmarks/exit_ceilings.py --model M
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import fractions_text, save  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", required=True, help="engine folder (mess-edge build, profiled)")
    p.add_argument("--instance", required=True, help="instance.json searched on that folder's table")
    p.add_argument("--data", required=True, help="VOC-layout folder whose test split is timed")
    p.add_argument("--test-memo", default=None, help="the test split's memo: price the table at the bench's exits")
    p.add_argument("--blocks", default="1,5,25,200", help="block sizes, comma-separated [1,5,25,200]")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all block sizes [3]")
    p.add_argument("--images", type=int, default=200, help="test images timed [200]")
    p.add_argument("--reps", type=int, default=3, help="passes over them per bench [3]")
    p.add_argument("--out", default="bench_order", help="results name under benchmarks/results/ [bench_order]")
    a = p.parse_args(argv)
    try:
        a.blocks = [int(b) for b in a.blocks.split(",")]
    except ValueError:
        p.error("got --blocks {!r}; expected whole numbers, comma-separated, e.g. 1,25".format(a.blocks))
    if min(a.blocks) < 1 or a.rounds < 1 or a.images < 1 or a.reps < 1:
        p.error("got a block size, --rounds, --images or --reps under 1; expected >= 1")
    for flag, path in (("--engines", a.engines), ("--instance", a.instance), ("--data", a.data),
                       ("--test-memo", a.test_memo)):
        if path is not None and not os.path.exists(path):
            p.error("got {} {}; it does not exist".format(flag, path))
    return a


def table_at_bench_images(test_memo, instance, images):
    """The instance's table prediction (final-only cost / expected cost) and exit fractions at the test memo's
    first ``images`` images: the images bench times."""
    from mess_edge.search.instance import simulate
    from mess_edge.search.memo import load_memo
    from mess_edge.search.risk import subset_memo

    memo = load_memo(test_memo)
    seen = simulate(subset_memo(memo, np.arange(min(images, memo.n_images))), instance)
    return instance["final_only_cost"] / seen["expected_cost"], seen["expected_cost"], seen["exit_fractions"]


def main(argv=None):
    a = parse_args(argv)
    from mess_edge.profile.instance_bench import bench_instance
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads()  # as the bench command does: one pool for every session of the process
    with open(a.instance) as f:
        instance = json.load(f)
    predicted = instance["final_only_cost"] / instance["expected_cost"]
    at_bench = table_at_bench_images(a.test_memo, instance, a.images) if a.test_memo else None
    runs = {b: [] for b in a.blocks}
    for r in range(a.rounds):
        order = a.blocks[r % len(a.blocks):] + a.blocks[:r % len(a.blocks)]
        for b in order:
            res = bench_instance(a.engines, a.instance, data=a.data, images=a.images, reps=a.reps, block=b)
            c = res["configs"]
            runs[b].append({"speedup": res["speedup"], "baseline": res["baseline"],
                            "vs_final_only": res["speedup_vs_final_only"],
                            "instance_ms": c["instance"]["mean_ms"], "final_only_ms": c["final-only"]["mean_ms"],
                            "monolithic_ms": c["monolithic"]["mean_ms"] if "monolithic" in c else None,
                            "drop_pp": res["miou_drop_pp"], "exits": c["instance"]["exits"]})
            print("round {} block {:>3}: {:.3f}x over {}, {:.3f}x over final-only; instance {:.3f} ms".format(
                r + 1, b, res["speedup"], res["baseline"], res["speedup_vs_final_only"], c["instance"]["mean_ms"]),
                flush=True)
    payload = {"engines": a.engines, "instance": a.instance, "data": a.data, "images": a.images, "reps": a.reps,
               "rounds": a.rounds, "predicted_speedup": predicted, "expected_ms": instance["expected_cost"],
               "final_only_ms_table": instance["final_only_cost"], "runs": {str(b): v for b, v in runs.items()}}
    if at_bench:
        payload.update(predicted_on_bench_images=at_bench[0], expected_ms_on_bench_images=at_bench[1],
                       bench_exit_fractions=at_bench[2])
    save(a.out, payload, markdown(payload))


def markdown(p):
    def span(values, fmt):
        v = np.asarray(values, float)
        return (fmt + " ({}-{})").format(v.mean(), fmt.format(v.min()), fmt.format(v.max()))

    exp = p.get("expected_ms_on_bench_images", p["expected_ms"])
    md = ["# Bench order: frame by frame or in blocks (`mess-edge bench --instance --block B`)", "",
          "`{}` on `{}`, {} test images x {} passes per bench, {} rounds over the block sizes (rotated); mean "
          "(min-max) over the rounds. The table predicted {:.3f}x over final-only at the calibration images' "
          "exits{}.".format(p["instance"], p["engines"], p["images"], p["reps"], p["rounds"], p["predicted_speedup"],
                            "" if "predicted_on_bench_images" not in p else
                            ", **{:.3f}x at the exits the bench's images take** ({})".format(
                                p["predicted_on_bench_images"], fractions_text(p["bench_exit_fractions"]))), "",
          "| block B | speedup over the faster plain model | over final-only | measured / predicted (bench "
          "images) | instance mean ms / table | final-only mean ms / table |",
          "|---:|---:|---:|---:|---:|---:|"]
    for b, rows in p["runs"].items():
        vs = [r["vs_final_only"] for r in rows]
        md.append("| {} | {} | {} | {:+.1%} | {} | {} |".format(
            "1 (frame by frame)" if b == "1" else ("{} (each path alone)".format(b) if int(b) >= p["images"] else b),
            span([r["speedup"] for r in rows], "{:.3f}x"), span(vs, "{:.3f}x"),
            np.mean(vs) / p.get("predicted_on_bench_images", p["predicted_speedup"]) - 1,
            span([r["instance_ms"] / exp for r in rows], "{:.3f}"),
            span([r["final_only_ms"] / p["final_only_ms_table"] for r in rows], "{:.3f}")))
    md += ["", "The table's means come from `mess-edge profile`, every graph timed inside chained frames of its own "
           "chain: a path running on its own caches, as in a block."]
    return "\n".join(md)


if __name__ == "__main__":
    main()
