"""Exit-policy oracles for benchmarks/early_exit.py: what an all-knowing policy would do on the test memo, priced
with the latency table. ``p`` is a preset's artifact paths (test_memo, onnx, lut) as early_exit.prepare returns.

- oracle_all_heads: each image at the cheapest of ALL trained heads as good as the final exit on it (the
  strict oracle, the issue's limit), and the same allowed to spend a policy's mIoU drop (_spend_drop).
- oracle / perfect_decisions: the same two over one instance's own exits, priced like the instance.
- difficulty_breakdown: who leaves early, by DigitScenes difficulty.
"""

import json
import os


def _price_assignment(p, inst, taken):
    """Predicted ms/frame of the instance's chain when image i leaves at head ``taken[i]`` (memo.n_heads: the
    final exit): Table 1 with p_n = those fractions, the heads of the exits passed paid too (the search's
    formula). Returns (ms, mIoU %)."""
    import numpy as np

    from mess_edge.search import load_search_inputs
    from mess_edge.search.instance import _cost_inputs, config_cost, config_from_instance
    from mess_edge.search.memo import miou_from_stats

    inputs = load_search_inputs(p["test_memo"], os.path.join(p["onnx"], "manifest.json"), p["lut"])
    memo = inputs.memo
    miou = float(miou_from_stats(memo.stats(np.float64)[taken, np.arange(memo.n_images)].sum(0))) * 100
    forced = dict(inst, exits=[dict(e, th_img=0.0) for e in inst["exits"]])
    config, _ = config_from_instance(memo, forced)
    return float(config_cost(memo, "input-dependent", config, taken,
                             *_cost_inputs(memo, forced, config, inputs.costs))), miou


def oracle(p, inst_path):
    """Oracle exit policy on the test memo over the instance's exits: each image leaves at the earliest
    selected exit whose pixel accuracy on it is >= the final exit's. Returns its mIoU and predicted cost."""
    import numpy as np

    memo = _oracle_inputs(p)[0]
    with open(inst_path) as f:
        inst = json.load(f)
    heads = [memo.find_head(e["exit"], e["arch"]) for e in inst["exits"]]
    acc = _pixel_accuracy(memo)
    taken = np.full(memo.n_images, memo.n_heads)
    for h in reversed(heads):
        taken = np.where(acc[h] >= acc[memo.n_heads], h, taken)
    ms, miou = _price_assignment(p, inst, taken)
    return {"miou": miou, "predicted_ms": ms, "exit_fractions": {str(int(h)): float(np.mean(taken == h))
                                                                 for h in heads + [memo.n_heads]}}


def perfect_decisions(p, inst_path):
    """The instance's own exits and chain with perfect per-image decisions at its mIoU drop: the strict oracle
    over its exits, then _spend_drop. Knows the labels, so it bounds what any confidence could do with these
    exits. Priced like the instance (heads passed are paid), so set against its predicted speedup."""
    import numpy as np

    memo, cost, _ = _oracle_inputs(p)
    with open(inst_path) as f:
        inst = json.load(f)
    heads = [memo.find_head(e["exit"], e["arch"]) for e in inst["exits"]]
    taken = _spend_drop(memo, cost, _strict_oracle(memo, cost, heads), inst["objective"]["max_drop_pp"], heads)
    ms, miou = _price_assignment(p, inst, taken)
    return {"predicted_speedup": inst["final_only_cost"] / ms, "miou": miou,
            "fraction_leaving_early": float(np.mean(taken < memo.n_heads))}


def _pixel_accuracy(memo):
    """float64 [H+1, I]: each head's (and the final exit's) pixel accuracy on each image."""
    import numpy as np

    return np.trace(memo.confusion, axis1=2, axis2=3) / np.maximum(memo.confusion.sum((2, 3)), 1)


def _oracle_inputs(p):
    """(memo of the test split, cost per head + final [H+1] in ms, graph names [H+1]). Cost per exit from the
    table: the backbone up to the exit + head + upsample; the final path for the last entry. The backbone is
    priced as the chain runs it, one fused stretch from the image (graphs 0..k, docs/artifacts.md), where the
    table has stretches; else as the sum of its segments."""
    import numpy as np

    from mess_edge.search import load_search_inputs

    memo = load_search_inputs(p["test_memo"], os.path.join(p["onnx"], "manifest.json"), p["lut"]).memo
    with open(p["lut"]) as f:
        lut = json.load(f)
    graphs = [s["median_ms"] for s in lut["segments"]] + [lut["final"]["median_ms"]]
    fused = {int(s["to"]): s["median_ms"] for s in lut.get("stretches", []) if int(s["from"]) == 0}

    def backbone(k):  # graphs 0..k, k = exit point (segment k) or len(segments) (the final graph)
        return fused[k] if k in fused else float(sum(graphs[:k + 1]))

    names = ["head_" + memo.head_label(h).replace(":", "_") for h in range(memo.n_heads)] + ["final"]
    head_ms = {h["name"]: h["median_ms"] for h in lut["heads"]}
    cost = np.array([backbone(int(memo.head_exit[h])) + lut["upsample"]["median_ms"] + head_ms[names[h]]
                     for h in range(memo.n_heads)] + [backbone(len(graphs) - 1)])
    return memo, cost, names


