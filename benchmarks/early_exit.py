"""The analogue of the paper's Table 2 on the embedded default, measured through the real runtime.

For each preset (a MobileNetV2 one and a dilated-ResNet one): the final-only baseline (the fastest of the
monolithic graph and the chained final path) against MESS instances searched on the calibration split for
(i) max mIoU at <= 1x the baseline's latency, (ii) min latency at <= 0.1 pp drop, (iii) min latency at <= 1 pp
drop; each with its test-split mIoU (from the runtime's own label maps) and mean measured latency per frame
through the chain (onnxruntime, CPU), interleaved frame by frame with the baseline. Beside them: the oracle exit
policy over all trained heads (each image leaves at the cheapest head whose prediction is as good as the final
one) as the limit: predicted from the latency table, and run for real (each image through the backbone stretch
to its oracle head, the head and its upsample, interleaved with the rest), so the searched policy is set against
it measured for measured.

    python benchmarks/early_exit.py --preset cpu-mbv2 --stage1 mess_edge/assets/cpu-mbv2-stage1.pt
    python benchmarks/early_exit.py --preset cpu-drn --stage1-epochs 10

Artifacts go under runs/early_exit/<preset>/ and are reused when present. The timing runs in a process that
never imports torch (a torch thread pool in the same process slows onnxruntime ~1.6x).

Then the deployed loop itself: the (iii) instance through `mess-edge run` on a video of the test split
(`mess-edge data video`), its fps against 1 / mean inference latency of the same run: as a camera faster than
inference (the video at 600 fps, --realtime: newest frame wins, mp4 out), the same without output, and the
file read frame by frame with every frame written. `--loop-only` measures just that on a preset's existing
artifacts and instances and updates the saved results.

    python benchmarks/early_exit.py --preset cpu-mbv2 --loop-only
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import RESULTS, ROOT, cli, save  # noqa: E402
from benchmarks._oracles import difficulty_breakdown, oracle, oracle_all_heads, perfect_decisions  # noqa: E402

TARGETS = {"mobilenetv2": {"1pp": 1.73, "0.1pp": 1.64}, "resnet": {"1pp": 2.65, "0.1pp": 2.23}}


def prepare(a, work):
    """Train (or reuse), calibrate, export, build and profile one preset; returns the artifact paths."""
    p = {k: os.path.join(work, v) for k, v in dict(
        stage1="stage1.pt", stage2="stage2.pt", memo="memo_cal.npz", test_memo="memo_test.npz", onnx="onnx",
        engines="engines", lut="engines/lut.json").items()}
    data = a.data
    if not os.path.isdir(data):
        cli("data", "digitscenes", "--out", data)
    if not os.path.isfile(p["stage1"]):
        if a.stage1:
            shutil.copyfile(a.stage1, p["stage1"])
        else:
            cli("train", "--preset", a.preset, "--data", data, "--stage", 1, "--epochs", a.stage1_epochs,
                "--out", p["stage1"], capture=False)
    if not os.path.isfile(p["stage2"]):
        cli("train", "--data", data, "--stage", 2, "--init", p["stage1"], "--space", a.space, "--epochs",
            a.stage2_epochs, "--val-images", 100, "--out", p["stage2"], capture=False)
    for split, key in (("cal", "memo"), ("test", "test_memo")):
        if not os.path.isfile(p[key]):
            cli("calibrate", p["stage2"], "--data", data, "--split", split, "--out", p[key])
    if not os.path.isfile(os.path.join(p["onnx"], "manifest.json")):
        cli("export", p["stage2"], "--out", p["onnx"])
    if not os.path.isfile(p["lut"]):
        cli("build", p["onnx"], "--backend", "ort", "--out", p["engines"])
        cli("profile", p["engines"], "--min-seconds", a.profile_seconds, "--threads", a.threads)
    return p


def search_instances(p, work):
    """The three searched instances of Table 2 plus final-only, as {label: instance path}."""
    base = ["--memo", p["memo"], "--manifest", os.path.join(p["onnx"], "manifest.json"), "--lut", p["lut"]]
    with open(p["lut"]) as f:
        lut = json.load(f)
    final_only = sum(s["median_ms"] for s in lut["segments"]) + lut["final"]["median_ms"]
    out = {}
    for label, extra in (("final-only", ["--setting", "final-only", "--max-drop", 0]),
                         ("(i) max mIoU, <= 1x latency", ["--setting", "input-dependent", "--budget-ms", final_only]),
                         ("(ii) min latency, <= 0.1 pp", ["--setting", "input-dependent", "--max-drop", 0.1]),
                         ("(iii) min latency, <= 1 pp", ["--setting", "input-dependent", "--max-drop", 1.0])):
        path = os.path.join(work, "instance_{}.json".format(len(out)))
        cli("search", *(base + extra + ["--out", path]))
        out[label] = path
    return out


MEASURE = r'''
import collections, json, sys
import numpy as np
sys.modules["torch"] = None  # the timing process must not load torch
from mess_edge.runtime.ort_runner import configure_ort_threads
configure_ort_threads(int(sys.argv[4]))
from mess_edge.build.engine_set import load_engines
from mess_edge.run.chain import Chain, load_instance
from mess_edge.profile.instance_bench import interleaved, load_frames
eng = load_engines(sys.argv[1]); paths = json.loads(sys.argv[2])
frames, labels = load_frames(eng, data=sys.argv[5], split="test", limit=int(sys.argv[3]))
mono = eng.runner("monolithic").activate()
chains = {k: Chain(eng, load_instance(v)).__enter__() for k, v in paths.items()}


def run_chain(chain):
    def fn(i, x):
        r = chain.run(x)
        return r.labels, str(r.graph)
    return fn


runs = collections.OrderedDict([("monolithic", lambda i, x: (mono.infer({"image": x})["labels"][0], None))])
runs.update((k, run_chain(c)) for k, c in chains.items())
orc = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None  # the oracle's graph per image, "final" or a head
if orc:
    # The oracle run for real, with the fewest sessions such a deployment would hold: per exit point one fused
    # backbone stretch from the image (as the chain fuses it), each head used, one upsample; the final path is
    # the chained final-only instance. (One budgeted Chain per head would load the backbone once per head.)
    from mess_edge.runtime.fuse import fuse_graphs
    from mess_edge.runtime.ort_runner import OrtRunner
    from mess_edge.run.chain import _upsample_for
    names = [g["name"] for g in eng.by_role("segment")] + ["final"]
    used = sorted(set(orc) - {"final"})
    stretch = {}
    for k in sorted({eng.graph(h)["exit"] for h in used}):
        model, first = fuse_graphs(eng, names[:k + 1]) if k else (eng.path(names[0]), "image")
        stretch[k] = (OrtRunner(model, providers=eng.sidecar["providers"], name="stretch 0..%d" % k).activate(), first)
    orc_heads = {h: eng.runner(h).activate() for h in used}
    orc_up = {h: _upsample_for(eng, h) for h in used}
    orc_ups = {u: eng.runner(u).activate() for u in set(orc_up.values())}
    th = np.array([0.5], np.float32)

    def run_oracle(h, x):  # image x through graph h's path: "final", or the stretch to h's exit, h, upsample
        if h == "final":
            return chains["final-only"].run(x).labels
        runner, first = stretch[eng.graph(h)["exit"]]
        feat = runner.infer({first: x}, check_inputs=False)["feat"]
        logits = orc_heads[h].infer({"feat": feat, "th_pix": th}, check_inputs=False)["logits"]
        up = orc_ups[orc_up[h]]
        return up.infer({list(up.input_metadata)[0]: logits}, check_inputs=False)["labels"][0]

    for h in used:  # every session the oracle holds, once: a first run is slow
        run_oracle(h, frames[0])
    runs["oracle"] = lambda i, x: (run_oracle(orc[i], x), orc[i])
res = interleaved(runs, frames, labels, eng.manifest["num_classes"], int(sys.argv[6]))
print(json.dumps({k: {f: v for f, v in r.items() if f != "ms"} for k, r in res.items()}))
'''


def measure(p, instances, a, oracle_run=None):
    r = subprocess.run([sys.executable, "-c", MEASURE, p["engines"], json.dumps(instances), str(a.n_test),
                        str(a.threads), a.data, str(a.reps)] + ([json.dumps(oracle_run)] if oracle_run else []),
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


LOOP_MODES = (  # (label, `mess-edge run` options): capture faster than inference, then the file frame by frame
    ("camera-like (600 fps, newest wins), mp4 out", ["--realtime", "--output"]),
    ("camera-like (600 fps, newest wins), no output", ["--realtime"]),
    ("file, every frame written", ["--output"]),
)


def measure_loop(p, instance, a, work):
    """`mess-edge run` on a video of the test split in each LOOP_MODES mode: the loop's fps against 1 / mean
    inference latency of the same run, frames written / not presented, frame-to-output latency."""
    video = os.path.join(work, "test_600fps.mp4")
    if not os.path.isfile(video):
        cli("data", "video", "--data", a.data, "--split", "test", "--out", video, "--fps", 600)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mess-loop-") as tmp:
        for label, opts in LOOP_MODES:
            stats = os.path.join(tmp, "stats.json")
            opts = [o for opt in opts for o in ([opt, os.path.join(tmp, "out.mp4")] if opt == "--output" else [opt])]
            load = os.getloadavg()[0]
            cli("run", instance, "--engines", p["engines"], "--source", video, "--loop", "--max-frames",
                a.loop_frames, "--no-display", "--threads", a.threads, "--stats", stats, *opts)
            with open(stats) as f:
                s = json.load(f)
            rows.append({"mode": label, "fps": s["fps"], "inference_fps": s["inference_fps"],
                         "ratio": s["fps"] / s["inference_fps"], "frames": s["frames"], "frames_in": s["frames_in"],
                         "dropped": s["dropped"], "frames_written": s["frames_written"],
                         "not_presented": s["not_presented"], "end_to_end_ms": s["latency_ms"]["end_to_end"],
                         "preprocess_ms": s["latency_ms"]["preprocess"], "load_average_1min": load})
    return {"instance": os.path.relpath(instance, ROOT), "threads": a.threads, "rows": rows}


def loop_markdown(r):
    md = ["### `mess-edge run` loop, {} ({} ORT threads, {})".format(r["preset"], r["loop"]["threads"],
                                                                    r["loop"]["instance"]), "",
          "| mode | loop fps | 1 / mean inference | ratio | written / processed / read | frame-to-output p50 / "
          "p90 / p99 ms | load |", "|---|---|---|---|---|---|---|"]
    for row in r["loop"]["rows"]:
        e = row["end_to_end_ms"]
        md.append("| {} | {:.1f} | {:.1f} | **{:.2f}** | {} / {} / {} | {:.1f} / {:.1f} / {:.1f} | {:.1f} |".format(
            row["mode"], row["fps"], row["inference_fps"], row["ratio"], row["frames_written"], row["frames"],
            row["frames_in"], e["p50"], e["p90"], e["p99"], row["load_average_1min"]))
    return md + [""]


def loop_only(a):
    """Measure the loop on each preset's existing artifacts and merge it into the saved results."""
    path = os.path.join(RESULTS, "early_exit.json")
    saved = {"results": [], "args": vars(a)}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    for preset in a.preset or ["cpu-mbv2"]:
        work = os.path.join(a.work, preset)
        p = {"engines": os.path.join(work, "engines")}
        instance = os.path.join(work, "instance_3.json")  # (iii) min latency, <= 1 pp (search_instances' order)
        if not os.path.isfile(instance) or not os.path.isdir(p["engines"]):
            sys.exit("no instances or engines under {}; run without --loop-only first".format(work))
        result = next((r for r in saved["results"] if r["preset"] == preset), None)
        if result is None:
            result = {"preset": preset}
            saved["results"].append(result)
        result["loop"] = measure_loop(p, instance, a, work)
    if "conditions" in saved:  # save() records this run's conditions; keep those of the tables
        saved.setdefault("table_conditions", saved.pop("conditions"))
    saved["headline"] = headline(saved["results"])
    save("early_exit", saved, markdown(saved["results"]))


