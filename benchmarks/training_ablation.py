"""Tables 5 and 6 of the paper on DigitScenes, and the cost of stage 2 (sec. 4.3).

Table 5 (uniform vanilla FCN exits): (i) final exit only, (ii) E2E (sum of CE, end to end), (iii) exit-aware
pre-training (eq. 2, round robin), (iv) Frozen: (i)'s backbone + CE exits, (v) ours: (iii)'s backbone + CE exits.
Table 6: CE, KD, SelfDistill and PFD exits on the same frozen exit-aware backbone.
Stage-2 cost: H heads trained jointly (one backbone pass per batch) vs one head at a time (one pass per head).

    python benchmarks/training_ablation.py                      # 3 seeds, defaults below
    python benchmarks/training_ablation.py --seeds 0 --stage1-epochs 2 --n-train 300   # a quick look
    python benchmarks/training_ablation.py --data demo/data --jobs 9 --no-cost   # on a GPU: runs in parallel
    python benchmarks/training_ablation.py --tables-from runs/ablation/tables.json  # add the cost here

The training runs are independent processes: ``--jobs N`` runs N at a time (on a GPU machine with many cores;
on 2 CPU cores keep 1). The tables and the stage-2 cost can be measured on different machines: ``--no-cost``
writes the tables alone, ``--tables-from`` reuses them and measures the cost where it runs.
"""

import argparse
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import ROOT, cli, cli_json, mean_std, save  # noqa: E402

LOSSES = ("ce", "kd", "selfdistill", "pfd")


def _pool_map(fn, items, jobs):
    """fn over items, ``jobs`` at a time (each fn starts a subprocess, so threads suffice)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(fn, items))


def run_all(a, data, seeds, work):
    """Stage 1 (3 schedules), then stage 2 (Frozen + 4 losses), then evaluation, for every seed."""
    common = ["--data", data, "--batch-size", a.batch_size, "--val-images", 0]

    def s1(job):
        sched, seed = job
        out = os.path.join(work, "s1-{}-{}.pt".format(sched, seed))
        if not os.path.isfile(out):
            cli("train", "--preset", a.preset, "--stage", 1, "--schedule", sched, "--exits", a.exits,
                "--input-size", a.size, "--epochs", a.stage1_epochs, "--seed", seed, "--out", out, *common)
        return out

    def s2(job):
        name, init, loss, seed = job
        out = os.path.join(work, "s2-{}-{}.pt".format(name, seed))
        if not os.path.isfile(out):
            cli("train", "--stage", 2, "--init", os.path.join(work, "s1-{}-{}.pt".format(init, seed)), "--space",
                a.arch, "--loss", loss, "--epochs", a.stage2_epochs, "--seed", seed, "--out", out, *common)
        return out

    s1_jobs = [(sched, seed) for seed in seeds for sched in ("final-only", "e2e", "exit-aware")]
    _pool_map(s1, s1_jobs, a.jobs)
    s2_specs = [("frozen", "final-only", "ce")] + [("aware-" + l, "exit-aware", l) for l in LOSSES]
    s2_jobs = [spec + (seed,) for seed in seeds for spec in s2_specs]
    _pool_map(s2, s2_jobs, a.jobs)
    evals = [(name, seed, os.path.join(work, "s1-{}-{}.pt".format(name, seed))) for seed in seeds
             for name in ("final-only", "e2e", "exit-aware")]
    evals += [(name, seed, os.path.join(work, "s2-{}-{}.pt".format(name, seed))) for name, _, _, seed in s2_jobs]
    res = _pool_map(lambda e: cli_json("eval", e[2], "--data", data, "--split", "test", "--json"), evals, a.jobs)
    per_seed = []
    for seed in seeds:
        rows = {name: r for (name, s, _), r in zip(evals, res) if s == seed}
        per_seed.append({k: {"final": v["final"]["miou"], "exits": [e["miou"] for e in v["exits"]]}
                         for k, v in rows.items()})
    return per_seed


def stage2_cost(a, n_heads_archs, batches):
    """Seconds per batch and backbone passes: all heads jointly vs one head at a time (same heads, same data)."""
    import torch

    from mess_edge.model.heads import ExitArch
    from mess_edge.model.multiexit import MultiExitNet
    from mess_edge.train import losses

    torch.manual_seed(0)
    archs = [ExitArch.parse(n) for n in n_heads_archs]
    net = MultiExitNet(a.preset, 11, (a.cost_size, a.cost_size), a.cost_exits)
    for k in range(len(net.exit_points)):
        for arch in archs:
            net.add_exit(k, arch)
    heads = net.heads()
    net.backbone.eval()
    net.final_head.eval()
    opt = torch.optim.AdamW(net.exits.parameters(), lr=1e-3)
    net.to(memory_format=torch.channels_last)
    x = torch.randn(a.batch_size, 3, *net.input_hw).contiguous(memory_format=torch.channels_last)
    s = a.cost_loss_stride  # the trainer's --loss-stride: losses on a coarser grid
    y = torch.randint(0, 11, (a.batch_size,) + tuple(net.input_hw))[:, s // 2::s, s // 2::s]
    hw = tuple(y.shape[-2:])

    def step(hs):
        with torch.no_grad():
            feats = net.forward_features(x)
            teacher = torch.nn.functional.interpolate(net.forward_final_head(feats[-1]), size=hw, mode="bilinear")
        loss = sum(losses.exit_loss("pfd", torch.nn.functional.interpolate(
            net.forward_exit(k, ar, feats[k]), size=hw, mode="bilinear"), teacher, y) for k, ar in hs)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(heads)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        step(heads)
    joint = (time.perf_counter() - t0) / batches
    t0 = time.perf_counter()
    for _ in range(batches):
        for h in heads:
            step([h])
    single = (time.perf_counter() - t0) / batches
    return {"heads": len(heads), "batch_size": a.batch_size, "batches_timed": batches,
            "input_size": a.cost_size, "loss_stride": s,
            "joint_s_per_batch": joint, "one_at_a_time_s_per_batch": single,
            "joint_backbone_passes_per_batch": 1, "one_at_a_time_backbone_passes_per_batch": len(heads),
            "wall_ratio": single / joint, "passes_ratio": float(len(heads))}


def train_device(cuda=True):
    """Where the training subprocesses ran: the GPU's name when torch sees one, else the CPU."""
    import torch

    from mess_edge.runtime.device import cpu_model

    if cuda and torch.cuda.is_available():
        return "{} (torch {})".format(torch.cuda.get_device_name(0), torch.__version__)
    return "{} x{} (torch {})".format(cpu_model(), os.cpu_count(), torch.__version__)


