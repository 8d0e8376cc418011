"""Does the latency table predict what the chain really takes? (Table 1 from lut.json vs measured end to end)

For >= 20 random multi-exit instances over a real export (final-only; budgeted "run to exit k"; anytime "run
every selected exit, then the final"; input-dependent with random exits, heads and thresholds) the latency
predicted from lut.json with Table 1's formulas (mess_edge.search: simulate() on the calibration memo, so the
p_n of the input-dependent formula are the real fractions of images continuing) is compared with the latency
measured end to end through the early-exit chain (mess_edge.run.chain.Chain, features kept in OrtValues)
on the very calibration images the memo holds. The table prices each stretch of segments the chain fuses by
the fused graph's own time (lut.json "stretches"); the report also gives the error of summing their pieces.
Measured = mean over images of the median over repetitions of one image's chain.run(); repetitions are
interleaved (each repetition visits the instances in a fresh random order, each visit starting with one untimed
run, as a deployed loop runs one instance frame after frame) so drift hits every instance alike.
Error = |pred - meas| / meas. Targets: median <= 5 %, p90 <= 10 %.

Artifacts: --engines DIR --memo FILE [--onnx DIR] [--lut FILE] [--data DIR], or nothing: a small export of each
--preset (default cpu-drn, whose segments take several ms each) is built in runs/bench-lut_fidelity/ (another
preset in runs/bench-lut_fidelity-PRESET/; mess-edge data/train/export/build/profile/calibrate, each in its own
process; reused when already built with the same commands). Untrained weights are fine: latency does not depend
on them. This process runs no torch: torch's thread pool slows ONNX Runtime. Saves
benchmarks/results/lut_fidelity.{json,md}, one section per preset.

    python benchmarks/lut_fidelity.py [--quick] [--preset cpu-drn --preset cpu-mbv2] [--instances 22] [--reps 15]
                                      [--threads N] [--engines DIR --memo FILE]
"""

import argparse
import collections
import contextlib
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, cli  # noqa: E402
from mess_edge.artifacts import read_json, write_json_atomic  # noqa: E402
from mess_edge.errors import MessError  # noqa: E402

Artifacts = collections.namedtuple("Artifacts", ["onnx_dir", "engines_dir", "memo_path", "lut_path", "data_dir"])
INSTANCE_FORMAT = "mess-edge-instance/1"
DEFAULT_PRESET = "cpu-drn"  # compute-bound segments (several ms each at 128x128): timing noise matters less
PRESETS = ("cpu-drn", "cpu-mbv2")


# -- artifacts --------------------------------------------------------------------------------------------