def run_preset(a):
    from mess_edge.model.presets import get_preset

    work = os.path.join(a.work, a.preset)
    os.makedirs(work, exist_ok=True)
    p = prepare(a, work)
    instances = search_instances(p, work)
    limit = oracle_all_heads(p)
    meas = measure(p, instances, a, limit["assignment"][:a.n_test])
    loop = measure_loop(p, instances["(iii) min latency, <= 1 pp"], a, work)
    by_difficulty = difficulty_breakdown(p, a.data, {"policy": meas["(iii) min latency, <= 1 pp"]["taken"]})
    for m in meas.values():
        m.pop("taken", None)
    with open(p["lut"]) as f:
        lut = json.load(f)
    base_key = "monolithic" if meas["monolithic"]["mean_ms"] <= meas["final-only"]["mean_ms"] else "final-only"
    base = meas[base_key]
    rows = []
    for label, path in instances.items():
        with open(path) as f:
            inst = json.load(f)
        m = meas[label]
        row = {"label": label, "exits": [e["graph"] for e in inst["exits"]], "th_pix": inst.get("th_pix"),
               "th_img": [e.get("th_img") for e in inst["exits"]], "cal_miou": inst["calibration_miou"],
               "test_miou": m["miou"], "mean_ms": m["mean_ms"], "median_ms": m["median_ms"],
               "speedup": base["mean_ms"] / m["mean_ms"], "predicted_ms": inst["expected_cost"],
               "exits_taken": m["exits"]}
        if label.startswith("(ii)") or label.startswith("(iii)"):
            orc = oracle(p, path)
            row["oracle"] = dict(orc, predicted_speedup=inst["final_only_cost"] / orc["predicted_ms"])
            row["predicted_speedup"] = inst["final_only_cost"] / inst["expected_cost"]
            if inst["exits"]:
                row["perfect_decisions"] = perfect_decisions(p, path)
        rows.append(row)
    family = get_preset(a.preset).backbone
    return {"preset": a.preset, "family": family, "baseline": dict(base, config=base_key),
            "monolithic": meas["monolithic"], "chained_final_only": meas["final-only"],
            "chain_overhead": meas["final-only"]["mean_ms"] / meas["monolithic"]["mean_ms"],
            "rows": rows, "paper_targets": TARGETS[family],
            "oracle_all_heads": dict(limit, assignment=None, measured=dict(
                meas["oracle"], speedup=base["mean_ms"] / meas["oracle"]["mean_ms"])),
            "lut_final_only_ms": sum(s["median_ms"] for s in lut["segments"]) + lut["final"]["median_ms"], "loop": loop,
            "by_difficulty": by_difficulty}