def _strict_oracle(memo, cost, heads):
    """Per image the cheapest of ``heads`` whose pixel accuracy on it is >= the final exit's, else the final."""
    import numpy as np

    acc = _pixel_accuracy(memo)
    taken = np.full(memo.n_images, memo.n_heads)
    for h in sorted(heads, key=lambda h: cost[h]):
        taken = np.where((acc[h] >= acc[memo.n_heads]) & (cost[h] < cost[taken]), h, taken)
    return taken


def _spend_drop(memo, cost, taken, drop_pp, heads):
    """Perfect decisions at a policy's accuracy: from the strict oracle's assignment ``taken`` (as good as the
    final exit on every image, so usually above its mIoU), move images to cheaper ``heads``, most latency saved
    per pixel of accuracy lost first, while the test mIoU stays >= the final exit's - drop_pp. Greedy, so a lower
    bound on what a policy that knows the labels could save."""
    import numpy as np

    from mess_edge.search.memo import miou_from_stats

    stats = memo.stats(np.float64)
    correct = np.trace(memo.confusion, axis1=2, axis2=3)  # [H+1, I] pixels right
    floor = float(miou_from_stats(stats[memo.n_heads].sum(0))) - drop_pp / 100.0
    taken = taken.copy()
    total = stats[taken, np.arange(memo.n_images)].sum(0)
    allowed = np.zeros(len(cost), bool)
    allowed[list(heads)] = True
    heads, images = np.nonzero(allowed[:, None] & (cost[:, None] < cost[taken][None, :]))  # every cheaper move
    saved = cost[taken][images] - cost[heads]
    lost = np.maximum(correct[taken[images], images] - correct[heads, images], 0)
    for k in np.argsort(-saved / (lost + 1.0), kind="stable"):
        h, i = heads[k], images[k]
        if cost[h] >= cost[taken[i]]:
            continue  # the image already moved somewhere cheaper
        trial = total + stats[h, i] - stats[taken[i], i]
        if miou_from_stats(trial) >= floor:
            total, taken[i] = trial, h
    return taken


def oracle_all_heads(p, drops=(0.1, 1.0)):
    """The limit of any exit policy on this model: each test image leaves at the cheapest of ALL trained heads
    whose pixel accuracy on it is >= the final exit's, evaluating no other head (free confidence); ``assignment``
    is its graph per image. ``at_drop``: the same oracle allowed to spend a policy's mIoU drop (_spend_drop)."""
    import numpy as np

    memo, cost, names = _oracle_inputs(p)
    taken = _strict_oracle(memo, cost, range(memo.n_heads))
    final = float(cost[-1])
    at_drop = {}
    for drop in drops:
        relaxed = _spend_drop(memo, cost, taken, drop, range(memo.n_heads))
        at_drop[str(drop)] = {"predicted_speedup": final / float(cost[relaxed].mean()),
                              "fraction_leaving_early": float(np.mean(relaxed < memo.n_heads))}
    return {"predicted_speedup": final / float(cost[taken].mean()), "fraction_leaving_early": float(
        np.mean(taken < memo.n_heads)), "heads": int(memo.n_heads), "final_ms": final,
        "assignment": [names[h] for h in taken], "at_drop": at_drop}


def difficulty_breakdown(p, data, taken):
    """Per fifth of DigitScenes difficulty (the generator's d of each test image): images, the final exit's pixel
    accuracy, the share of images the strict oracle sends early, and the share the (iii) instance's chain sent
    early (``taken``: its graph per image, from the run). None for other datasets."""
    import numpy as np

    from mess_edge.data.digitscenes import image_difficulty

    meta = os.path.join(data, "digitscenes.json")
    if not os.path.isfile(meta):
        return None
    with open(meta) as f:
        seed = json.load(f)["params"]["seed"]
    memo, cost, _ = _oracle_inputs(p)
    n = min(len(taken["policy"]), memo.n_images)
    d = np.array([image_difficulty(seed, "test", i) for i in range(n)])
    acc = _pixel_accuracy(memo)[:, :n]
    oracle_early = _strict_oracle(memo, cost, range(memo.n_heads))[:n] < memo.n_heads
    policy_early = np.array([g != "final" for g in taken["policy"][:n]])
    rows = []
    for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
        m = (d >= lo) & (d < lo + 0.2)
        rows.append({"d_from": lo, "d_to": lo + 0.2, "images": int(m.sum()),
                     "final_pixel_accuracy": float(acc[memo.n_heads][m].mean()),
                     "best_head_minus_final_pp": float(100 * (acc[:memo.n_heads, m].max(0) - acc[memo.n_heads][m]).mean()),
                     "oracle_early": float(oracle_early[m].mean()), "policy_early": float(policy_early[m].mean())})
    return rows
