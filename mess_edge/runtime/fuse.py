"""Fusing consecutive ONNX graphs into one, for the chain's ONNX Runtime backend.

Why: on a CPU, ONNX Runtime's fastest layout (NCHWc, optimisation level "all") is converted from and back to
NCHW at every graph boundary. Measured on cpu-mbv2 at 128x128 with 2 threads: the chained final-only path
(3 segments + final) took 1.15-1.20x the monolithic graph, all of it at the boundaries; without NCHWc both
ran 2x slower. A boundary is only needed where the chain reads a feature: at a *selected* exit. So the
backend runs each stretch of segments between selected exits (and the stretch before the final head) as one
fused graph. Fusing is exact: the same nodes and weights, wired output to input.

The backbone graphs are numbered 0..N: segment k is graph k, the final graph is graph N. ``backbone_stretches``
says which stretches a chain runs; the chain backend and the profile (which times every stretch a chain may
run, lut.json "stretches") both fuse them with ``fuse_graphs``, so the table times exactly what runs.
"""

from mess_edge.errors import MessError


def _rename(graph, old, new):
    """Rename tensor ``old`` to ``new`` wherever it appears: node inputs and outputs, graph inputs and outputs."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def fuse_chain(paths, input_names, output_name):
    """One ONNX model (bytes) running the graphs at ``paths`` in order.

    ``input_names[j]`` is graph j's feature input (graph 0's is kept as the fused model's input); each graph
    before the last must output "feat". The fused model's single output is ``output_name`` of the last graph
    ("feat" for a stretch of segments, "labels" for a stretch ending in the final graph).
    """
    import onnx
    from onnx import compose

    try:
        # Every graph's names get a prefix (graph 0 keeps its input name): no tensor name can collide.
        fused = compose.add_prefix(onnx.load(paths[0]), "f0_", rename_inputs=False)
        prev = "f0_feat"
        for j, path in enumerate(paths[1:], start=1):
            last = j == len(paths) - 1
            out = "f{}_{}".format(j, output_name if last else "feat")
            nxt = compose.add_prefix(onnx.load(path), "f{}_".format(j))
            fused = compose.merge_models(fused, nxt, io_map=[(prev, "f{}_{}".format(j, input_names[j]))],
                                         outputs=[out])
            prev = out
        _rename(fused.graph, prev, output_name)
        # Older onnx releases (e.g. 1.17 on Python 3.8) prefix graph inputs despite rename_inputs=False.
        if fused.graph.input[0].name != input_names[0]:
            _rename(fused.graph, fused.graph.input[0].name, input_names[0])
    except Exception as e:  # onnx raises ValueError / checker errors of several types
        raise MessError("cannot fuse graphs {}: {}; run them unfused (--no-fuse)".format(
            ", ".join(paths), str(e).splitlines()[0][:200]))
    return fused.SerializeToString()


def backbone_stretches(n_segments, read):
    """[(first, last)] the backbone graphs run as, in order, when the chain reads the features of the exit
    points ``read``: a cut after each read point; the last stretch ends in the final graph (graph N)."""
    out, start = [], 0
    for point in sorted(set(read)):
        out.append((start, point))
        start = point + 1
    return out + [(start, n_segments)]


def fuse_graphs(engines, names):
    """(model bytes, its feature input name): engine graphs ``names`` (consecutive segments, possibly ending in
    "final") fused into one, exactly as the chain's ORT backend runs them. MessError if they cannot be fused."""
    graphs = [engines.graph(n) for n in names]
    inputs = [g["inputs"][0]["name"] for g in graphs]
    out = "labels" if graphs[-1]["role"] == "final" else "feat"
    return fuse_chain([engines.path(n) for n in names], inputs, out), inputs[0]