def headline(results):
    """One line per preset: the <= 1 pp speedup against the paper's and the oracle limit, the loop ratio."""
    parts = []
    for r in results:
        row = next((x for x in r.get("rows", []) if x["label"].startswith("(iii)")), None)
        if row is None:
            continue
        target = r["paper_targets"]["1pp"]
        text = "{}: {:.2f}x at <= 1 pp (test mIoU {:.2f} vs {:.2f}; paper {:.2f}x: {})".format(
            r["preset"], row["speedup"], row["test_miou"], r["baseline"]["miou"], target,
            "met" if row["speedup"] >= target else "not met")
        if "oracle_all_heads" in r:
            o = r["oracle_all_heads"]
            text += ", oracle over all heads {:.2f}x predicted".format(o["predicted_speedup"])
            if o.get("measured"):
                text += " / {:.2f}x measured ({:.0%} of it reached)".format(
                    o["measured"]["speedup"], row["speedup"] / o["measured"]["speedup"])
        if "perfect_decisions" in row:
            text += ", perfect decisions on its exits {:.2f}x predicted".format(
                row["perfect_decisions"]["predicted_speedup"])
        if r.get("loop", {}).get("rows"):
            text += ", loop / inference fps {:.2f}".format(r["loop"]["rows"][0]["ratio"])
        parts.append(text)
    return "; ".join(parts)


