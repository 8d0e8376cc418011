"""instance.json: what the search writes and the runtime reads, and its replay on a memo (numpy only).

``simulate`` replays an instance on any memo of the same checkpoint (e.g. the test split's) by running the exit
policy over the memoised confidences: that is how an instance's test-split mIoU is reported, apart from the
calibration mIoU it was chosen on.
"""

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.costs import (backbone_spans, cost_anytime, cost_budgeted, cost_final_only,
                                    cost_input_dependent, cost_upsample, head_graph_names)
from mess_edge.search.memo import arch_dict, arch_tag, miou_from_stats
from mess_edge.search.space import Config, assign_images

INSTANCE_FORMAT = "mess-edge-instance/1"


def _pct(x):
    return None if x is None else float(x) * 100.0


def objective_dict(result):
    """The objective as the instance records it (mIoU in percent, budget in the cost unit)."""
    o = result.objective
    if o.kind == "max_miou":
        return {"kind": "max_miou", "budget": float(o.budget), "unit": result.cost_unit}
    return {"kind": "min_cost", "min_miou": _pct(o.min_miou), "max_drop_pp": _pct(o.max_drop),
            "threshold_miou": _pct(result.threshold_miou)}


def instance_dict(result, memo, costs, memo_sha256=None, manifest_sha256=None, lut_sha256=None,
                  checkpoint_sha256=None):
    """The instance.json content of a SearchResult (format in docs/artifacts.md; mIoU in percent)."""
    cfg, names = result.config, head_graph_names(costs, memo)
    exits = []
    for j, h in enumerate(cfg.heads):
        exits.append({"exit": int(memo.head_exit[h]), "arch": arch_dict(memo.head_arch[h]), "graph": names[h],
                      "th_img": float(cfg.th_img[j]) if cfg.th_img else None})
    labels = [e["graph"] for e in exits] + (["final"] if cfg.final else [])
    # The costs this instance was searched with, so simulate() can give its expected cost on another memo.
    cost_table = {"segment": [float(v) for v in costs.segment], "final": float(costs.final),
                  "exits": {names[h]: float(costs.head[h]) for h in cfg.heads},
                  "upsample": dict([(names[h], float(costs.upsample[h])) for h in cfg.heads] +
                                   [("final", float(costs.upsample[-1]))])}
    if costs.stretches:
        cost_table["stretches"] = [{"from": a, "to": b, "cost": c} for a, b, c in costs.stretches]
    return {
        "format": INSTANCE_FORMAT,
        "setting": result.setting,
        "exits": exits,
        "final": bool(cfg.final),
        "th_pix": None if cfg.th_pix is None else round(cfg.th_pix, 9),  # a memo bin edge: 0.7, not 0.70000000001
        "edge_enhancement": result.policy == "edge",
        "policy": result.policy,
        "cost_model": result.cost_model,
        "cost_unit": result.cost_unit,
        "expected_cost": result.cost,
        "final_only_cost": result.final_only_cost,
        "calibration_miou": _pct(result.miou),
        "final_only_miou": _pct(result.final_only_miou),
        "objective": objective_dict(result),
        "cost_table": cost_table,
        "exit_fractions": dict(zip(labels, result.exit_fractions)),
        "exit_miou": dict(zip(labels, [_pct(m) for m in result.exit_miou])),
        "search": {"n_configs": result.n_configs, "n_evaluated": result.n_evaluated,
                   "seconds": round(result.seconds, 4), "max_exits": result.max_exits,
                   "anytime_accuracy": result.anytime_accuracy, "th_img_grid": list(result.th_img_grid),
                   "th_pix_grid": [round(t, 9) for t in result.th_pix_grid]},
        "memo_sha256": memo_sha256,
        "manifest_sha256": manifest_sha256,
        "lut_sha256": lut_sha256,
        "checkpoint_sha256": checkpoint_sha256 or memo.meta.get("checkpoint_sha256"),
    }


def config_from_instance(memo, instance):
    """(Config, policy) of an instance dict, its exits matched to the memo's heads by (exit, arch)."""
    if instance.get("format") != INSTANCE_FORMAT:
        raise MessError("got instance format {!r}; expected {!r}".format(instance.get("format"), INSTANCE_FORMAT))
    memo_ckpt, inst_ckpt = memo.meta.get("checkpoint_sha256"), instance.get("checkpoint_sha256")
    if memo_ckpt and inst_ckpt and memo_ckpt != inst_ckpt:
        raise MessError("got an instance of checkpoint {} and a memo of checkpoint {}; expected the same; try a memo "
                        "calibrated from the instance's checkpoint".format(inst_ckpt[:12], memo_ckpt[:12]))
    policy = instance.get("policy") or ("edge" if instance.get("edge_enhancement", True) else "raw")
    heads = []
    for e in instance.get("exits", []):
        h = memo.find_head(int(e["exit"]), e["arch"])
        if h is None:
            raise MessError("got instance exit e{}:{} absent from the memo; expected a memo of the same overprovisioned "
                            "network; try re-running calibrate".format(e["exit"], arch_tag(e["arch"])))
        heads.append(h)
    setting = instance.get("setting")
    dynamic = setting == "input-dependent"
    th_img = tuple(float(e["th_img"]) for e in instance["exits"]) if dynamic else ()
    if dynamic and heads and policy != "mean" and instance.get("th_pix") is None:
        raise MessError("got an input-dependent instance with policy {} and no th_pix; expected a pixel threshold; "
                        "try searching again".format(policy))
    final = bool(instance.get("final", True))
    if not final and len(heads) != 1:
        raise MessError("got an instance without the final exit and {} early exits; expected exactly one "
                        "(budgeted)".format(len(heads)))
    return Config(tuple(heads), th_img, instance.get("th_pix") if dynamic else None, final), policy