def fmt_cell(vals):
    m, s = mean_std(vals)
    return "{:.2f} ± {:.2f}".format(m, s)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-mbv2")
    p.add_argument("--exits", type=int, default=4, help="exit points incl. the final")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--stage1-epochs", type=int, default=6)
    p.add_argument("--stage2-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--size", type=int, default=128, help="DigitScenes image size = training input size")
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--arch", default="c0b0r0h0", help="the uniform exit architecture of both tables")
    p.add_argument("--cost-exits", type=int, default=5, help="exit points for the 32-head cost measurement")
    p.add_argument("--cost-batches", type=int, default=3)
    p.add_argument("--cost-size", type=int, default=128, help="input size of the cost measurement")
    p.add_argument("--cost-loss-stride", type=int, default=4, help="loss stride of the cost measurement")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "ablation"))
    p.add_argument("--data", default=None, help="an existing DigitScenes folder (default: generate one in --work "
                   "from --size/--n-train/--n-eval)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (1 on a 2-core CPU)")
    p.add_argument("--no-cost", action="store_true", help="skip the stage-2 cost measurement")
    p.add_argument("--tables-from", default=None, help="reuse the tables of an earlier run (its tables.json)")
    a = p.parse_args()
    if a.tables_from:
        with open(a.tables_from) as f:
            tables = json.load(f)
        for k in ("preset", "exits", "arch", "seeds", "size", "stage1_epochs", "stage2_epochs", "n_train"):
            setattr(a, k, tables["args"][k])
    else:
        os.makedirs(a.work, exist_ok=True)
        data = a.data
        if data is None:
            data = os.path.join(a.work, "data")
            cli("data", "digitscenes", "--out", data, "--size", a.size, "--n-train", a.n_train, "--n-cal",
                a.n_eval, "--n-test", a.n_eval)
        with open(os.path.join(data, "digitscenes.json")) as f:
            params = json.load(f)["params"]
        a.size, a.n_train = params["size"], params["n_train"]
        seeds = [int(s) for s in a.seeds.split(",")]
        t0 = time.time()
        per_seed = run_all(a, data, seeds, a.work)
        tables = {"args": dict(vars(a), data_params=params), "per_seed": per_seed, "seeds": seeds,
                  "train_wall_s": time.time() - t0, "train_device": train_device()}
        from mess_edge.artifacts import write_json_atomic

        write_json_atomic(os.path.join(a.work, "tables.json"), tables)
    per_seed, train_wall = tables["per_seed"], tables["train_wall_s"]
    space8 = "c0b0r0h0,c1b0r0h0,c2b0r0h0,c1b1r0h0,c1b1r1h0,c2b2r1h0,c3b1r0h1,c2b1r1h1".split(",")
    cost = None if a.no_cost else stage2_cost(a, space8, a.cost_batches)

    n_early = a.exits - 1
    hdr = "| " + " | ".join(["method"] + ["E{}".format(i + 1) for i in range(n_early)] + ["final"]) + " |"
    sep = "|" + "---|" * (n_early + 2)

    def row(label, key):
        cells = [fmt_cell([r[key]["exits"][i] for r in per_seed]) if per_seed[0][key]["exits"] else "-"
                 for i in range(n_early)]
        return "| {} | {} | {} |".format(label, " | ".join(cells), fmt_cell([r[key]["final"] for r in per_seed]))

    t5 = [hdr, sep, "| (i) final exit only | {} | {} |".format(" | ".join(["-"] * n_early), fmt_cell(
        [r["final-only"]["final"] for r in per_seed])),
          row("(ii) E2E", "e2e"), row("(iii) exit-aware pre-training", "exit-aware"),
          row("(iv) Frozen: (i) + CE exits", "frozen"), row("(v) ours: (iii) + CE exits", "aware-ce")]
    t6 = [hdr, sep] + [row(name, "aware-" + l) for name, l in
                       (("CE", "ce"), ("KD", "kd"), ("SelfDistill", "selfdistill"), ("PFD (ours)", "pfd"))]

    def paired(label, key_a, key_b):
        """Per-seed differences a - b (same seed, same backbone), mean ± std: the noise the seeds share cancels."""
        cells = [fmt_cell([r[key_a]["exits"][i] - r[key_b]["exits"][i] for r in per_seed]) for i in range(n_early)]
        wins = sum(all(r[key_a]["exits"][i] >= r[key_b]["exits"][i] for r in per_seed) for i in range(n_early))
        return "| {} | {} | {}/{} exits on every seed |".format(label, " | ".join(cells), wins, n_early)

    t6 += ["", "Paired differences (pp, same seed and backbone):", "", hdr.replace("final", "PFD >= on"), sep] + [
        paired("PFD − " + name, "aware-pfd", "aware-" + l) for name, l in
        (("CE", "ce"), ("KD", "kd"), ("SelfDistill", "selfdistill"))]
    t5 += ["", "Paired differences (pp, same seed):", "", hdr.replace("final", "≥ on"), sep,
           paired("(v) ours − (iv) Frozen", "aware-ce", "frozen"), paired("(ii) E2E − (v) ours", "e2e", "aware-ce")]
    md = ["# Training ablation (DigitScenes, {}, {} exit points, arch {}, seeds {})".format(
        a.preset, a.exits, a.arch, a.seeds), "",
          "Test mIoU %, mean ± std over seeds; {}x{} images; stage 1 {} epochs, stage 2 {} epochs, batch {}, {} "
          "train images; all runs {:.0f} s on {}.".format(a.size, a.size, a.stage1_epochs, a.stage2_epochs,
                                                        a.batch_size, a.n_train, train_wall,
                                                        tables["train_device"]), "",
          "## Table 5 analogue: two-stage training", ""] + t5 + ["", "## Table 6 analogue: stage-2 losses on "
                                                                "the exit-aware backbone", ""] + t6
    if cost:
        md += ["", "## Stage-2 cost with {} heads ({}x{} input, batch {}, --loss-stride {}; per batch, so per epoch "
                   "alike)".format(cost["heads"], a.cost_size, a.cost_size, a.batch_size, cost["loss_stride"]), "",
               "| | s / batch | backbone passes / batch |", "|---|---|---|",
               "| all heads jointly | {:.3f} | 1 |".format(cost["joint_s_per_batch"]),
               "| one head at a time | {:.3f} | {} |".format(cost["one_at_a_time_s_per_batch"], cost["heads"]),
               "| ratio | **{:.1f}x** | **{}x** |".format(cost["wall_ratio"], cost["heads"]),
               "", "The cost is measured on {}.".format(train_device(cuda=False))]
    save("training_ablation", {"args": tables["args"], "per_seed": per_seed, "seeds": tables["seeds"],
                               "stage2_cost": cost, "train_wall_s": train_wall,
                               "train_device": tables["train_device"]}, "\n".join(md))


if __name__ == "__main__":
    main()