def markdown(results):
    md = ["# Early exit through the runtime (Table 2 analogue, DigitScenes test split, onnxruntime CPU)", ""]
    for r in results:
        if "rows" not in r:
            md += loop_markdown(r) if "loop" in r else []
            continue
        b = r["baseline"]
        md += ["## {} ({} family)".format(r["preset"], r["family"]), "",
               "Baseline = fastest final-only configuration: {} at {:.3f} ms/frame, test mIoU {:.2f}. Chained "
               "final-only / monolithic = {:.3f}.".format(b["config"], b["mean_ms"], b["miou"], r["chain_overhead"]),
               "", "| instance | exits (th_img) | th_pix | cal mIoU | test mIoU | ms/frame | speedup | oracle "
               "speedup (pred.) | paper |", "|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            key = "1pp" if row["label"].startswith("(iii)") else "0.1pp" if row["label"].startswith("(ii)") else None
            md.append("| {} | {} | {} | {:.2f} | {:.2f} | {:.3f} | **{:.2f}x** | {} | {} |".format(
                row["label"], ", ".join("{} ({})".format(g, t) for g, t in zip(row["exits"], row["th_img"])) or "-",
                row["th_pix"], row["cal_miou"], row["test_miou"], row["mean_ms"], row["speedup"],
                "{:.2f}x".format(row["oracle"]["predicted_speedup"]) if "oracle" in row else "-",
                "{:.2f}x".format(r["paper_targets"][key]) if key else "-"))
        md.append("")
        if "oracle_all_heads" in r:
            o = r["oracle_all_heads"]
            md += ["The limit of any exit policy on this model (oracle over all {} trained heads, each test image at "
                   "the cheapest head as good as the final exit on it, no other head paid for): **{:.2f}x** "
                   "predicted from the table; {:.0%} of the images can leave early.".format(
                       o["heads"], o["predicted_speedup"], o["fraction_leaving_early"])]
            if o.get("measured"):
                m = o["measured"]
                md[-1] += (" Run for real (each image through the fused backbone stretch to its oracle head, that head "
                           "and the upsample, or the final path; one session per graph; interleaved with the rest): **{:.2f}x** at {:.3f} ms/frame, test mIoU {:.2f}.".format(
                               m["speedup"], m["mean_ms"], m["miou"]))
                md += [""] + ["{} reaches **{:.0%}** of the measured oracle's speedup ({:.2f}x of {:.2f}x; "
                              "target >= 90%).".format(row["label"], row["speedup"] / m["speedup"], row["speedup"],
                                                       m["speedup"])
                              for row in r["rows"] if row["label"].startswith(("(ii)", "(iii)"))]
            md += [""]
            perfect = [row for row in r["rows"] if "perfect_decisions" in row]
            if "at_drop" in o or perfect:
                md += ["That oracle is strict: it keeps every image as good as the final exit, which puts its mIoU "
                       "above the final exit's. Allowed the policies' drop, decisions that know the labels go "
                       "much further (predicted from the table): " + "; ".join(
                           ["over all heads {:.2f}x at <= {} pp".format(v["predicted_speedup"], k)
                            for k, v in sorted(o.get("at_drop", {}).items())] +
                           ["{}'s own exits {:.2f}x (its confidence policy: {:.2f}x predicted, {:.2f}x measured)".format(
                               row["label"].split(" ")[0], row["perfect_decisions"]["predicted_speedup"],
                               row["predicted_speedup"], row["speedup"]) for row in perfect]) +
                       ". The gap between those is how well the image confidence tells which images an exit gets "
                       "right, not the runtime.", ""]
        if r.get("by_difficulty"):
            md += ["By DigitScenes difficulty d (the generator's per-image draw; the easiest fifth has plain "
                   "backgrounds and 1-2 large digits):", "",
                   "| d | images | final exit pixel acc. | best of 24 heads - final (pp) | strict oracle sends early | "
                   "(iii) sent early |", "|---|---|---|---|---|---|"]
            for row in r["by_difficulty"]:
                md.append("| {:.1f}-{:.1f} | {} | {:.2%} | {:+.2f} | {:.0%} | {:.0%} |".format(
                    row["d_from"], row["d_to"], row["images"], row["final_pixel_accuracy"],
                    row["best_head_minus_final_pp"], row["oracle_early"], row["policy_early"]))
            md.append("")
        md += loop_markdown(r) if "loop" in r else []
    return "\n".join(md)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", help="preset(s) to run [cpu-mbv2 and cpu-drn]")
    p.add_argument("--stage1", default=None, help="use this stage-1 checkpoint instead of training one")
    p.add_argument("--stage1-epochs", type=int, default=10)
    p.add_argument("--stage2-epochs", type=int, default=2)
    p.add_argument("--space", default="small")
    p.add_argument("--data", default=os.path.join(ROOT, "runs", "ds128"))
    p.add_argument("--n-test", type=int, default=500, help="test images timed per configuration")
    p.add_argument("--reps", type=int, default=1, help="passes over the test images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile-seconds", type=float, default=1.0)
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "early_exit"))
    p.add_argument("--quick", action="store_true", help="100 test images, one preset's existing artifacts")
    p.add_argument("--loop-frames", type=int, default=3000, help="frames per `mess-edge run` loop measurement")
    p.add_argument("--loop-only", action="store_true",
                   help="measure only the `mess-edge run` loop on existing artifacts; update the saved results")
    a = p.parse_args()
    if a.loop_only:
        return loop_only(a)
    if a.quick:
        a.n_test = 100
    results = []
    for preset in a.preset or ["cpu-mbv2", "cpu-drn"]:
        results.append(run_preset(argparse.Namespace(**dict(vars(a), preset=preset))))
    save("early_exit", {"results": results, "args": vars(a), "headline": headline(results)}, markdown(results))


if __name__ == "__main__":
    main()