def config_cost(memo, setting, config, taken, span, head_cost, upsample):
    """Expected cost per image of ``config`` (Table 1 + upsample), given the exit each image takes ([I]).

    span: the backbone spans (costs.backbone_spans, CostTable.span); head_cost, upsample: {memo head index:
    cost} for the selected heads (upsample also for memo.n_heads, the final exit).
    """
    fin = memo.n_heads
    exits = [(int(memo.head_exit[h]), head_cost[h]) for h in config.heads]
    if setting == "anytime":
        return cost_anytime(span, exits) + upsample[fin]
    if not config.final:
        h = config.heads[0]
        return cost_budgeted(span, int(memo.head_exit[h]), head_cost[h]) + upsample[h]
    if not config.heads:
        return cost_final_only(span) + upsample[fin]
    remaining, still = [], memo.n_images
    for h in config.heads:
        still -= int(np.sum(taken == h))
        remaining.append(still / memo.n_images)
    fractions, p_prev = [], 1.0
    for p in remaining:
        fractions.append(p_prev - p)
        p_prev = p
    ups = [upsample[h] for h in config.heads] + [upsample[fin]]
    return cost_input_dependent(span, exits, remaining) + cost_upsample(fractions + [p_prev], ups)


def _cost_inputs(memo, instance, config, costs):
    """(span, head_cost, upsample) from ``costs`` or the instance's own cost_table; None if neither."""
    if costs is not None:
        return (costs.span, {h: costs.head[h] for h in config.heads},
                dict([(h, costs.upsample[h]) for h in config.heads] + [(memo.n_heads, costs.upsample[-1])]))
    table = instance.get("cost_table")
    if not table:
        return None
    graphs = [e["graph"] for e in instance["exits"]]
    stretches = [(s["from"], s["to"], s["cost"]) for s in table.get("stretches", [])]
    return (backbone_spans(table["segment"], table["final"], stretches),
            {h: table["exits"][g] for h, g in zip(config.heads, graphs)},
            dict([(h, table["upsample"][g]) for h, g in zip(config.heads, graphs)] +
                 [(memo.n_heads, table["upsample"]["final"])]))


def simulate(memo, instance, costs=None):
    """Replay ``instance`` (a dict as in instance.json) on ``memo``; a report in instance.json's units.

    Returns {"miou": percent (anytime: the final's, or the worst exit's if the instance was searched so),
    "exit_histogram": {graph or "final": images taking it}, "exit_fractions": {same keys: fraction},
    "exit_miou": {same keys: that exit's own mIoU on all images, percent}, "n_images",
    "expected_cost": from ``costs`` (a CostTable for this memo's heads) or else the instance's cost_table
    (None if neither), "cost_unit"}.
    """
    config, policy = config_from_instance(memo, instance)
    taken = assign_images(memo, config, policy)
    stats = memo.stats(np.float64)
    head_miou = memo.head_miou()
    miou = float(miou_from_stats(stats[taken, np.arange(memo.n_images)].sum(axis=0)))
    if instance["setting"] == "anytime" and instance.get("search", {}).get("anytime_accuracy") == "min":
        miou = float(min(head_miou[h] for h in list(config.heads) + [memo.n_heads]))
    exits = list(config.heads) + ([memo.n_heads] if config.final else [])
    labels = [e["graph"] for e in instance["exits"]] + (["final"] if config.final else [])
    counts = [int(np.sum(taken == h)) for h in exits]
    pieces = _cost_inputs(memo, instance, config, costs)
    cost = None if pieces is None else float(config_cost(memo, instance["setting"], config, taken, *pieces))
    return {"miou": miou * 100.0, "exit_histogram": dict(zip(labels, counts)),
            "exit_fractions": dict(zip(labels, [c / memo.n_images for c in counts])),
            "exit_miou": dict(zip(labels, [float(head_miou[h]) * 100.0 for h in exits])),
            "n_images": memo.n_images, "expected_cost": cost,
            "cost_unit": costs.unit if costs is not None else instance.get("cost_unit")}