def build_artifacts(work, preset=DEFAULT_PRESET, profile_s=1.0, threads=None, redo=(), log=print):
    """A small export of ``preset`` in ``work`` (absolute paths), each stage a `mess-edge` subprocess.

    A stage is skipped when its output exists and work/build.json records the same command for it (and a
    latency table has the fused "stretches" the search now prices; older ones are profiled again); running a
    stage drops the records of every later stage, so they run again too. Stages named in ``redo`` run again.
    Batch size 8 (not the default 16) only
    to save time: the weights need not be trained for latency. ``threads``: the profile's ORT pool size.
    Returns Artifacts.
    """
    work = os.path.abspath(work)
    j = lambda *p: os.path.join(work, *p)  # noqa: E731
    stages = [
        ("data", j("data", "digitscenes.json"), ["data", "digitscenes", "--out", j("data"), "--n-train", 64,
                                                 "--n-cal", 32, "--n-test", 32]),
        ("stage1", j("s1.pt"), ["train", "--preset", preset, "--data", j("data"), "--stage", 1, "--epochs", 1,
                                "--max-steps", 4, "--batch-size", 8, "--val-images", 0, "--out", j("s1.pt")]),
        ("stage2", j("s2.pt"), ["train", "--data", j("data"), "--stage", 2, "--init", j("s1.pt"), "--space",
                                "small", "--max-steps", 2, "--batch-size", 8, "--val-images", 0, "--out", j("s2.pt")]),
        ("export", j("onnx", "manifest.json"), ["export", j("s2.pt"), "--out", j("onnx")]),
        ("calibrate", j("memo.npz"), ["calibrate", j("s2.pt"), "--data", j("data"), "--out", j("memo.npz")]),
        ("build", j("engines", "engine.json"), ["build", j("onnx"), "--backend", "ort", "--out", j("engines")]),
        ("profile", j("engines", "lut.json"), ["profile", j("engines"), "--min-seconds", profile_s,
                                               "--warmup-s", min(0.5, profile_s)] +
         (["--threads", threads] if threads else [])),
    ]
    os.makedirs(work, exist_ok=True)
    record_path = j("build.json")
    record = read_json(record_path, "build record") if os.path.isfile(record_path) else {}
    for name in redo:
        record.pop(name, None)
    for i, (name, output, args) in enumerate(stages):
        args = [str(a) for a in args]
        if record.get(name) == args and os.path.exists(output) and not (
                name == "profile" and "stretches" not in read_json(output, "lut")):
            continue
        for later, _, _ in stages[i:]:  # whatever follows is built again from this stage's new output
            record.pop(later, None)
        write_json_atomic(record_path, record)
        t0 = time.perf_counter()
        cli(*args)
        record[name] = args
        write_json_atomic(record_path, record)
        log("built {:<9} in {:5.1f} s: mess-edge {}".format(name, time.perf_counter() - t0, " ".join(args)))
    return Artifacts(j("onnx"), j("engines"), j("memo.npz"), j("engines", "lut.json"), j("data"))


def resolve_artifacts(args, name, profile_s, preset=DEFAULT_PRESET, log=print):
    """Artifacts from --engines/--memo (and --onnx, --lut, --data), or an export of ``preset`` built in --work
    (default runs/bench-NAME; another preset than the default in WORK-PRESET)."""
    given = [flag for flag, v in (("--engines", args.engines), ("--memo", args.memo)) if v]
    if not given:
        if args.onnx or args.lut:
            raise MessError("got --onnx/--lut without --engines and --memo; expected all of an artifact set or "
                            "none; try adding --engines DIR --memo FILE, or drop them all to build one")
        work = args.work or os.path.join(ROOT, "runs", "bench-" + name)
        if preset != DEFAULT_PRESET:
            work = work.rstrip(os.sep) + "-" + preset
        return build_artifacts(work, preset, profile_s=profile_s, threads=args.threads,
                               redo=("profile",) if args.reprofile else (), log=log)
    if len(given) != 2:
        raise MessError("got only {}; expected --engines DIR and --memo FILE together (or neither, to build a small "
                        "export); try adding the other".format(given[0]))
    lut = args.lut or os.path.join(args.engines, "lut.json")
    if not os.path.isfile(lut):
        raise MessError("got no latency table {}; expected lut.json from mess-edge profile; try mess-edge profile "
                        "{}".format(lut, args.engines))
    return Artifacts(args.onnx or args.engines, args.engines, args.memo, lut, args.data)


def add_artifact_options(ap):
    ap.add_argument("--onnx", help="export folder (default: the manifest copy in --engines)")
    ap.add_argument("--engines", help="ORT engine folder from mess-edge build (with lut.json)")
    ap.add_argument("--memo", help="calibration memo.npz of the same checkpoint")
    ap.add_argument("--lut", help="latency table (default: ENGINES/lut.json)")
    ap.add_argument("--data", help="dataset folder of the memo's images (default: the one the memo records)")
    ap.add_argument("--work", help="where to build when no artifacts are given (default: runs/bench-NAME)")
    ap.add_argument("--reprofile", action="store_true",
                    help="a built export: profile its engines again now, so that the table and the measurement "
                         "share the machine's load (on a shared machine it drifts)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime pool threads (default: those the lut was profiled with; a fresh build "
                         "profiles with this too, default physical cores)")


