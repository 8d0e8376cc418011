"""What an early exit's path costs, against the input size (issue 13 item 3: the CPU presets at 128x128 make an
exit look more expensive than on the network users deploy).

One trained benchmark model (default cpu-effl0-e8; its weights are fully convolutional) is exported at each
input size, built for ONNX Runtime and profiled on this machine; from each latency table, per exit point, the
path of an image that leaves there (backbone up to the exit + its cheapest head + the label-map upsample) over
the final-only path (priced as the chain runs: the fused stretch when the table has one), beside the same
ratio in MACs. No accuracy is measured: the weights were trained at 128x128.

    python benchmarks/exit_cost_by_size.py [--model cpu-effl0-e8] [--sizes 128 256 512]

Artifacts under runs/exit_cost_by_size/<model>-<size>/ are reused.
Results: benchmarks/results/exit_cost_by_size-<model>.{json,md}.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, chain_prices, cli, save  # noqa: E402


def sized_checkpoint(src, dst, size):
    """``src`` with its model rebuilt at ``size`` x ``size`` (same tensors, so its tensors hash still holds)."""
    import torch

    from mess_edge.artifacts import atomic_path

    ck = torch.load(src, map_location="cpu", weights_only=True)
    ck["model_args"] = dict(ck["model_args"], input_hw=[size, size])
    with atomic_path(dst) as tmp:
        torch.save(ck, tmp)


def path_ratios(lut):
    """{exit index: (cheapest head's name, leave-path ms / final-path ms)} and the final path's ms."""
    ms, backbone, final = chain_prices(lut)
    best = {}
    for h in lut["heads"]:
        k = int(h["name"].split("_")[1][1:])  # head_e{k}_{arch}
        cost = backbone(k) + ms(h) + ms(lut["upsample"])
        if k not in best or cost < best[k][1] * final:
            best[k] = (h["name"], cost / final)
    return best, final


def mac_ratios(manifest):
    """{exit index: (cheapest head's name, MACs of its leave path / MACs of the final path)} from the manifest's
    per-graph GMACs (the upsample counted as free)."""
    g = {x["name"]: x for x in manifest["graphs"]}
    seg = [g["segment_{}".format(k)]["gmacs"] for k in range(sum(1 for n in g if n.startswith("segment_")))]
    final = sum(seg) + g["final"]["gmacs"]
    best = {}
    for name, x in g.items():
        if x.get("role") != "head":
            continue
        k = int(name.split("_")[1][1:])
        cost = sum(seg[:k + 1]) + x["gmacs"]
        if k not in best or cost < best[k][1] * final:
            best[k] = (name, cost / final)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cpu-effl0-e8", help="a model under benchmarks/models/")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--profile-seconds", type=float, default=0.5)
    a = ap.parse_args()
    src = os.path.join(ROOT, "benchmarks", "models", a.model, "stage2.pt")
    if not os.path.isfile(src):
        sys.exit("no benchmark model {}: run python benchmarks/make_models.py {}".format(src, a.model))
    rows = []
    for size in a.sizes:
        work = os.path.join(ROOT, "runs", "exit_cost_by_size", "{}-{}".format(a.model, size))
        os.makedirs(work, exist_ok=True)
        ckpt, onnx, engines = (os.path.join(work, n) for n in ("stage2.pt", "onnx", "engines"))
        if not os.path.isfile(ckpt):
            sized_checkpoint(src, ckpt, size)
        if not os.path.isfile(os.path.join(onnx, "manifest.json")):
            cli("export", ckpt, "--out", onnx)
        if not os.path.isfile(os.path.join(engines, "engine.json")):
            cli("build", onnx, "--backend", "ort", "--out", engines)
        lut_path = os.path.join(engines, "lut.json")
        if not os.path.isfile(lut_path):
            cli("profile", engines, "--min-seconds", a.profile_seconds, "--threads", 2)
        with open(lut_path) as f:
            lut = json.load(f)
        with open(os.path.join(onnx, "manifest.json")) as f:
            manifest = json.load(f)
        ms_ratio, final_ms = path_ratios(lut)
        macs = mac_ratios(manifest)
        rows.append({"size": size, "final_ms": final_ms,
                     "exits": {str(k): {"head_ms": v[0], "ms_ratio": v[1], "head_macs": macs[k][0],
                                        "mac_ratio": macs[k][1]} for k, v in sorted(ms_ratio.items())}})
        print("{}: final path {:.2f} ms; {}".format(size, final_ms, ", ".join(
            "e{} {:.2f} (MACs {:.2f})".format(k, v[1], macs[k][1]) for k, v in sorted(ms_ratio.items()))),
            flush=True)
    n = len(rows[0]["exits"])
    md = ["# An early exit's path against the input size ({}, ONNX Runtime CPU, 2 threads)".format(a.model), "",
          "Per exit point: the path of an image leaving there (backbone to the exit + its cheapest head + the "
          "label-map upsample) over the final-only path, from each size's measured latency table, and the same "
          "ratio in MACs. Weights trained at 128x128, exported at each size (no accuracy here).", "",
          "| input | final path ms | " + " | ".join("e{} path / final (ms) | e{} (MACs)".format(k, k)
                                                    for k in range(n)) + " |",
          "|---|---:|" + "---:|---:|" * n]
    for r in rows:
        md.append("| {0}x{0} | {1:.2f} | ".format(r["size"], r["final_ms"]) + " | ".join(
            "{:.2f} | {:.2f}".format(r["exits"][str(k)]["ms_ratio"], r["exits"][str(k)]["mac_ratio"])
            for k in range(n)) + " |")
    save("exit_cost_by_size-" + a.model, {"model": a.model, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
