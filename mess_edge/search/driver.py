"""`mess-edge search` as a library call: files in, instance.json (and optional Pareto CSV / plot) out."""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mess_edge.artifacts import atomic_file, atomic_path, check_outputs, write_json_atomic
from mess_edge.errors import MessError
from mess_edge.naming import exit_label
from mess_edge.search.optimizer import Objective, search
from mess_edge.search.inputs import load_search_inputs
from mess_edge.search.instance import instance_dict
from mess_edge.search.risk import Promise, controlled_search, promise_dict, promise_line


@dataclass(frozen=True)
class SearchOptions:
    """The resolved options of one `mess-edge search` run."""

    memo_path: str
    manifest_path: str
    out_path: str
    setting: str
    lut_path: Optional[str] = None  # latency table; None searches on MACs from the manifest
    max_drop_pp: Optional[float] = None  # eq. 5: mIoU drop allowed from final-only, percentage points
    min_miou_pct: Optional[float] = None  # eq. 5: absolute mIoU threshold, percent
    budget_ms: Optional[float] = None  # eq. 6 with a lut
    budget_gmacs: Optional[float] = None  # eq. 6 on MACs
    max_exits: Optional[int] = None  # cap on early exits (None: engine default)
    policy: str = "edge"  # image confidence: edge | raw | mean
    anytime_accuracy: str = "final"  # anytime mIoU: final | min
    pareto_path: Optional[str] = None  # CSV of every design point
    plot_path: Optional[str] = None  # PNG of cost vs mIoU with the Pareto front
    promise: Optional[str] = None  # "new-images" (risk-controlled) | "calibration"; None: new-images for eq. 5
    delta: float = 0.1  # new-images: the promise may fail with probability <= delta


def _objective(o):
    values = (("--max-drop", o.max_drop_pp), ("--min-miou", o.min_miou_pct), ("--budget-ms", o.budget_ms),
              ("--budget-gmacs", o.budget_gmacs))
    given = [name for name, v in values if v is not None]
    for name, v in values:
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise MessError("got {} {}; expected a finite number >= 0".format(name, v))
    if len(given) != 1:
        raise MessError("got {}; expected exactly one of --max-drop PP, --min-miou X, --budget-ms T, "
                        "--budget-gmacs G".format(" and ".join(given) if given else "no objective"))
    if o.budget_ms is not None and o.lut_path is None:
        raise MessError("got --budget-ms without --lut; expected a latency table to budget milliseconds; try "
                        "--lut ENGINE_DIR/lut.json (from mess-edge profile) or --budget-gmacs")
    if o.budget_gmacs is not None and o.lut_path is not None:
        raise MessError("got --budget-gmacs with --lut; expected one cost model; try dropping --lut to search on "
                        "MACs, or --budget-ms to search on latency")
    if o.budget_ms is not None or o.budget_gmacs is not None:
        return Objective(budget=o.budget_ms if o.budget_ms is not None else o.budget_gmacs)
    if o.max_drop_pp is not None:
        return Objective(max_drop=o.max_drop_pp / 100.0)
    return Objective(min_miou=o.min_miou_pct / 100.0)