def load_images(memo, manifest, n, data_dir=None):
    """The first ``n`` memo images, preprocessed as `mess-edge run` does: float32 [1, 3, H, W] each."""
    import cv2

    from mess_edge.data.voc import VocDataset
    from mess_edge.run.preprocess import Preprocessor

    ids, data = memo.meta.get("image_ids"), data_dir or memo.meta.get("data")
    if not ids or not data:
        raise MessError("got a memo without image ids or data folder in its meta; expected one from the current "
                        "mess-edge calibrate; try re-running calibrate, or pass --data DIR")
    voc = VocDataset(data, memo.meta.get("split", "cal"))
    if voc.ids[:len(ids)] != list(ids):
        raise MessError("got split {} of {} whose ids differ from the memo's; expected the calibrated images; try "
                        "--data with the folder the memo was calibrated on".format(voc.split, data))
    prep = Preprocessor(manifest["input_hw"], manifest["normalization"])
    return [prep(cv2.imread(voc.image_path(i), cv2.IMREAD_COLOR)).copy() for i in range(min(n, len(ids)))]


def memo_subset(memo, images):
    """The memo restricted to image indices ``images`` (every head kept)."""
    from mess_edge.search import Memo

    images = np.asarray(images)
    meta = dict(memo.meta, n_images=len(images))
    if memo.meta.get("image_ids"):
        meta["image_ids"] = [memo.meta["image_ids"][i] for i in images]
    return Memo(confusion=memo.confusion[:, images], hist_edge=memo.hist_edge[:, images],
                hist_raw=memo.hist_raw[:, images], hist_bins=memo.hist_bins, mean_conf=memo.mean_conf[:, images],
                n_pixels=memo.n_pixels[:, images], head_exit=memo.head_exit, head_arch=memo.head_arch, meta=meta)


# -- instances ----------------------------------------------------------------------------------------------

def make_instance(memo, heads, setting, th_img=None, th_pix=None, final=True, provenance=None):
    """An instance.json dict for memo head indices ``heads`` (backbone order)."""
    from mess_edge.search.memo import arch_dict, head_graph_name

    exits = [{"exit": int(memo.head_exit[h]), "arch": arch_dict(memo.head_arch[h]),
              "graph": head_graph_name(memo.head_exit[h], memo.head_arch[h]),
              "th_img": None if th_img is None else float(th_img[j])} for j, h in enumerate(heads)]
    inst = {"format": INSTANCE_FORMAT, "setting": setting, "exits": exits, "final": bool(final),
            "th_pix": th_pix, "policy": "edge", "edge_enhancement": True}
    inst.update(provenance or {})
    return inst


def _thresholds(memo, heads, rng):
    """(th_img per head, th_pix): th_pix a memo bin edge where most chosen heads' image confidences differ
    between images, each th_img between two of them (no image sits on a threshold), so exits share images."""
    n_bins = len(memo.hist_bins) - 1
    confs = [memo.image_confidence("edge", j) for j in range(n_bins)]
    spread = np.array([sum(len(np.unique(c[h])) > 1 for h in heads) for c in confs])
    j = int(rng.choice(np.flatnonzero(spread == spread.max())))
    th_img = []
    for h in heads:
        vals = np.unique(confs[j][h])
        if len(vals) > 1:
            k = int(rng.uniform(0.2, 0.8) * (len(vals) - 1))
            th_img.append(float(vals[k] + vals[k + 1]) / 2)
        else:  # every image alike: all of them leave here (th below) or none (th above)
            c = float(vals[0])
            th_img.append(c / 2 if c > 0 and (c >= 1 or rng.random() < 0.5) else (c + 1) / 2)
    return th_img, round(float(memo.hist_bins[j]), 9)


