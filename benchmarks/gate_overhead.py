"""What the fused confidence gate (eqs. 7-9 inside every head graph) adds to a head's latency.

Each exported head graph is timed against the same graph cut to its logits (``onnx.utils.extract_model``: the
gate's nodes removed, nothing else changed), interleaved call by call (ABBA) on onnxruntime on the CPU, in this
process, which never imports torch. Reported per export: every head's latency without the gate, the gate's
added time, the added fraction (median of paired ratios - 1), and the gate's share of the final-only frame
(from the export's engines/lut.json when given). Target (issue #6): the gate adds <= 10% to a head.

    python benchmarks/gate_overhead.py            # the exports benchmarks/early_exit.py left in runs/early_exit/
    python benchmarks/gate_overhead.py --onnx DIR  # any export folder
"""

import argparse
import json
import os
import sys
import tempfile

sys.modules["torch"] = None  # onnxruntime must not share the process with torch's thread pool
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, save  # noqa: E402

TARGET = 0.10


def measure_export(onnx_dir, pairs, threads, tmp):
    import numpy as np
    import onnx.utils

    from mess_edge.runtime.ort_runner import OrtRunner
    from mess_edge.profile.timing import time_paired

    with open(os.path.join(onnx_dir, "manifest.json")) as f:
        manifest = json.load(f)
    rng = np.random.default_rng(0)
    rows = []
    for g in (g for g in manifest["graphs"] if g["role"] == "head"):
        path = os.path.join(onnx_dir, g["file"])
        feat = next(i for i in g["inputs"] if i["name"] != "th_pix")
        cut = os.path.join(tmp, "nogate_" + g["file"])
        onnx.utils.extract_model(path, cut, [feat["name"]], ["logits"])
        x = rng.standard_normal(feat["shape"]).astype(np.float32)
        with OrtRunner(cut, threads=threads) as plain, OrtRunner(path, threads=threads) as gated:
            fa = {feat["name"]: x}
            fb = {feat["name"]: x, "th_pix": np.array([0.5], np.float32)}
            st = time_paired(lambda: plain.infer(fa, check_inputs=False),
                             lambda: gated.infer(fb, check_inputs=False), pairs=pairs)
        rows.append({"graph": g["name"], "exit": g["exit"], "arch": g["arch"], "gmacs": g["gmacs"],
                     "head_ms": st.a.median_ms, "with_gate_ms": st.b.median_ms,
                     "gate_us": (st.b.median_ms - st.a.median_ms) * 1e3, "overhead": st.ratio_median - 1,
                     "overhead_p10": st.ratio_p10 - 1, "overhead_p90": st.ratio_p90 - 1, "pairs": st.n_pairs})
    frame_ms = None
    lut_path = os.path.join(os.path.dirname(onnx_dir.rstrip("/")), "engines", "lut.json")
    if os.path.isfile(lut_path):
        with open(lut_path) as f:
            lut = json.load(f)
        frame_ms = sum(s["median_ms"] for s in lut["segments"]) + lut["final"]["median_ms"]
    return {"onnx": onnx_dir, "preset": manifest["preset"], "heads": rows, "final_only_frame_ms": frame_ms}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", action="append", help="an export folder (manifest.json); repeatable [early_exit's]")
    p.add_argument("--pairs", type=int, default=400, help="interleaved pairs per head")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    a = p.parse_args()
    if not a.onnx:
        a.onnx = [d for d in (os.path.join(ROOT, "runs", "early_exit", k, "onnx") for k in ("cpu-mbv2", "cpu-drn"))
                  if os.path.isfile(os.path.join(d, "manifest.json"))]
        if not a.onnx:
            sys.exit("no export under runs/early_exit/; run benchmarks/early_exit.py first or pass --onnx DIR")
    from mess_edge.runtime.ort_runner import configure_ort_threads

    configure_ort_threads(a.threads)
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        exports = [measure_export(d, a.pairs, a.threads, tmp) for d in a.onnx]
    md = ["# Fused confidence gate: added latency per head (onnxruntime CPU, {} threads)".format(a.threads), "",
          "Each head graph vs the same graph cut to its logits, {} interleaved pairs each; overhead = median of "
          "paired ratios - 1. Target: <= {:.0f}%.".format(a.pairs, TARGET * 100), ""]
    summary = []
    for e in exports:
        over = np.array([r["overhead"] for r in e["heads"]])
        us = np.array([r["gate_us"] for r in e["heads"]])
        s = {"preset": e["preset"], "heads": len(e["heads"]), "median_overhead": float(np.median(over)),
             "max_overhead": float(over.max()), "median_gate_us": float(np.median(us)),
             "heads_within_target": int((over <= TARGET).sum()),
             "gate_share_of_frame": (float(np.median(us)) / 1e3 / e["final_only_frame_ms"]
                                     if e["final_only_frame_ms"] else None)}
        summary.append(s)
        md += ["## {} ({} heads): median overhead **{:+.1f}%**, max {:+.1f}%, {}/{} heads within {:.0f}%; gate "
               "{:.1f} µs{}".format(e["preset"], s["heads"], 100 * s["median_overhead"], 100 * s["max_overhead"],
                                    s["heads_within_target"], s["heads"], TARGET * 100, s["median_gate_us"],
                                    "" if s["gate_share_of_frame"] is None else
                                    " = {:.2f}% of the {:.2f} ms final-only frame".format(
                                        100 * s["gate_share_of_frame"], e["final_only_frame_ms"])), "",
               "| head | GMACs | head ms | with gate ms | gate µs | overhead (p10..p90) |",
               "|---|---:|---:|---:|---:|---|"]
        md += ["| {} | {:.4f} | {:.3f} | {:.3f} | {:.1f} | {:+.1f}% ({:+.1f}..{:+.1f}) |".format(
            r["graph"], r["gmacs"], r["head_ms"], r["with_gate_ms"], r["gate_us"], 100 * r["overhead"],
            100 * r["overhead_p10"], 100 * r["overhead_p90"]) for r in e["heads"]] + [""]
    md += ["1-min load average at the end: {:.2f}.".format(os.getloadavg()[0])]
    head = "; ".join("{}: median {:+.1%} per head, {}/{} heads within {:.0%} ({})".format(
        s["preset"], s["median_overhead"], s["heads_within_target"], s["heads"], TARGET,
        "met" if s["median_overhead"] <= TARGET else "not met") for s in summary)
    save("gate_overhead", {"args": vars(a), "exports": exports, "summary": summary, "headline": head},
         "\n".join(md))


if __name__ == "__main__":
    main()