def write_pareto(path, points, unit):
    """CSV: cost, mIoU (percent), early exits, pareto flag (0/1), chosen flag, description; one row per point."""
    lines = ["cost_{},miou_percent,n_exits,pareto,chosen,description".format(unit)]
    for i, (c, m, k, p, d) in enumerate(zip(points.costs.tolist(), (points.mious * 100).tolist(),
                                            points.n_exits.tolist(), points.pareto.tolist(), points.descriptions)):
        lines.append("{!r},{!r},{},{},{},\"{}\"".format(c, m, k, int(p), int(i == points.chosen), d))
    with atomic_file(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_pareto(path, result, max_points=200000):
    """Cost vs mIoU of every design point, the Pareto front, the choice and final-only (the paper's Fig. 5)."""
    import matplotlib  # lazily: the device may not have it, and only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result.points
    keep = np.arange(len(pts.costs))
    if len(keep) > max_points:  # a fixed-seed sample keeps the plot readable; the front is drawn in full
        keep = np.sort(np.random.default_rng(0).choice(keep, max_points, replace=False))
    fig, ax = plt.subplots(figsize=(7, 5))
    for k in np.unique(pts.n_exits[keep])[::-1]:  # the rarer few-exit points drawn on top
        sel = keep[pts.n_exits[keep] == k]
        ax.scatter(pts.costs[sel], pts.mious[sel] * 100, s=4, alpha=0.4, rasterized=True,
                   label="{} early exit{}".format(k, "" if k == 1 else "s"))
    front = np.flatnonzero(pts.pareto)
    front = front[np.argsort(pts.costs[front])]
    ax.step(pts.costs[front], pts.mious[front] * 100, where="post", color="black", lw=1, label="Pareto front")
    ax.scatter([result.final_only_cost], [result.final_only_miou * 100], marker="x", s=60, color="black",
               label="final-only")
    ax.scatter([result.cost], [result.miou * 100], marker="*", s=140, color="red", edgecolors="black",
               label="chosen")
    ax.set_xlabel("expected cost per image ({})".format(result.cost_unit))
    ax.set_ylabel("calibration mIoU (%)")
    ax.set_title("{} search: {:,} configurations".format(result.setting, len(pts.costs)))
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


MIN_IMAGES_NEW = 40  # --promise new-images splits the memo's images in two halves of >= 20


def _promise(o, objective, n_images=None):
    """The Promise in force: new-images by default for eq. 5 (calibration for eq. 6 budgets, or memos of fewer
    than MIN_IMAGES_NEW images, which the promise line then says)."""
    kind = o.promise
    if kind is None:
        small = n_images is not None and n_images < MIN_IMAGES_NEW
        kind = "new-images" if objective.kind == "min_cost" and not small else "calibration"
    if kind == "new-images" and objective.kind != "min_cost":
        raise MessError("got --promise new-images with a cost budget; expected --max-drop or --min-miou (the "
                        "promise is on mIoU); try --promise calibration")
    return Promise(kind, delta=o.delta)


def summary(result, instance, out_path):
    """The lines `mess-edge search` prints."""
    cfg = result.config
    if cfg.heads:
        exits = " | ".join("{} th_img {}".format(exit_label(e["graph"]), "-" if e["th_img"] is None else
                                                 "{:.2f}".format(e["th_img"])) for e in instance["exits"])
    else:
        exits = "none"
    speedup = result.final_only_cost / result.cost if result.cost > 0 else float("inf")
    lines = [
        "setting          {} (objective {})".format(result.setting, _objective_text(result)),
        "early exits      {}{}".format(exits, "" if cfg.final else " (stops there: no final exit)"),
        "exit policy      {}, th_pix {}".format(result.policy, "-" if cfg.th_pix is None else
                                                "{:.2f}".format(cfg.th_pix)),
        "exit fractions   {}".format(" | ".join("{} {:.1%}".format(exit_label(k), v)
                                                for k, v in instance["exit_fractions"].items())),
        "expected cost    {:.4g} {} vs final-only {:.4g} {} (predicted speedup {:.2f}x, {})".format(
            result.cost, result.cost_unit, result.final_only_cost, result.cost_unit, speedup, result.cost_model),
        "calibration mIoU {:.2f} vs final-only {:.2f} ({:+.2f} pp)".format(
            result.miou * 100, result.final_only_miou * 100, (result.miou - result.final_only_miou) * 100),
    ]
    if instance.get("promise"):
        lines.append(promise_line(result, instance["promise"]))
    if result.setting == "anytime":
        lines.append("per-exit mIoU    {}".format(" | ".join("{} {:.2f}".format(k, v) for k, v in
                                                           instance["exit_miou"].items())))
    lines += [
        "searched         {:,} configurations, {:,} scored for accuracy, in {:.2f} s".format(
            result.n_configs, result.n_evaluated, result.seconds),
        "wrote            {}".format(out_path),
    ]
    return "\n".join(lines)


def _objective_text(result):
    o = result.objective
    if o.kind == "max_miou":
        return "max mIoU s.t. cost <= {:g} {}".format(o.budget, result.cost_unit)
    return "min cost s.t. mIoU >= {:.2f}".format(result.threshold_miou * 100)


def _with_points(result, plain):
    """``result`` carrying the plain search's design points with the controlled choice marked chosen."""
    import dataclasses

    pts = plain.points
    match = [i for i, d in enumerate(pts.descriptions) if d == result.description and pts.costs[i] == result.cost]
    chosen = match[0] if match else pts.chosen
    return dataclasses.replace(result, points=dataclasses.replace(pts, chosen=chosen))


def run_search(options):
    """Load and check the inputs, search, write the instance (and Pareto CSV / plot); returns the summary text."""
    objective = _objective(options)
    check_outputs([("--out", options.out_path), ("--pareto", options.pareto_path), ("--plot", options.plot_path)],
                  [("--memo", options.memo_path), ("--manifest", options.manifest_path), ("--lut", options.lut_path)])
    _promise(options, objective)  # bad --promise / --delta before reading any file
    inputs = load_search_inputs(options.memo_path, options.manifest_path, options.lut_path)
    promise = _promise(options, objective, inputs.memo.n_images)
    keep_points = bool(options.pareto_path or options.plot_path)
    result = search(inputs.memo, inputs.costs, options.setting, objective, max_exits=options.max_exits,
                    policy=options.policy, keep_points=keep_points, anytime_accuracy=options.anytime_accuracy)
    report = None
    if promise.kind == "new-images":
        plain = result
        result, report = controlled_search(inputs.memo, inputs.costs, options.setting, objective, promise,
                                           max_exits=options.max_exits, policy=options.policy,
                                           anytime_accuracy=options.anytime_accuracy)
        report["plain_expected_cost"] = plain.cost
        if plain.points is not None:  # the Pareto CSV / plot mark the controlled choice
            result = _with_points(result, plain)
    instance = instance_dict(result, inputs.memo, inputs.costs, inputs.memo_sha256, inputs.manifest_sha256,
                             inputs.lut_sha256, inputs.checkpoint_sha256)
    instance["promise"] = promise_dict(promise.kind, inputs.memo.n_images, report)
    if options.promise is None and promise.kind == "calibration" and objective.kind == "min_cost":
        instance["promise"]["why"] = "{} calibration images: new-images needs >= {}".format(
            inputs.memo.n_images, MIN_IMAGES_NEW)
    write_json_atomic(options.out_path, instance)
    if options.pareto_path:
        write_pareto(options.pareto_path, result.points, result.cost_unit)
    if options.plot_path:
        plot_pareto(options.plot_path, result)
    return summary(result, instance, options.out_path)