def random_instances(memo, n, rng, provenance=None):
    """[(label, instance)]: 1 final-only, then budgeted, anytime and input-dependent ones (~1:1:2)."""
    points = sorted(set(memo.head_exit.tolist()))
    heads_at = {p: np.flatnonzero(memo.head_exit == p) for p in points}

    def pick(k):
        chosen = sorted(rng.choice(points, size=k, replace=False))
        return [int(rng.choice(heads_at[p])) for p in chosen]

    out = [("final-only", make_instance(memo, [], "final-only", provenance=provenance))]
    n_budgeted = max(1, (n - 1) // 4)
    n_anytime = max(1, (n - 1) // 4)
    for _ in range(n_budgeted):
        h = pick(1)
        out.append(("budgeted to " + memo.head_label(h[0]), make_instance(memo, h, "budgeted", final=False,
                                                                            provenance=provenance)))
    for _ in range(n_anytime):
        hs = pick(int(rng.integers(1, min(3, len(points)) + 1)))
        out.append(("anytime " + " > ".join(memo.head_label(h) for h in hs) + " > final",
                    make_instance(memo, hs, "anytime", provenance=provenance)))
    while len(out) < n:
        hs = pick(int(rng.integers(1, min(3, len(points)) + 1)))
        th_img, th_pix = _thresholds(memo, hs, rng)
        label = " > ".join("{}@{:.3f}".format(memo.head_label(h), t) for h, t in zip(hs, th_img))
        out.append(("input-dep. {} > final (th_pix {:.2f})".format(label, th_pix),
                    make_instance(memo, hs, "input-dependent", th_img, th_pix, provenance=provenance)))
    return out


# -- prediction and measurement -------------------------------------------------------------------------------

def predict(memo, costs, instance, taken_graphs=None):
    """Table 1 latency (ms) of ``instance`` on ``memo``'s images from the cost table ``costs``.

    taken_graphs None: the exits come from the memo (simulate: p_n = memo fractions). Else a list [I] of the
    graph each image left at ("final" or a head graph), e.g. the chain's, whose fractions are used instead.
    """
    from mess_edge.search import simulate
    from mess_edge.search.instance import config_cost, config_from_instance

    if taken_graphs is None:
        return float(simulate(memo, instance, costs)["expected_cost"])
    config, _ = config_from_instance(memo, instance)
    to_head = dict(zip([e["graph"] for e in instance["exits"]], config.heads))
    taken = np.array([memo.n_heads if g == "final" else to_head[g] for g in taken_graphs])
    hs = list(config.heads)
    pieces = (costs.span, {h: costs.head[h] for h in hs},
              dict([(h, costs.upsample[h]) for h in hs] + [(memo.n_heads, costs.upsample[-1])]))
    return float(config_cost(memo, instance["setting"], config, taken, *pieces))


def memo_exits(memo, instance):
    """[I] graph each memo image leaves at under ``instance`` ("final" or a head graph)."""
    from mess_edge.search.instance import config_from_instance
    from mess_edge.search.space import assign_images

    config, policy = config_from_instance(memo, instance)
    names = dict(zip(config.heads, [e["graph"] for e in instance["exits"]]))
    return [names.get(int(h), "final") for h in assign_images(memo, config, policy)]


def stage_keys(chain):
    """{graph name in the chain's times_ms: what it ran}: the graph's own name, or (first, last) for a graph that
    ran a fused stretch of backbone graphs (lut.json "stretches"); None for a segment folded into one."""
    from mess_edge.runtime.fuse import backbone_stretches

    plan, skip = chain.plan, getattr(chain.backend, "skip", set())  # TensorRT chains fuse nothing
    path = plan.segments + ["final"]
    keys = {name: None for name in skip}
    for first, last in backbone_stretches(len(plan.segments), [x.exit for x in plan.exits]):
        if first < last and path[first] in skip:
            keys[path[last]] = (first, last)
    return keys


def measure(engines, instances, images, reps, fixed_images=8, seed=0, log=print):
    """Time each instance end to end through the chain: ([{measured_ms, taken, chain_overhead_ms, ...}],
    {graph name or (first, last) stretch: [ms of every timed run of it inside a chain]}).

    An input-dependent instance runs over every image in ``images``; a fixed-path one (final-only, budgeted,
    anytime) over the first ``fixed_images`` (its path does not depend on the image). Each repetition visits
    the instances in a fresh random order, each visit starting with one untimed run; measured_ms = mean over
    images of the median over repetitions.
    chain_overhead_ms: the same statistic of (end-to-end time - sum of the chain's per-stage times).
    """
    from mess_edge.run.chain import Chain

    rng = np.random.default_rng(seed)
    chains = [Chain(engines, inst) for inst in instances]
    keys = [stage_keys(c) for c in chains]
    sets = [images if inst["setting"] == "input-dependent" else images[:fixed_images] for inst in instances]
    total = [np.zeros((reps, len(s))) for s in sets]
    stages = [np.zeros((reps, len(s))) for s in sets]
    taken = [[None] * len(s) for s in sets]
    in_chain = collections.defaultdict(list)
    clock = time.perf_counter
    with contextlib.ExitStack() as stack:
        t0 = clock()
        for c, s in zip(chains, sets):
            stack.enter_context(c)
            c.warm_up(s[0])
            for image in s:  # every path of the instance once: first-run allocations of each shape
                c.run(image)
        log("{} chains activated and warmed up in {:.1f} s; timing {} repetitions".format(
            len(chains), clock() - t0, reps))
        gc.disable()  # a collection inside one timed run would be charged to whichever instance it hit
        try:
            for r in range(reps):
                for k in rng.permutation(len(chains)):
                    # Untimed: a deployed loop runs one instance frame after frame, so the caches the previous
                    # instance cooled are not this instance's cost.
                    chains[k].run(sets[k][-1])
                    for i, image in enumerate(sets[k]):
                        start = clock()
                        res = chains[k].run(image)
                        total[k][r, i] = (clock() - start) * 1e3
                        stages[k][r, i] = sum(v for name, v in res.times_ms.items() if name != "total")
                        for name, v in res.times_ms.items():
                            key = keys[k].get(name, name)
                            if key is not None and name != "total":
                                in_chain[key].append(v)
                        if taken[k][i] is None:
                            taken[k][i] = res.graph
                        elif taken[k][i] != res.graph:
                            raise MessError("got exit {} then {} for one image; expected a deterministic chain"
                                            .format(taken[k][i], res.graph))
        finally:
            gc.enable()
    rows = [{"measured_ms": float(np.mean(np.median(t, axis=0))),
             "chain_overhead_ms": float(np.mean(np.median(t - s, axis=0))),
             "rep_spread_pct": float(np.mean((np.percentile(t, 90, axis=0) - np.percentile(t, 10, axis=0))
                                             / np.median(t, axis=0)) * 100),
             "taken": tk, "n_images": len(tk)} for t, s, tk in zip(total, stages, taken)]
    return rows, in_chain


def stage_inflation(lut, in_chain):
    """[{graph, role, lut_ms, in_chain_ms, n_in_chain, ratio}]: each graph's and fused stretch's LUT median vs
    its median inside the measured chains; heads folded into one row (medians over heads) to keep it short."""
    rows, heads = [], []
    entries = [("segment", e) for e in lut["segments"]] + [("head", e) for e in lut["heads"]]
    entries += [("final", lut["final"])] + [("upsample", e) for e in lut.get("upsamples") or []]
    entries += [("stretch", dict(e, name="+".join(e["graphs"]), key=(e["from"], e["to"])))
                for e in lut.get("stretches") or []]
    for role, e in entries:
        key = e.get("key", e["name"]) if e is not None else None
        if key is None or not in_chain.get(key):
            continue
        row = {"graph": e["name"], "role": role, "lut_ms": e["median_ms"],
               "in_chain_ms": float(np.median(in_chain[key])), "n_in_chain": len(in_chain[key])}
        row["ratio"] = row["in_chain_ms"] / row["lut_ms"]
        (heads if role == "head" else rows).append(row)
    if heads:
        rows.append({"graph": "{} heads (medians)".format(len(heads)), "role": "head",
                     "lut_ms": float(np.median([h["lut_ms"] for h in heads])),
                     "in_chain_ms": float(np.median([h["in_chain_ms"] for h in heads])),
                     "n_in_chain": int(sum(h["n_in_chain"] for h in heads)),
                     "ratio": float(np.median([h["ratio"] for h in heads]))})
    return rows


def error_summary(errors):
    """{"median", "p90", "max"} of relative errors (fractions), numpy's linear percentiles."""
    e = np.asarray(errors, float)
    return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "max": float(e.max())}


def lut_threads(lut_path):
    """Intra-op threads the table was profiled with (None if it does not say): the chain must use the same."""
    pool = ((read_json(lut_path, "lut").get("conditions") or {}).get("threads") or {}).get("process_pool") or {}
    return pool.get("intra_threads")


def setup_threads(art, threads):
    """configure_ort_threads(threads, default: the table's) before any session of this process."""
    from mess_edge.runtime.ort_runner import configure_ort_threads

    return configure_ort_threads(threads or lut_threads(art.lut_path))


def ort_threads_now():
    from mess_edge.runtime.ort_runner import ort_threading

    pool = ort_threading()
    return None if pool is None else pool._asdict()


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# -- the benchmark ------------------------------------------------------------------------------------------------

def evaluate(art, n_instances, reps, max_images, fixed_images=8, seed=0, log=print):
    """Predicted vs measured latency of ``n_instances`` random instances; the result dict saved as JSON.

    Predicted as the search prices it (fused stretches at their own lut.json times where the table has them),
    and, for comparison, by summing the pieces of every stretch (the table without "stretches").
    """
    import dataclasses

    from mess_edge.build.engine_set import load_engines
    from mess_edge.search import load_search_inputs

    manifest_path = os.path.join(art.onnx_dir, "manifest.json")
    inputs = load_search_inputs(art.memo_path, manifest_path, art.lut_path)
    engines = load_engines(art.engines_dir)
    memo = inputs.memo
    if memo.n_images > max_images:
        memo = memo_subset(memo, np.arange(max_images))
    images = load_images(memo, inputs.manifest, memo.n_images, art.data_dir)
    fixed_memo = memo_subset(memo, np.arange(min(fixed_images, memo.n_images)))
    provenance = {"checkpoint_sha256": inputs.checkpoint_sha256, "manifest_sha256": inputs.manifest_sha256}
    labelled = random_instances(memo, n_instances, np.random.default_rng(seed), provenance)
    instances = [inst for _, inst in labelled]
    load = [load_average()]
    measured, in_chain = measure(engines, instances, images, reps, fixed_images, seed, log)
    lut = read_json(art.lut_path, "lut")
    load.append(load_average())
    summed = dataclasses.replace(inputs.costs, stretches=())
    rows = []
    for (label, inst), m in zip(labelled, measured):
        on = memo if inst["setting"] == "input-dependent" else fixed_memo
        pred, pred_chain = predict(on, inputs.costs, inst), predict(on, inputs.costs, inst, m["taken"])
        pred_sum = predict(on, summed, inst)
        agree = float(np.mean([a == b for a, b in zip(memo_exits(on, inst), m["taken"])]))
        counts = collections.Counter(m["taken"])
        rows.append({"setting": inst["setting"], "instance": label, "predicted_ms": pred,
                     "measured_ms": m["measured_ms"], "error": abs(pred - m["measured_ms"]) / m["measured_ms"],
                     "predicted_chain_exits_ms": pred_chain,
                     "error_chain_exits": abs(pred_chain - m["measured_ms"]) / m["measured_ms"],
                     "predicted_sum_ms": pred_sum, "error_sum": abs(pred_sum - m["measured_ms"]) / m["measured_ms"],
                     "signed_error": (pred - m["measured_ms"]) / m["measured_ms"],
                     "exit_agreement": agree, "chain_exits": dict(counts), "n_images": m["n_images"],
                     "chain_overhead_ms": m["chain_overhead_ms"], "rep_spread_pct": m["rep_spread_pct"],
                     "instance_json": inst})
    summary = error_summary([r["error"] for r in rows])
    by_setting = {s: error_summary([r["error"] for r in rows if r["setting"] == s])
                  for s in sorted({r["setting"] for r in rows})}
    met = summary["median"] <= 0.05 and summary["p90"] <= 0.10
    preset = inputs.manifest.get("preset")
    headline = "{}: median error {:.1%} (target <= 5%), p90 {:.1%} (target <= 10%): {} over {} instances".format(
        preset, summary["median"], summary["p90"], "met" if met else "NOT met", len(rows))
    return {"preset": preset, "rows": rows, "errors": summary, "errors_by_setting": by_setting,
            "errors_chain_exits": error_summary([r["error_chain_exits"] for r in rows]),
            "errors_segment_sums": error_summary([r["error_sum"] for r in rows]),
            "median_signed_error": float(np.median([r["signed_error"] for r in rows])),
            "lut_stretches": len(lut.get("stretches") or []),
            "targets": {"median_error": 0.05, "p90_error": 0.10, "met": met}, "headline": headline,
            "reps": reps, "images": memo.n_images, "fixed_path_images": fixed_memo.n_images,
            "stage_inflation": stage_inflation(lut, in_chain), "threads": ort_threads_now(),
            "lut_threads": lut_threads(art.lut_path),
            "artifacts": dict(art._asdict()), "lut_conditions": lut.get("conditions"),
            "load_average_start_end": load, "torch_imported": "torch" in sys.modules}


def markdown_run(res):
    """The section of one preset's result."""
    lines = ["## {} ({} fused stretches in lut.json)".format(res["preset"], res["lut_stretches"]), "",
             "{} instances; input-dependent ones over {} calibration images, fixed paths over {}; measured = mean over "
             "images of the median of {} interleaved repetitions; 1-min load average {} at the start, {} at the end."
             .format(len(res["rows"]), res["images"], res["fixed_path_images"], res["reps"],
                     *res["load_average_start_end"]), "",
             "| # | setting | instance | exits memo = chain | predicted ms | measured ms | error | pred. summing "
             "pieces | error | chain overhead ms |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in enumerate(res["rows"]):
        lines.append("| {} | {} | {} | {:.0%} | {:.3f} | {:.3f} | {:+.1%} | {:.3f} | {:.1%} | {:.3f} |".format(
            k + 1, r["setting"], r["instance"], r["exit_agreement"], r["predicted_ms"], r["measured_ms"],
            r["signed_error"], r["predicted_sum_ms"], r["error_sum"], r["chain_overhead_ms"]))
    lines += ["", "Where the time goes: each graph's and fused stretch's LUT median vs its median inside the measured "
              "chains (ONNX Runtime intra-op threads: {} here, {} when the LUT was profiled).".format(
                  (res["threads"] or {}).get("intra_threads"), res["lut_threads"]), "",
              "| graph | LUT ms | in chain ms | runs | ratio |", "|---|---:|---:|---:|---:|"]
    lines += ["| {} | {:.3f} | {:.3f} | {} | {:.2f} |".format(r["graph"], r["lut_ms"], r["in_chain_ms"],
                                                             r["n_in_chain"], r["ratio"])
              for r in res["stage_inflation"]]
    e, c, u = res["errors"], res["errors_chain_exits"], res["errors_segment_sums"]
    lines += ["", "Error |pred - meas| / meas by setting: " + "; ".join(
        "{} median {:.1%} (max {:.1%})".format(s, v["median"], v["max"]) for s, v in res["errors_by_setting"].items()),
        "Median signed error (pred - meas) / meas: {:+.1%}.".format(res["median_signed_error"]),
        "Summing the pieces of every stretch instead (the table without \"stretches\"): median {:.1%}, p90 {:.1%}."
        .format(u["median"], u["p90"]),
        "With the exits the chain took instead of the memo's: median {:.1%}, p90 {:.1%}.".format(c["median"], c["p90"]),
        "", "Targets: " + res["headline"] + "; max {:.1%}.".format(e["max"])]
    return "\n".join(lines)


def markdown(runs):
    return "\n\n".join(["# LUT fidelity: Table 1 from lut.json vs the chain measured end to end"] +
                        [markdown_run(r) for r in runs])


def without_option(argv, option):
    """``argv`` without ``option VALUE`` and ``option=VALUE``, wherever they occur."""
    rest, skip = [], False
    for arg in argv:
        if skip or arg == option or arg.startswith(option + "="):
            skip = arg == option
            continue
        rest.append(arg)
    return rest


def run_apart(argv, presets, log=print):
    """This script once per preset, each in its own process (``argv`` without its --preset options): measured
    after another preset in one process, cpu-mbv2's chains ran 6-8% slower (2 threads), alone they did not.
    Returns the run dicts in ``presets`` order."""
    import json
    import subprocess
    import tempfile

    rest = without_option(argv, "--preset")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            out = os.path.join(tmp, preset + ".json")
            code = subprocess.call([sys.executable, os.path.abspath(__file__), "--preset", preset, "--run-json", out]
                                   + rest)
            if code:
                raise MessError("got exit code {} from the {} run; expected 0; see its error above".format(code, preset))
            with open(out) as f:
                runs.append(json.load(f))
            log(runs[-1]["headline"])
    return runs


def main(argv=None):
    from benchmarks._common import save

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_artifact_options(ap)
    ap.add_argument("--preset", action="append", choices=PRESETS, default=None,
                    help="preset of a fresh build (repeat for several, each reported; default {}); with --engines "
                         "the export's own".format(DEFAULT_PRESET))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter profiling of a fresh build")
    ap.add_argument("--instances", type=int, default=22, help="random instances (>= 20 for the report)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per image (default 15; quick 5)")
    ap.add_argument("--max-images", type=int, default=None, help="memo images run (default 64; quick 32)")
    ap.add_argument("--fixed-images", type=int, default=8,
                    help="images (runs per visit) of a fixed-path instance: a few runs in a row reach the steady "
                         "state of a deployed loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-json", help=argparse.SUPPRESS)  # run_apart: write this preset's run here, save nothing
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    presets = a.preset or [DEFAULT_PRESET]
    if a.engines and a.preset:
        raise MessError("got --preset with --engines; expected one or the other (the engines' export has its own "
                        "preset); try dropping --preset")
    if len(presets) > 1:
        runs = run_apart(argv, presets)
    else:  # built (and profiled) just before it is measured: a shared machine drifts
        art = resolve_artifacts(a, "lut_fidelity", 0.3 if a.quick else 1.0, presets[0])  # host stages: subprocesses
        setup_threads(art, a.threads)  # before any session: all of this process's sessions join one pool
        runs = [evaluate(art, a.instances, a.reps or (5 if a.quick else 15), a.max_images or (32 if a.quick else 64),
                         a.fixed_images, a.seed)]
        if a.run_json:
            write_json_atomic(a.run_json, runs[0])
            return 0
    met = all(r["targets"]["met"] for r in runs)
    save("lut_fidelity", {"runs": runs, "headline": "; ".join(r["headline"] for r in runs),
                          "targets": {"median_error": 0.05, "p90_error": 0.10, "met": met}}, markdown(runs))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MessError as e:
        sys.exit("error: {}".format(e))
