"""``mess-edge info``: the cost profile and exit placement of a preset (sec. 4.1, Fig. 3)."""

import json

import click

from mess_edge.naming import exit_label

# Table 2 of the paper, 512x512 inputs, 21 classes ("GFLOPs", which equal MACs + BN/ReLU elements).
PAPER_TABLE2_GFLOPS = {"drn50-fcn": 138.63, "deeplabv3-r50": 163.86, "segmbnetv2-fcn": 8.78}


@click.command()
@click.argument("preset")
@click.option("--input-size", type=int, default=None, help="Square input size in pixels [preset default].")
@click.option("--classes", type=int, default=None, help="Number of classes, background included [preset default].")
@click.option("--exits", "n_exits", type=int, default=None,
              help="Exit points N, the final exit included (paper: 6 on DRN-50) [preset default].")
@click.option("--archs/--no-archs", default=False, help="List all 64 architectures at every exit point.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(preset, input_size, classes, n_exits, archs, as_json):
    """Per-block MACs, exit points and the MACs of every exit architecture of PRESET."""
    from mess_edge.errors import MessError
    from mess_edge.model.multiexit import cost_profile

    if input_size is not None and (input_size < 32 or input_size % 8):
        raise MessError("--input-size {} is not usable; expected a multiple of 8, >= 32".format(input_size))
    if n_exits is not None and n_exits < 2:
        raise MessError("--exits {}: expected >= 2 (at least one early exit plus the final)".format(n_exits))
    hw = (input_size, input_size) if input_size else None
    try:
        prof = cost_profile(preset, classes, hw, n_exits)
    except ValueError as e:
        raise MessError(str(e))
    if as_json:
        click.echo(json.dumps(prof, indent=2))
        return
    click.echo("{}  input {}x{}  classes {}  (costs in GMACs: multiply-accumulates of conv/linear layers)".format(
        preset, prof["input_hw"][0], prof["input_hw"][1], prof["num_classes"]))
    click.echo("total {:.3f}  backbone {:.3f}  final head {:.3f}  (MACs + BN/ReLU elements: {:.3f})".format(
        prof["total_gmacs"], prof["backbone_gmacs"], prof["head_gmacs"], prof["paper_gflops"]))
    ref = PAPER_TABLE2_GFLOPS.get(preset)
    if ref and prof["input_hw"] == [512, 512] and prof["num_classes"] == 21:
        click.echo("paper Table 2: {:.2f} GFLOPs -> ours {:.2f} ({:+.2f}%)".format(
            ref, prof["paper_gflops"], 100 * (prof["paper_gflops"] / ref - 1)))
    exit_blocks = {e["block"]: e["index"] for e in prof["exit_points"]}
    click.echo("\nblock  GMACs    cum%   ch    stride  exit")
    cum = 0.0
    for b in prof["blocks"]:
        cum += b["gmacs"]
        mark = exit_label(exit_blocks[b["index"]]) if b["index"] in exit_blocks else ""
        click.echo("{:>5}  {:7.3f}  {:5.1f}  {:>5}  {:>6}  {}".format(
            b["index"], b["gmacs"], 100 * cum / prof["backbone_gmacs"], b["out_channels"], b["stride"], mark))
    click.echo("final exit after block {}".format(prof["blocks"][-1]["index"]))
    click.echo("\nexit  block  stride  ch     cum%   arch GMACs min / median / max (64 architectures)")
    for e in prof["exit_points"]:
        g = sorted(a["gmacs"] for a in prof["exit_archs"] if a["exit"] == e["index"])
        click.echo("{:<4}  {:>5}  {:>6}  {:>5}  {:5.1f}   {:.4f} / {:.4f} / {:.4f}".format(
            exit_label(e["index"]), e["block"], e["stride"], e["channels"], 100 * e["cum_gmacs_fraction"],
            g[0], g[len(g) // 2], g[-1]))
    if archs:
        click.echo("\nexit  arch       crm  blocks  rdi  head  GMACs")
        for a in prof["exit_archs"]:
            click.echo("{:<4}  {}  /{:<2}  {:>6}  {:>3}  {:>4}  {:.4f}".format(
                exit_label(a["exit"]), a["name"], 2 ** a["crm"], a["blocks"], a["rdi"], ("FCN", "DLB")[a["head"]],
                a["gmacs"]))
