"""Does a wider space of exit heads pay? Stage-2 checkpoints of one stage 1, searched and measured side by side.

Issue 13, item 2 asks whether the search, given more candidate heads per exit point, finds exits that agree
with the final exit on more images per millisecond. Each ``--ckpt NAME=PATH`` (stage-2 checkpoints of the same
stage 1 and recipe, different ``--space``) is calibrated on ``--data``'s cal and test splits, exported, built
for ONNX Runtime and profiled (exit_ceilings.prepare, under ``--work``), searched (input-dependent, the default
promise) at each of ``--drops``, replayed on the test memo (its drop on the test images), and measured by
`mess-edge bench --instance` (200 test images x 3, interleaved, over the final-only path); the benches of all
checkpoints run back to back per budget. Saves benchmarks/results/head_space.{json,md} (``--out``).

    python benchmarks/head_space.py --data runs/ds128c --ckpt small8=runs/demo-cal2000/stage2.pt \\
        --ckpt cheap32=runs/cheap32/stage2.pt
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from benchmarks._common import cli, save  # noqa: E402
from exit_ceilings import prepare  # noqa: E402
from mess_edge.search.instance import simulate  # noqa: E402
from mess_edge.search.memo import load_memo  # noqa: E402


def searched(name, p, drop, test):
    """`mess-edge search` at ``drop`` pp on the cal memo, replayed on ``test``: (instance path, row)."""
    inst = os.path.join(os.path.dirname(p["memo"]), "instance-{:g}.json".format(drop))
    cli("search", "--memo", p["memo"], "--manifest", os.path.join(p["onnx"], "manifest.json"), "--lut", p["lut"],
        "--setting", "input-dependent", "--max-drop", drop, "--out", inst)
    with open(inst) as f:
        instance = json.load(f)
    replay = simulate(test, instance)
    return inst, {"model": name, "max_drop_pp": drop, "heads_per_exit": test.n_heads // len(set(test.head_exit)),
                  "exits": [e["graph"] for e in instance["exits"]],
                  "predicted_speedup": instance["final_only_cost"] / instance["expected_cost"],
                  "test_drop_pp": float(test.head_miou()[test.n_heads]) * 100.0 - replay["miou"],
                  "test_final_miou": float(test.head_miou()[test.n_heads]) * 100.0,
                  "test_exit_fractions": replay["exit_fractions"]}


def benched(p, inst, data):
    out = os.path.join(os.path.dirname(inst), "bench-" + os.path.basename(inst))
    cli("bench", p["engines"], "--instance", inst, "--data", data, "--images", 200, "--reps", 3, "--json", out)
    with open(out) as f:
        return json.load(f)


def markdown(a, rows):
    md = ["# A wider space of exit heads: searched and measured side by side", "",
          "Data {} (cal split for the search, test split for the drops and the bench); checkpoints {}; "
          "input-dependent, default promise; `mess-edge bench --instance` 200 test images x 3, interleaved, "
          "the checkpoints' benches back to back per budget.".format(a.data, ", ".join(a.ckpt)), "",
          "| max drop (pp) | model | heads per exit | exits chosen | predicted | **measured** | test drop (pp) | "
          "exits taken on test |", "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        md.append("| {:g} | {} | {} | {} | {:.2f}x | **{:.2f}x** | {:.2f} | {} |".format(
            r["max_drop_pp"], r["model"], r["heads_per_exit"],
            " ".join(g.replace("head_", "") for g in r["exits"]) or "final only", r["predicted_speedup"],
            r["measured_speedup"], r["test_drop_pp"],
            ", ".join("{} {:.0%}".format(k.replace("head_", ""), v) for k, v in r["test_exit_fractions"].items())))
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
            inst, row = searched(name, p, drop, load_memo(p["test_memo"]))
            b = benched(p, inst, a.data)
            row.update(measured_speedup=b["speedup"], bench_drop_pp=b["miou_drop_pp"])
            rows.append(row)
            print("{} <= {:g} pp: measured {:.2f}x (predicted {:.2f}x), test drop {:.2f} pp".format(
                name, drop, row["measured_speedup"], row["predicted_speedup"], row["test_drop_pp"]), flush=True)
    save(a.out, {"data": a.data, "ckpt": a.ckpt, "rows": rows}, markdown(a, rows))


if __name__ == "__main__":
    main()
