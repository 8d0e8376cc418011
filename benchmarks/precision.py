"""Precision on the device: mIoU per exit and per precision, latency per precision on ONNX Runtime (CPU), and
the instance searched on each precision's memo, replayed on that precision's test split.

Model: a committed benchmark model (``--model``, default cpu-mbv2-e8: benchmarks/models/<name>/stage2.pt, made by
benchmarks/make_models.py), or with ``--model short`` the shipped stage-1 checkpoint plus ``--stage2-steps``
steps of the demo's stage 2; exported, then
``mess-edge quantize --precision int8`` (calibrated on the cal split) and ``--precision fp16``. Each folder is
built for ORT, profiled, and memoised on the cal and test splits by ``calibrate --engines`` (the deployed
graphs at their precision); PyTorch FP32 is ``calibrate CKPT``. Searches: input-dependent, --max-drop on each
cal memo with that precision's latency table, with search's default promise (new images, Learn-then-Test,
delta 0.1); the drop that matters is measured on the test memo of the same precision. Latency: the final-only
path (chain of segments -> final; and the monolithic graph) of every
precision timed in one process, interleaved round by round: only the ratios mean something here.

    python benchmarks/precision.py [--model cpu-mbv2-e8]     # reuses what exists in runs/precision-<model>
    python benchmarks/precision.py --model cpu-effl0-e8 --precisions fp32,int8,int8nofb,fp16
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, cli, save  # noqa: E402

# int8: quantize's default (symmetric, the image's convolution fp32, the label-disagreement fallback); int8nofb:
# without the fallback; int8all: every convolution INT8, no fallback (a plain quantizer); int8h: int8 with the
# exit heads fp32; int8u8: uint8 activations (ORT CPU only, TensorRT refuses)
PRECISIONS = ("fp32", "int8", "int8nofb", "int8all", "int8h", "int8u8", "fp16")
LABELS = {"int8": "INT8 s8 (default)", "int8nofb": "INT8 s8, no fallback", "int8all": "INT8 s8, every conv",
          "int8h": "INT8 s8, heads fp32", "int8u8": "INT8 u8 (CPU)", "fp16": "FP16"}
QUANTIZE = {"int8": ("--precision", "int8"), "int8nofb": ("--precision", "int8", "--fallback-max-layers", 0),
            "int8all": ("--precision", "int8", "--int8-first-conv", "--fallback-max-layers", 0),
            "int8h": ("--precision", "int8", "--fp32-heads"),
            "int8u8": ("--precision", "int8", "--activations", "uint8"),
            "fp16": ("--precision", "fp16")}


def prepare(work, model, n_eval, stage2_steps, calib_images, log):
    """Everything the tables read, made once (reused when present)."""
    data, ckpt = os.path.join(work, "data"), os.path.join(work, "stage2.pt")
    if model != "short":
        ckpt = os.path.join(ROOT, "benchmarks", "models", model, "stage2.pt")
        if not os.path.isfile(ckpt):
            sys.exit("no benchmark model {}: run python benchmarks/make_models.py {}".format(ckpt, model))
    if not os.path.isdir(data):  # the generator's defaults: the data the benchmark models were trained on
        log("data"), cli("data", "digitscenes", "--out", data, "--n-train", 2000, "--n-cal", 500, "--n-test", 500)
    if not os.path.isfile(ckpt):
        from mess_edge.demo import SHIPPED_STAGE1
        log("stage 2"), cli("train", "--data", data, "--stage", 2, "--init", SHIPPED_STAGE1, "--space", "small",
                            "--epochs", 1, "--max-steps", stage2_steps, "--loss-stride", 4, "--val-images", 0,
                            "--out", ckpt)
    onnx = {"fp32": os.path.join(work, "onnx")}
    if not os.path.isdir(onnx["fp32"]):
        log("export"), cli("export", ckpt, "--out", onnx["fp32"])
    for p, args in QUANTIZE.items():
        if p not in PRECISIONS:
            continue  # not asked for (--precisions)
        onnx[p] = os.path.join(work, "onnx-" + p)
        if not os.path.isdir(onnx[p]):
            extra = ("--calib-data", data, "--calib-images", calib_images) if p != "fp16" else ()
            log("quantize " + p), cli("quantize", onnx["fp32"], *args, "--out", onnx[p], *extra)
    engines, luts, memos = {}, {}, {}
    for p in PRECISIONS:
        engines[p] = os.path.join(work, "engines-" + p)
        if not os.path.isfile(os.path.join(engines[p], "engine.json")):
            log("build " + p), cli("build", onnx[p], "--backend", "ort", "--out", engines[p])
        luts[p] = os.path.join(engines[p], "lut.json")
        if not os.path.isfile(luts[p]):
            log("profile " + p), cli("profile", engines[p], "--out", luts[p], "--min-seconds", 0.2)
        for split in ("cal", "test"):
            memos[p, split] = os.path.join(work, "memo-{}-{}.npz".format(p, split))
            if not os.path.isfile(memos[p, split]):
                log("calibrate --engines {} {}".format(p, split))
                cli("calibrate", "--engines", engines[p], "--data", data, "--split", split, "--max-images", n_eval,
                    "--out", memos[p, split])
    for split in ("cal", "test"):
        memos["torch", split] = os.path.join(work, "memo-torch-{}.npz".format(split))
        if not os.path.isfile(memos["torch", split]):
            log("calibrate torch " + split)
            cli("calibrate", ckpt, "--data", data, "--split", split, "--max-images", n_eval, "--out",
                memos["torch", split])
    return {"data": data, "ckpt": ckpt, "onnx": onnx, "engines": engines, "luts": luts, "memos": memos}


def miou_table(paths):
    """{source: {head label: test mIoU %}} for PyTorch FP32 and each ORT precision."""
    from mess_edge.search import load_memo

    out = {}
    for src in ("torch",) + PRECISIONS:
        m = load_memo(paths["memos"][src, "test"])
        out[src] = {m.head_label(h): float(100 * v) for h, v in enumerate(m.head_miou())}
    return out


def per_exit_drop(table, precision, reference="fp32"):
    """Largest |mIoU(precision) - mIoU(reference)| over the heads of each exit point, and of the final, pp."""
    worst = {}
    for label, v in table[reference].items():
        key = label.split(":")[0]
        worst[key] = max(worst.get(key, 0.0), abs(table[precision][label] - v))
    return worst


def latency(paths, rounds, seconds):
    """{precision: {"final_only_chain_ms", "monolithic_ms"}} medians over ``rounds`` interleaved rounds."""
    import numpy as np

    from mess_edge.build.engine_set import load_engines
    from mess_edge.profile import timing
    from mess_edge.run.chain import INSTANCE_FORMAT, Chain
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads()
    final_only = {"format": INSTANCE_FORMAT, "setting": "final-only", "exits": [], "final": True}
    chains, monos, image = {}, {}, None
    for p in PRECISIONS:
        e = load_engines(paths["engines"][p])
        if image is None:
            h, w = e.manifest["input_hw"]
            image = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        chains[p] = Chain(e, final_only).__enter__()
        monos[p] = e.runner("monolithic").activate()
    samples = {(p, k): [] for p in PRECISIONS for k in ("chain", "mono")}
    feed = {"image": image}
    try:
        for _ in range(rounds):
            for p in PRECISIONS:
                samples[p, "chain"].append(timing.time_fn(lambda: chains[p].run(image), 10, seconds, 0.05).median_ms)
                samples[p, "mono"].append(timing.time_fn(lambda: monos[p].infer(feed, False), 10, seconds,
                                                         0.05).median_ms)
    finally:
        for p in PRECISIONS:
            chains[p].__exit__(None, None, None)
            monos[p].deactivate()
    return {p: {"final_only_chain_ms": float(np.median(samples[p, "chain"])),
                "monolithic_ms": float(np.median(samples[p, "mono"]))} for p in PRECISIONS}


def searches(paths, max_drop_pp):
    """The input-dependent instance searched on each cal memo (search's default promise: new images,
    Learn-then-Test, delta 0.1), replayed on the test memo of the same source."""
    from mess_edge.search import Objective, instance_dict, load_search_inputs, simulate
    from mess_edge.search.risk import Promise, controlled_search

    rows = {}
    for src in ("torch",) + PRECISIONS:
        p = "fp32" if src == "torch" else src
        manifest = os.path.join(paths["onnx"][p], "manifest.json")
        cal = load_search_inputs(paths["memos"][src, "cal"], manifest, paths["luts"][p])
        test = load_search_inputs(paths["memos"][src, "test"], manifest, paths["luts"][p])
        res, _ = controlled_search(cal.memo, cal.costs, "input-dependent", Objective(max_drop=max_drop_pp / 100.0),
                                   Promise("new-images"))
        inst = instance_dict(res, cal.memo, cal.costs)
        sim = simulate(test.memo, inst, test.costs)
        final_test = float(100 * test.memo.head_miou()[-1])
        final_ms = cal.costs.final_only()
        rows[src] = {"lut": p, "config": res.description, "cal_miou": res.miou * 100,
                     "cal_final_miou": float(100 * cal.memo.head_miou()[-1]), "test_miou": sim["miou"],
                     "test_final_miou": final_test, "test_drop_pp": final_test - sim["miou"],
                     "meets_drop_on_test": final_test - sim["miou"] <= max_drop_pp,
                     "expected_ms_test": sim["expected_cost"], "final_only_ms": final_ms,
                     "estimated_speedup_test": final_ms / sim["expected_cost"] if sim["expected_cost"] else None,
                     "exit_fractions_test": sim["exit_fractions"]}
    return rows


def markdown(payload):
    t, lat, s = payload["miou_test"], payload["latency"], payload["search"]
    lines = ["# Precision: INT8 (Q/DQ) and FP16 graphs against FP32 (ONNX Runtime, CPU)", "",
             "Model: {}. mIoU on {} test images per exit (every head; the search's memo format, from "
             "`calibrate --engines` at each precision; PyTorch FP32 from `calibrate CKPT`).".format(
                 payload["model"], payload["n_eval"]), "",
             "| head | PyTorch FP32 | ORT FP32 | " + " | ".join("ORT " + LABELS[p] for p in PRECISIONS[1:]) +
             " | INT8 s8 - FP32 (pp) |", "|---" * (len(PRECISIONS) + 3) + "|"]
    for label in t["fp32"]:
        lines.append("| {} | {:.2f} | ".format(label, t["torch"][label]) + " | ".join(
            "{:.2f}".format(t[p][label]) for p in PRECISIONS) + " | {:+.2f} |".format(t["int8"][label] -
                                                                                     t["fp32"][label]))
    for p in PRECISIONS[1:]:
        lines += ["", "Largest |{} - ORT FP32| per exit point (pp): ".format(p) + ", ".join(
            "{} {:.2f}".format(k, v) for k, v in payload["worst_drop_per_exit_pp"][p].items())]
    lines += ["Largest |PyTorch FP32 - ORT FP32| per exit point (pp): " + ", ".join(
        "{} {:.2f}".format(k, v) for k, v in payload["worst_drop_per_exit_pp"]["torch"].items()), "",
              "Latency, final-only, ORT CPU ({} threads), medians of {} interleaved rounds (ratios are what "
              "counts):".format(payload["threads"], payload["rounds"]), "",
              "| precision | chain (segments -> final) ms | monolithic ms | FP32 / this (chain) | FP32 / this (mono) |",
              "|---|---|---|---|---|"]
    for p in PRECISIONS:
        lines.append("| {} | {:.3f} | {:.3f} | {:.2f}x | {:.2f}x |".format(
            p, lat[p]["final_only_chain_ms"], lat[p]["monolithic_ms"],
            lat["fp32"]["final_only_chain_ms"] / lat[p]["final_only_chain_ms"],
            lat["fp32"]["monolithic_ms"] / lat[p]["monolithic_ms"]))
    lines += ["", "Instance searched on each cal memo (input-dependent, max drop {} pp, promise on new images with "
              "probability >= 0.9 (Learn-then-Test), that precision's lut), "
              "replayed on the same precision's test memo (speedup: an estimate from the lut):".format(
                  payload["max_drop_pp"]), "",
              "| memo | instance | cal mIoU | test mIoU | test final | test drop pp | meets drop | est. speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for src, r in s.items():
        lines.append("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} | {} |".format(
            src, r["config"], r["cal_miou"], r["test_miou"], r["test_final_miou"], r["test_drop_pp"],
            "yes" if r["meets_drop_on_test"] else "NO",
            "-" if r["estimated_speedup_test"] is None else "{:.2f}x".format(r["estimated_speedup_test"])))
    return "\n".join(lines)


def main():
    global PRECISIONS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cpu-mbv2-e8", help="a model under benchmarks/models/, or 'short'")
    ap.add_argument("--work", default=None, help="default runs/precision-<model>")
    ap.add_argument("--n-eval", type=int, default=500, help="cal and test images memoised")
    ap.add_argument("--stage2-steps", type=int, default=8)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    ap.add_argument("--max-drop", type=float, default=1.0, help="pp")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated subset to run (fp32 and int8 always): a quicker run on a larger model")
    a = ap.parse_args()
    wanted = set(a.precisions.split(",")) | {"fp32", "int8"}
    if not wanted <= set(PRECISIONS):
        sys.exit("got --precisions {}; expected names among {}".format(a.precisions, ",".join(PRECISIONS)))
    PRECISIONS = tuple(p for p in PRECISIONS if p in wanted)  # every function below reads this one tuple
    t0 = time.time()
    work = a.work or os.path.join(ROOT, "runs", "precision-" + a.model)
    paths = prepare(work, a.model, a.n_eval, a.stage2_steps, a.calib_images, lambda s: print("..", s, flush=True))
    table = miou_table(paths)
    from mess_edge.runtime.device import physical_cores

    model = ("{} (benchmarks/models/{}/stage2.pt)".format(a.model, a.model) if a.model != "short" else
             "cpu-mbv2 (shipped stage 1 + {} stage-2 steps, small space)".format(a.stage2_steps))
    payload = {"model": model + ", DigitScenes 128x128", "n_eval": a.n_eval, "miou_test": table,
        "worst_drop_per_exit_pp": {p: per_exit_drop(table, p) for p in ("torch",) + PRECISIONS[1:]},
        "latency": latency(paths, a.rounds, a.seconds), "rounds": a.rounds, "threads": physical_cores(),
        "search": searches(paths, a.max_drop), "max_drop_pp": a.max_drop,
        "calibration": json.load(open(os.path.join(paths["onnx"]["int8"], "manifest.json")))["calibration"],
        "seconds": time.time() - t0}
    save("precision" if a.model == "cpu-mbv2-e8" else "precision-" + a.model, payload, markdown(payload))


if __name__ == "__main__":
    main()
