"""Does a wider space of exit heads pay? Stage-2 checkpoints of one stage 1, searched and measured side by side.

Issue 13, item 2 asks whether the search, given more candidate heads per exit point, finds exits that agree
with the final exit on more images per millisecond. Each ``--ckpt NAME=PATH`` (stage-2 checkpoints of the same
stage 1 and recipe, different ``--space``) is calibrated on ``--data``'s cal and test splits, exported, built
for ONNX Runtime and profiled (exit_ceilings.prepare, under ``--work``), searched (input-dependent, the default
promise) at each of ``--drops``, replayed on the test memo (its drop on the test images), and measured by
`mess-edge bench --instance` (200 test images x 3, interleaved, over the faster plain model); the benches of all
checkpoints run back to back per budget. Saves benchmarks/results/head_space.{json,md} (``--out``).

    python benchmarks/head_space.py --data runs/ds128c --ckpt small8=runs/demo-cal2000/stage2.pt \\
        --ckpt cheap32=runs/cheap32/stage2.pt
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from benchmarks._common import exits_text, fractions_text, save, search_replay_bench  # noqa: E402
from exit_ceilings import prepare  # noqa: E402
from mess_edge.search.memo import load_memo  # noqa: E402


def markdown(a, rows):
    md = ["# A wider space of exit heads: searched and measured side by side", "",
          "Data {} (cal split for the search, test split for the drops and the bench); checkpoints {}; "
          "input-dependent, default promise; `mess-edge bench --instance` 200 test images x 3, interleaved, "
          "the checkpoints' benches back to back per budget; measured over the faster plain model (bench's "
          "baseline: the chained final-only path or the monolithic graph).".format(a.data, ", ".join(a.ckpt)), "",
          "| max drop (pp) | model | heads per exit | exits chosen | predicted | **measured** | test drop (pp) | "
          "exits taken on test |", "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        md.append("| {:g} | {} | {} | {} | {:.2f}x | **{:.2f}x** | {:.2f} | {} |".format(
            r["max_drop_pp"], r["model"], r["heads_per_exit"], exits_text(r["exits"]), r["predicted_speedup"],
            r["measured_speedup"], r["test_drop_pp"], fractions_text(r["test_exit_fractions"])))
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--data", default=os.path.join(ROOT, "runs", "ds128c"))
    ap.add_argument("--drops", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "head_space"))
    ap.add_argument("--profile-seconds", type=float, default=1.0)
    ap.add_argument("--out", default="head_space", help="result name under benchmarks/results/")
    a = ap.parse_args()
    models = []
    for spec in a.ckpt:
        name, sep, path = spec.partition("=")
        if not sep or not os.path.isfile(path):
            sys.exit("got --ckpt {}; expected NAME=PATH of a stage-2 checkpoint".format(spec))
        models.append((name, prepare(name, a.data, os.path.join(a.work, name), a.profile_seconds, ckpt=path)))
    rows = []
    for drop in a.drops:
        for name, p in models:
            test, work = load_memo(p["test_memo"]), os.path.dirname(p["memo"])
            row = search_replay_bench(p["memo"], os.path.join(p["onnx"], "manifest.json"), p["lut"], drop, test,
                                      p["engines"], a.data, os.path.join(work, "instance-{:g}.json".format(drop)),
                                      os.path.join(work, "bench-instance-{:g}.json".format(drop)))
            rows.append(dict(row, model=name, heads_per_exit=test.n_heads // len(set(test.head_exit.tolist()))))
            print("{} <= {:g} pp: measured {:.2f}x (predicted {:.2f}x), test drop {:.2f} pp".format(
                name, drop, row["measured_speedup"], row["predicted_speedup"], row["test_drop_pp"]), flush=True)
    save(a.out, {"data": a.data, "ckpt": a.ckpt, "rows": rows}, markdown(a, rows))


if __name__ == "__main__":
    main()
