"""Where early exit's speed is lost (issue 13 item 1): per benchmark model, one early exit + the final exit.

For every trained head h and every mIoU budget D (0.1, 0.25, 0.5, 1, 2 pp), how many test images can leave at h
and what that saves, under four rankings of the images (who leaves first):

- eq7: the exit's own confidence (eq. 7, the fraction of pixels with confidence >= th_pix, best th_pix), with
  the threshold chosen on the CALIBRATION split (the largest share of cal images leaving while the cal drop
  stays within D) and applied to the test split: what a deployed policy gets, and the test drop it really has.
- teacher: the true fraction of pixels the final exit would relabel (from the final exit's own label map: no
  labels needed, but not knowable before running the final exit): close to the ceiling of any policy that never
  sees labels. Ranked and cut on the test split, so an upper bound, not a policy.
- label-aware: ranked by how much worse the head is than the final exit on the image's labels: the "perfect
  decisions" figure. It profits from images where the exit is right and the final wrong, which nothing without
  labels can see: a bound, not a target.
And per head: its agreement with the final exit (mean share of pixels with the same label; share of images
with >= 99% agreement) against its cost (exit path / final path, from the latency table).

Costs are priced from the model's latency table as the chain runs (leave at h: backbone to h + head +
upsample; pass h: + the rest of the backbone and the final graph, the head paid): predicted, labelled as such.
Label maps come from the exported graphs through onnxruntime (the deployed graphs, not torch).

    python benchmarks/exit_ceilings.py --model cpu-mbv2-e8 [--model cpu-drn-e8]
    python benchmarks/exit_ceilings.py --ckpt pfd=a.pt --ckpt agree=b.pt --out stage2_losses   # variants

Artifacts under runs/ceilings/<model>/ are reused. Results: benchmarks/results/exit_ceilings.{json,md,png}.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import RESULTS, ROOT, chain_prices, cli, save  # noqa: E402

DROPS = (0.1, 0.25, 0.5, 1.0, 2.0)
POLICIES = ("eq7", "teacher", "label-aware")
# issue 13's targets (speedup at a drop budget), by model family
TARGETS = {"cpu-mbv2": {1.0: 1.25, 0.1: 1.1}, "cpu-drn": {1.0: 1.4, 0.1: 1.1}}


def targets_of(model):
    return next((t for prefix, t in TARGETS.items() if model.startswith(prefix)), {})


def what_is_left(row, target):
    """Where a target is missed at one budget, the parts in numbers: calibration margin (eq. 7 cut on test minus
    the deployed eq. 7), policy ranking (teacher minus eq. 7 cut on test), and the exits (the teacher's own gap
    to the target: the share of images that would have to leave at the teacher's exit cost, or the exit-path cost
    that its share would need)."""
    b = row["best"]
    t = b["teacher"]
    out = {"target": target, "eq7": b["eq7"]["speedup"], "eq7_test_cut": b["eq7"].get("test_cut_speedup", 1.0),
           "teacher": t["speedup"], "label_aware": b["label-aware"]["speedup"], "teacher_head": t["head"],
           "teacher_leave_share": t["leave_share"], "teacher_cost_ratio": t.get("cost_ratio"),
           "need_share_at_this_cost": None, "need_cost_at_this_share": None}
    c, q, f = t.get("cost_ratio"), t.get("pass_ratio"), t["leave_share"]
    if c is not None and c < q:
        out["need_share_at_this_cost"] = (1.0 / target - q) / (c - q)
    if c is not None and f > 0:
        out["need_cost_at_this_share"] = (1.0 / target - (1 - f) * q) / f
    return out


def prepare(model, data, work, profile_seconds, ckpt=None, lut=None):
    """Calibrate (cal, test), export, build and profile a committed benchmark model (or the checkpoint ``ckpt``);
    returns artifact paths. ``lut``: price with this latency table instead of profiling (variants of one
    architecture compared on one table, so that the machine's drift between profiles is not in the comparison)."""
    ckpt = ckpt or os.path.join(ROOT, "benchmarks", "models", model, "stage2.pt")
    if not os.path.isfile(ckpt):
        sys.exit("no benchmark model {}: run python benchmarks/make_models.py {}".format(ckpt, model))
    if not os.path.isdir(data):
        cli("data", "digitscenes", "--out", data)
    p = {k: os.path.join(work, v) for k, v in dict(memo="memo_cal.npz", test_memo="memo_test.npz", onnx="onnx",
                                                     engines="engines", lut="engines/lut.json").items()}
    os.makedirs(work, exist_ok=True)
    for split, key in (("cal", "memo"), ("test", "test_memo")):
        if not os.path.isfile(p[key]):
            cli("calibrate", ckpt, "--data", data, "--split", split, "--out", p[key])
    if not os.path.isfile(os.path.join(p["onnx"], "manifest.json")):
        cli("export", ckpt, "--out", p["onnx"])
    if not os.path.isfile(os.path.join(p["engines"], "engine.json")):
        cli("build", p["onnx"], "--backend", "ort", "--out", p["engines"])
    if lut:
        p["lut"] = lut
    elif not os.path.isfile(p["lut"]):
        cli("profile", p["engines"], "--min-seconds", profile_seconds, "--threads", 2)
    return p


def agreement(p, data, n_images):
    """float64 [H, I]: share of pixels where head h's label map equals the final exit's, on the test split, run
    through the exported graphs (the chain's upsample) with the runtime's preprocessing."""
    import numpy as np

    from mess_edge.build.engine_set import load_engines
    from mess_edge.calibrate.engine_memo import _image_outputs, _open_runners
    from mess_edge.confidence import DEFAULT_TH_PIX
    from mess_edge.data.voc import VocDataset, resize_pair
    from mess_edge.run.chain import _upsample_for
    from mess_edge.run.preprocess import Preprocessor

    engines = load_engines(p["engines"])
    man = engines.manifest
    hw = tuple(man["input_hw"])
    ds = VocDataset(data, "test", num_classes=int(man["num_classes"]))
    n = min(n_images, len(ds))
    heads = engines.by_role("head")
    upsample_of = {g["name"]: _upsample_for(engines, g["name"]) for g in heads}
    pre = Preprocessor(hw, man["normalization"])
    th = np.array([DEFAULT_TH_PIX], np.float32)
    agree = np.zeros((len(heads), n))
    runners = _open_runners(engines)
    try:
        for i in range(n):
            rgb, y = ds.load(i)
            if rgb.shape[:2] != hw:
                rgb, y = resize_pair(rgb, y, hw)
            outs = _image_outputs(engines, runners, pre(np.ascontiguousarray(rgb[..., ::-1])), upsample_of, th)
            final = outs[-1][1]
            for h, (_, labels) in enumerate(outs[:-1]):
                agree[h, i] = float(np.mean(labels == final))
    finally:
        for r in runners.values():
            r.deactivate()
    return agree, [g["name"] for g in heads]


def head_costs(p, memo):
    """Per head (memo order): (ms when an image leaves there, ms when it passes on to the final exit); and the
    final-only path's ms. From the table's means where it has them, else medians."""
    import numpy as np

    with open(p["lut"]) as f:
        lut = json.load(f)
    ms, backbone, final = chain_prices(lut)
    graphs = [ms(s) for s in lut["segments"]] + [ms(lut["final"])]
    head_ms = {h["name"]: ms(h) for h in lut["heads"]}
    up = ms(lut["upsample"])
    leave, passing = [], []
    for h in range(memo.n_heads):
        k = int(memo.head_exit[h])
        name = "head_" + memo.head_label(h).replace(":", "_")
        leave.append(backbone(k) + head_ms[name] + up)
        passing.append(backbone(k) + head_ms[name] + float(sum(graphs[k + 1:])))
    return np.array(leave), np.array(passing), final


def _best_cut(order, stats_h, stats_f, floor):
    """Largest k such that the first k images of ``order`` at head h (stats_h [I, 3C]) and the rest at the final
    exit keep mIoU >= floor; returns (k, mIoU of that split)."""
    import numpy as np

    from mess_edge.search.memo import miou_from_stats

    d = stats_h[order] - stats_f[order]
    cum = np.vstack([np.zeros((1, d.shape[1])), np.cumsum(d, 0)]) + stats_f.sum(0)
    miou = miou_from_stats(cum)
    ok = np.flatnonzero(miou >= floor)
    k = int(ok.max())
    return k, float(miou[k])


def eq7_split(cal, test, h, drop):
    """eq. 7 at head h: th_img and th_pix chosen on ``cal`` (most images leaving within the drop), applied to
    ``test``. Returns (share of test images leaving, test mIoU, th_pix, th_img)."""
    import numpy as np

    from mess_edge.search.memo import miou_from_stats

    best = None
    sc, st = cal.stats(np.float64), test.stats(np.float64)
    floor = float(cal.head_miou()[-1]) - drop / 100.0
    for j in range(len(cal.hist_bins) - 1):
        conf = cal.image_confidence("edge", j)[h]
        order = np.argsort(-conf, kind="stable")
        k, _ = _best_cut(order, sc[h], sc[cal.n_heads], floor)
        if k == 0:
            continue
        th_img = float(conf[order[k - 1]])
        if best is None or k > best[0]:
            best = (k, j, th_img)
    if best is None:
        return 0.0, float(test.head_miou()[-1]), None, None, 0.0, 0.0
    _, j, th_img = best
    conf = test.image_confidence("edge", j)[h]
    leave = conf >= th_img
    taken = np.where(leave, h, test.n_heads)
    miou = float(miou_from_stats(st[taken, np.arange(test.n_images)].sum(0)))
    # the same ranking cut on the test split itself: what eq. 7 gives without a calibration margin
    k_test, _ = _best_cut(np.argsort(-conf, kind="stable"), st[h], st[test.n_heads],
                          float(test.head_miou()[-1]) - drop / 100.0)
    return float(leave.mean()), miou, float(cal.hist_bins[j]), th_img, best[0] / cal.n_images, k_test / test.n_images


def analyse(p, data, n_images):
    import numpy as np

    from mess_edge.search.memo import load_memo, miou_from_stats

    cal, test = load_memo(p["memo"]), load_memo(p["test_memo"])
    agree, _ = agreement(p, data, n_images)
    n = agree.shape[1]
    st = test.stats(np.float64)[:, :n]
    correct = np.trace(test.confusion[:, :n], axis1=2, axis2=3).astype(np.float64)
    leave_ms, pass_ms, final_ms = head_costs(p, test)
    final_miou = float(miou_from_stats(st[-1].sum(0)))
    rows, per_head = [], []
    for h in range(test.n_heads):
        per_head.append({"head": test.head_label(h), "agreement": float(agree[h].mean()),
                         "images_99": float(np.mean(agree[h] >= 0.99)), "cost_ratio": float(leave_ms[h] / final_ms),
                         "test_miou": float(test.head_miou()[h] * 100)})
    for drop in DROPS:
        floor = final_miou - drop / 100.0
        # final-only is always available: a head whose early path does not pay is not taken
        best = {policy: {"head": "none (final only)", "leave_share": 0.0, "test_drop_pp": 0.0, "speedup": 1.0,
                         "th_pix": None, "th_img": None} for policy in POLICIES}
        teacher_at = {}  # head -> the teacher's result there: the ceiling on the policy's own exit
        for h in range(test.n_heads):
            for policy in POLICIES:
                if policy == "eq7":
                    f, miou, th_pix, th_img, f_cal, f_test_cut = eq7_split(cal, _head_view(test, n), h, drop)
                else:
                    key = -agree[h] if policy == "teacher" else (correct[h] - correct[-1])
                    order = np.argsort(-key if policy == "label-aware" else key, kind="stable")
                    k, miou = _best_cut(order, st[h], st[-1], floor)
                    f, th_pix, th_img = k / n, None, None
                ms = f * leave_ms[h] + (1 - f) * pass_ms[h]
                r = {"head": test.head_label(h), "leave_share": f, "test_drop_pp": (final_miou - miou) * 100,
                     "speedup": final_ms / ms if f > 0 else 1.0, "th_pix": th_pix, "th_img": th_img}
                if policy == "eq7":  # the head is chosen by its calibration-split speedup, never by test
                    r["cal_speedup"] = final_ms / (f_cal * leave_ms[h] + (1 - f_cal) * pass_ms[h])
                    r["over_budget"] = r["test_drop_pp"] > drop + 1e-9
                    r["test_cut_speedup"] = (final_ms / (f_test_cut * leave_ms[h] + (1 - f_test_cut) * pass_ms[h])
                                             if f_test_cut > 0 else 1.0)
                r["cost_ratio"], r["pass_ratio"] = float(leave_ms[h] / final_ms), float(pass_ms[h] / final_ms)
                if policy == "teacher":
                    teacher_at[r["head"]] = r
                key = "cal_speedup" if policy == "eq7" else "speedup"
                if r[key] > best[policy].get(key, 1.0):
                    best[policy] = r
        # the policy target is against the teacher on the policy's own exit (final only: 1.00x)
        best["teacher-own"] = teacher_at.get(best["eq7"]["head"], dict(best["eq7"], speedup=1.0, leave_share=0.0))
        rows.append({"drop_pp": drop, "best": best})
    return {"final_test_miou": final_miou * 100, "final_ms": final_ms, "images": n, "per_drop": rows,
            "per_head": per_head}


def add_left(name, r):
    """r["left"]: what_is_left at every budget issue 13 sets a target for."""
    r["left"] = {str(d): what_is_left(next(row for row in r["per_drop"] if row["drop_pp"] == d), t)
                 for d, t in sorted(targets_of(name).items())}
    return r


def _left_lines(left):
    lines = ["What is left to the targets (predicted from the table; eq7 cut on test = the same ranking without "
             "the calibration margin):", "",
             "| budget (pp) | target | eq7 (deployed) | eq7 cut on test | teacher | calibration margin | policy "
             "ranking | exits: share leaving at the teacher's head, needed | exits: its path cost / final, needed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d, x in left.items():
        share = x["need_share_at_this_cost"]
        cost = x["need_cost_at_this_share"]
        lines.append("| {} | {:.2f}x | {:.3f}x | {:.3f}x | {:.3f}x | {:+.3f}x | {:+.3f}x | {} | {} |".format(
            d, x["target"], x["eq7"], x["eq7_test_cut"], x["teacher"], x["eq7_test_cut"] - x["eq7"],
            x["teacher"] - x["eq7_test_cut"],
            "{:.0%} at {}, {}".format(x["teacher_leave_share"], x["teacher_head"], "met" if x["teacher"] >=
                                      x["target"] else ("{:.0%}".format(share) if share is not None and share <= 1
                                                        else "more than all images")),
            "-" if x["teacher_cost_ratio"] is None else "{:.2f}, {}".format(
                x["teacher_cost_ratio"], "met" if x["teacher"] >= x["target"] else (
                    "{:.2f}".format(cost) if cost is not None and cost > 0 else "below zero: unreachable"))))
    return lines + [""]


def _head_view(memo, n):
    """The first n images of a memo (the agreement pass may use fewer images than the memo holds)."""
    import dataclasses

    if n >= memo.n_images:
        return memo
    cut = {f: getattr(memo, f)[:, :n] for f in ("confusion", "hist_edge", "hist_raw", "mean_conf", "n_pixels")}
    return dataclasses.replace(memo, _cache={}, lc_cover_hist=None, lc_stats=None, lc_th=None, **cut)


def markdown(results):
    lines = ["# Ceilings of one early exit (issue 13 item 1; DigitScenes test split, onnxruntime CPU table)", "",
             "Speedups are predicted from each model's measured latency table (priced as the chain runs), one early",
             "exit + the final exit, best head per cell (final only, 1.00x, when no head pays). eq7 is a policy",
             "(head and thresholds chosen on the calibration split; * marks a test drop over the budget);",
             "teacher and label-aware are cut on the test split and are ceilings, not policies. eq7 / teacher is the",
             "share of the teacher's gain the policy gets. eq7 cut / it compares the two rankings alone: eq. 7's",
             "ranking cut on the test split at the budget over the teacher's on eq. 7's own head (the issue's policy",
             "target: >= 95% at <= 1 pp; the calibration margin is the gap between eq7 and eq7 cut, below).", ""]
    for name, r in results.items():
        lines += ["## {} (final test mIoU {:.2f}, final path {:.3f} ms, {} test images)".format(
            name, r["final_test_miou"], r["final_ms"], r["images"]), "",
            "| budget (pp) | eq7 | eq7 / teacher | teacher | teacher on eq7's head | eq7 cut / it | label-aware "
            "| eq7 head, test drop |", "|---|---|---|---|---|---|---|---|"]
        for row in r["per_drop"]:
            b = row["best"]
            gain = b["teacher"]["speedup"] - 1
            own = b.get("teacher-own")
            lines.append("| {} | {:.3f}x{} | {} | {:.3f}x | {} | {} | {:.3f}x | {} {:.2f} pp |".format(
                row["drop_pp"], b["eq7"]["speedup"], "*" if b["eq7"].get("over_budget") else "",
                "{:.0f}%".format(100 * (b["eq7"]["speedup"] - 1) / gain) if gain > 1e-6 else "-",
                b["teacher"]["speedup"], "-" if own is None else "{:.3f}x".format(own["speedup"]),
                "-" if own is None or own["speedup"] <= 1 + 1e-6 else "{:.1%}".format(
                    b["eq7"]["test_cut_speedup"] / own["speedup"]),
                b["label-aware"]["speedup"], b["eq7"]["head"], b["eq7"]["test_drop_pp"]))
        lines += [""] + (_left_lines(r["left"]) if r.get("left") else [])
        lines += ["Per head: agreement with the final exit against cost (exit path / final path):", "",
                  "| head | test mIoU | pixels agreeing | images >= 99% agreeing | cost ratio |", "|---|---|---|---|---|"]
        for h in sorted(r["per_head"], key=lambda h: -h["images_99"] / h["cost_ratio"])[:12]:
            lines.append("| {} | {:.1f} | {:.2f}% | {:.1f}% | {:.2f} |".format(
                h["head"], h["test_miou"], 100 * h["agreement"], 100 * h["images_99"], h["cost_ratio"]))
        lines.append("")
    lines += ["![speedup against test mIoU drop](exit_ceilings.png)"]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for policy in POLICIES:
            pts = sorted((row["best"][policy]["test_drop_pp"], row["best"][policy]["speedup"]) for row in r["per_drop"])
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=policy)
        ax.set_title(name)
        ax.set_xlabel("test mIoU drop (pp)")
        ax.set_ylabel("speedup vs final-only (predicted from the table)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="benchmarks/models/<name> [every committed model]")
    ap.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                    help="also a stage-2 checkpoint of one's own (e.g. a stage-2 loss variant), named NAME")
    ap.add_argument("--out", default="exit_ceilings", help="result name under benchmarks/results/")
    ap.add_argument("--lut", default=None, help="price every model with this latency table (same architecture)")
    ap.add_argument("--data", default=os.path.join(ROOT, "runs", "ds128"))
    ap.add_argument("--images", type=int, default=500, help="test images for the agreement pass")
    ap.add_argument("--profile-seconds", type=float, default=1.0)
    ap.add_argument("--cal-memo", default=None, metavar="FILE",
                    help="choose eq. 7's thresholds on this memo of runs/ceilings/<model>/ (e.g. memo_cal2000.npz, "
                         "from calibration_size.py) instead of memo_cal.npz")
    ap.add_argument("--render", action="store_true",
                    help="rebuild NAME.md from the saved benchmarks/results/NAME.json (--out), nothing rerun")
    a = ap.parse_args()
    if a.render:
        return render(a.out)
    extra = [c.split("=", 1) for c in a.ckpt]
    if any(len(c) != 2 or not os.path.isfile(c[1]) for c in extra):
        sys.exit("got --ckpt {}; expected NAME=PATH of an existing checkpoint".format(a.ckpt))
    models = [(m, None) for m in (a.model or ([] if extra else sorted(
        d for d in os.listdir(os.path.join(ROOT, "benchmarks", "models"))
        if os.path.isfile(os.path.join(ROOT, "benchmarks", "models", d, "stage2.pt")))))] + [tuple(c) for c in extra]
    results = {}
    for m, ckpt in models:
        p = prepare(m, a.data, os.path.join(ROOT, "runs", "ceilings", m), a.profile_seconds, ckpt, a.lut)
        if a.cal_memo:
            p["memo"] = os.path.join(os.path.dirname(p["memo"]), a.cal_memo)
            if not os.path.isfile(p["memo"]):
                sys.exit("no calibration memo {}: make it with benchmarks/calibration_size.py".format(p["memo"]))
        results[m] = add_left(m, analyse(p, a.data, a.images))
    os.makedirs(RESULTS, exist_ok=True)
    plot(results, os.path.join(RESULTS, a.out + ".png"))
    save(a.out, {"models": results, "drops_pp": list(DROPS), "checkpoints": dict(extra), "lut": a.lut,
                 "cal_memo": a.cal_memo}, _markdown_of(results, a.out, a.cal_memo))


def _markdown_of(results, out, cal_memo):
    md = markdown(results).replace("(exit_ceilings.png)", "({}.png)".format(out))
    if cal_memo:
        md = md.replace("(head and thresholds chosen on the calibration split;",
                        "(head and thresholds chosen on the calibration memo {};".format(cal_memo), 1)
    return md


def render(out):
    from mess_edge.artifacts import write_bytes_atomic

    path = os.path.join(RESULTS, out + ".json")
    if not os.path.isfile(path):
        sys.exit("no saved result {}: run the benchmark first".format(path))
    with open(path) as f:
        saved = json.load(f)
    md = _markdown_of(saved["models"], out, saved.get("cal_memo"))
    write_bytes_atomic(os.path.join(RESULTS, out + ".md"), (md.rstrip() + "\n").encode())
    print(md)


if __name__ == "__main__":
    main()
