"""Fusing consecutive ONNX graphs into one, for the chain's ONNX Runtime backend.

Why: on a CPU, ONNX Runtime's fastest layout (NCHWc, optimisation level "all") is converted from and back to
NCHW at every graph boundary. Measured on cpu-mbv2 at 128x128 with 2 threads: the chained final-only path
(3 segments + final) took 1.15-1.20x the monolithic graph, all of it at the boundaries; without NCHWc both
ran 2x slower. A boundary is only needed where the chain reads a feature: at a *selected* exit. So the
backend runs each stretch of segments between selected exits (and the stretch before the final head) as one
fused graph. Fusing is exact: the same nodes and weights, wired output to input.
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
