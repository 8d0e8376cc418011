"""`mess-edge search`: pick the best multi-exit instance for this device (thin: options -> run_search)."""

import click


@click.command("search")
@click.option("--memo", "memo_path", required=True, type=click.Path(dir_okay=False),
              help="memo.npz from mess-edge calibrate (the calibration split).")
@click.option("--manifest", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="ONNX_DIR/manifest.json from mess-edge export.")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), default=None,
              help="lut.json from mess-edge profile: search on measured latency (ms). Without it: MACs.")
@click.option("--setting", required=True,
              type=click.Choice(["final-only", "budgeted", "anytime", "input-dependent"]))
@click.option("--max-drop", "max_drop_pp", type=float, default=None,
              help="Eq. 5: min cost with mIoU >= final-only's calibration mIoU minus PP percentage points.")
@click.option("--min-miou", "min_miou_pct", type=float, default=None,
              help="Eq. 5: min cost with mIoU >= X percent.")
@click.option("--budget-ms", type=float, default=None, help="Eq. 6: max mIoU with latency <= T ms (needs --lut).")
@click.option("--budget-gmacs", type=float, default=None, help="Eq. 6: max mIoU with cost <= G GMACs.")
@click.option("--max-exits", type=int, default=None,
              help="Most early exits: default all exit points (anytime), 2 (input-dependent).")
@click.option("--policy", type=click.Choice(["edge", "raw", "mean"]), default="edge", show_default=True,
              help="Image confidence: edge-enhanced eq. 7, plain eq. 7, or mean pixel confidence.")
@click.option("--anytime-accuracy", type=click.Choice(["final", "min"]), default="final", show_default=True,
              help="Anytime mIoU: the final exit's, or the worst of the selected exits and the final.")
@click.option("--pareto", "pareto_path", type=click.Path(dir_okay=False), default=None,
              help="Write every design point (cost, mIoU, pareto flag, description) as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw cost vs mIoU with the Pareto front as PNG (needs matplotlib).")
@click.option("--promise", type=click.Choice(["new-images", "calibration"]), default=None,
              help="new-images (default with --max-drop / --min-miou): the mIoU constraint holds on new images with "
                   "probability >= 1 - delta (Learn-then-Test on the memo's images); calibration: on the memo's "
                   "images only (the plain search; the default with a budget).")
@click.option("--delta", type=float, default=0.1, show_default=True,
              help="--promise new-images: the chance, in (0, 1), that the promise fails.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="instance.json to write.")
def search(**kwargs):
    """Search exits, architectures and thresholds for one inference setting (paper sec. 5.1, eqs. 4-6)."""
    from mess_edge.search.driver import SearchOptions, run_search

    click.echo(run_search(SearchOptions(**kwargs)))
