"""Cost model of the search: Table 1's formulas, and the cost table they read (device side: numpy only).

Segment k is the backbone from exit point k-1 (or the image, k = 0) to exit point k; "final" is the graph that
runs the rest of the backbone after the last exit point plus the final head (and, in current exports, its own
upsample to labels); an upsample graph (bilinear + argmax to the input size) runs once per image after the
early exit that image takes. Costs are GMACs from the manifest ("macs") or mean milliseconds from a
lut.json ("latency"): an expected cost is a mean, and a median prices a skewed timing low. A lut's measured
per-frame overhead of the chained runtime is added per exit taken (costs_from_lut).

Table 1 reads the backbone through ``span``: the N segments and the final graph are backbone graphs 0..N, and
span[a, b] is the cost of graphs a..b-1 run in one go, i.e. cost(b_{K_(n-1):K_n}) between two selected exits.
By default a span is the sum of its pieces; a latency table may hold *stretches*, spans measured as the ONE
fused graph the ONNX Runtime chain runs between two selected exits (runtime/fuse.py), which is what the chain
really pays: no layout conversion at the folded boundaries, and caches as that graph leaves them.

The Table 1 functions below exclude the upsample; ``cost_upsample`` adds it. Sums are plain left-to-right
loops (not ``sum``, which is compensated from Python 3.12) so the vectorised search can repeat them bitwise.
"""

from dataclasses import dataclass

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.memo import ARCH_KEYS, head_graph_name

COST_MODELS = {"macs": "gmacs", "latency": "ms"}


def _add(values):
    total = 0.0
    for v in values:
        total += float(v)
    return total


def segment_sum(segment, start, stop):
    """Cost of segments start..stop-1 (backbone from exit point start-1, or the image, to exit point stop-1)."""
    return _add(segment[start:stop])


def backbone_spans(segment, final, stretches=()):
    """float64 [N+2, N+2] span: span[a, b] (0 <= a <= b <= N+1) = cost of backbone graphs a..b-1 run in one go,
    graph k < N being segment k and graph N the final graph; zero below the diagonal.

    Each span is the sum of its pieces (segment_sum, plus ``final`` when it ends in the final graph), except
    that ``stretches``, ((first, last, cost), ...), each replace span[first, last + 1]: graphs first..last
    (inclusive) measured as one fused graph.
    """
    n = len(segment)
    span = np.zeros((n + 2, n + 2))
    for a in range(n + 1):
        for b in range(a, n + 2):
            span[a, b] = segment_sum(segment, a, b) if b <= n else segment_sum(segment, a, n) + final
    for first, last, cost in stretches:
        span[first, last + 1] = cost
    return span


def cost_final_only(span):
    """Table 1, final-only: cost(b_1:K_N) + cost(final exit): every backbone graph, the final one last."""
    return float(span[0, -1])


def cost_budgeted(span, n, head_n):
    """Table 1, budgeted up to exit point n (0-based): cost(b_1:K_n) + cost(head at n)."""
    return float(span[0, n + 1]) + head_n


def cost_anytime(span, exits):
    """Table 1, anytime: the whole backbone, the final exit and every selected head.

    exits: [(exit point, head cost)] in backbone order (the points cut the backbone into the spans it runs as).
    """
    total, prev = 0.0, -1
    for n, head_cost in exits:
        total += span[prev + 1, n + 1] + head_cost
        prev = n
    return float(total + span[prev + 1, -1])


def cost_input_dependent(span, exits, remaining):
    """Table 1, input-dependent: sum over selected exits n of p_{n-1} (backbone from the previous exit + head_n).

    exits: [(exit point, head cost)] in backbone order; remaining: [p_1..p_k], the fraction of images still
    running after each selected exit (p_k reaches the final exit, which is added last); p_0 = 1.
    """
    total, p_prev, prev = 0.0, 1.0, -1
    for (n, head_cost), p in zip(exits, remaining):
        total += p_prev * (span[prev + 1, n + 1] + head_cost)
        p_prev, prev = p, n
    return float(total + p_prev * span[prev + 1, -1])


def cost_upsample(taken, upsample):
    """Upsample cost per image: sum of (fraction of images taking exit j) * (that exit's upsample cost)."""
    total = 0.0
    for q, u in zip(taken, upsample):
        total += q * u
    return total


@dataclass(frozen=True, eq=False)
class CostTable:
    """Cost of every piece of the overprovisioned network, aligned with a memo's heads.

    ``span`` (derived, float64 [N+2, N+2]) is the backbone as Table 1 reads it: see backbone_spans.
    """

    model: str  # "macs" or "latency"
    segment: np.ndarray  # float64 [N], segment k (N exit points)
    head: np.ndarray  # float64 [H], memo head h
    final: float  # rest of the backbone + final head
    upsample: np.ndarray  # float64 [H+1], paid once per image after the exit it takes: head h (index H: the final
    # exit); its upsample graph plus, from a lut, the chain's per-frame overhead on that path (``overhead``)
    head_graphs: tuple = ()  # [H] head graph names (default: the manifest naming rule)
    stretches: tuple = ()  # ((first, last, cost), ...): backbone graphs first..last (N = final) as one fused graph
    overhead: tuple = ()  # [H+1] or empty: chain overhead per image leaving at head h / the final exit, already in upsample

    def __post_init__(self):
        if self.model not in COST_MODELS:
            raise MessError("got cost model {!r}; expected one of {}".format(self.model, ", ".join(COST_MODELS)))
        if len(self.upsample) != len(self.head) + 1:
            raise MessError("got {} upsample costs for {} heads; expected H+1".format(len(self.upsample), len(self.head)))
        n = len(self.segment)
        for first, last, _ in self.stretches:
            if not 0 <= first < last <= n:
                raise MessError("got a stretch of backbone graphs {}..{}; expected 0 <= first < last <= {} (graph {} "
                                "is the final graph)".format(first, last, n, n))
        arrays = [self.segment, self.head, self.upsample, [self.final], [c for _, _, c in self.stretches]]
        if any(not np.all(np.isfinite(np.asarray(a, dtype=float))) or np.any(np.asarray(a, dtype=float) < 0)
               for a in arrays):
            raise MessError("got a negative or non-finite cost in the {} table; expected costs >= 0".format(self.model))
        object.__setattr__(self, "span", backbone_spans(self.segment, self.final, self.stretches))

    @property
    def unit(self):
        return COST_MODELS[self.model]

    def final_only(self):
        """Final-only cost including its upsample."""
        return cost_final_only(self.span) + self.upsample[-1]


def make_cost_table(model, segment, head, final, upsample=None, head_graphs=(), stretches=(), overhead=()):
    """CostTable from plain sequences; upsample defaults to 0 for every exit (scalar = the same for all);
    stretches: ((first, last, cost), ...) as in CostTable."""
    head = np.asarray(head, dtype=np.float64)
    if upsample is None or np.ndim(upsample) == 0:
        upsample = np.full(len(head) + 1, 0.0 if upsample is None else float(upsample))
    stretches = tuple((int(a), int(b), float(c)) for a, b, c in stretches)
    return CostTable(model, np.asarray(segment, dtype=np.float64), head, float(final),
                     np.asarray(upsample, dtype=np.float64), tuple(head_graphs), stretches,
                     tuple(float(v) for v in overhead))


def _arch_key(arch):
    if not isinstance(arch, dict):
        return None
    return tuple(int(arch.get(k, -1)) for k in ARCH_KEYS)


def _graphs(manifest, role):
    return [g for g in manifest.get("graphs", []) if g.get("role") == role]


def _output_hw(graph):
    for o in graph.get("outputs", []):
        if o.get("name") == "logits":
            return tuple(o["shape"][-2:])
    return None


def _upsample_for(graph, upsamples, where):
    """The upsample graph whose input resolution matches ``graph``'s logits (one graph serves all if alone).

    None when nothing is upsampled after ``graph``: no upsample graphs, or ``graph`` already ends in "labels"
    (the final graph, which runs its own upsample, so its cost is already in the final's).
    """
    if not upsamples or any(o.get("name") == "labels" for o in graph.get("outputs", [])):
        return None
    hw = _output_hw(graph)
    for u in upsamples:
        if hw is not None and tuple(u["inputs"][0]["shape"][-2:]) == hw:
            return u
    if len(upsamples) == 1:
        return upsamples[0]
    raise MessError("{}: got no upsample graph for {}'s logits of size {}; expected one per output resolution; "
                    "try re-exporting".format(where, graph.get("name"), hw))


def _manifest_pieces(manifest, memo, where):
    """(segments by index, head graph per memo head, final graph, upsample graph per head + final)."""
    n = len(manifest.get("exit_points", []))
    segments = {g.get("index"): g for g in _graphs(manifest, "segment")}
    missing = [k for k in range(n) if k not in segments]
    finals = _graphs(manifest, "final")
    if missing or len(finals) != 1:
        raise MessError("{}: got segments {} and {} final graph(s); expected segment_0..segment_{} and one final; "
                        "try re-exporting".format(where, sorted(k for k in segments if k is not None), len(finals), n - 1))
    by_key = {(g.get("exit"), _arch_key(g.get("arch"))): g for g in _graphs(manifest, "head")}
    heads = []
    for h in range(memo.n_heads):
        key = (int(memo.head_exit[h]), tuple(int(v) for v in memo.head_arch[h]))
        if key not in by_key:
            raise MessError("{}: got memo head {} absent from the manifest; expected every memo head exported; "
                            "try exporting the checkpoint the memo was calibrated from".format(where, memo.head_label(h)))
        heads.append(by_key[key])
    ups = _graphs(manifest, "upsample")
    upsample = [_upsample_for(g, ups, where) for g in heads + finals]
    return [segments[k] for k in range(n)], heads, finals[0], upsample


def _cost(value, key, graph, where, fix):
    """A cost read from a table: a finite number >= 0, else MessError naming the file, the graph and the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise MessError("{}: got {} {!r} for graph {}; expected a finite number >= 0; try {}".format(
            where, key, value, graph, fix))
    return float(value)


def _gmacs(graph, where):
    return _cost(graph.get("gmacs"), "gmacs", graph.get("name"), where, "mess-edge export again")


def costs_from_manifest(manifest, memo, where="manifest"):
    """MAC cost table (GMACs) of ``memo``'s heads from the manifest's per-graph "gmacs"."""
    segments, heads, final, upsample = _manifest_pieces(manifest, memo, where)
    return make_cost_table(
        "macs", [_gmacs(g, where) for g in segments], [_gmacs(g, where) for g in heads], _gmacs(final, where),
        [0.0 if u is None else _gmacs(u, where) for u in upsample], [g.get("name") for g in heads])


def costs_from_lut(lut, manifest, memo, where="lut"):
    """Latency cost table (mean ms) of ``memo``'s heads from a lut.json profiled from ``manifest``'s graphs.

    The chain's measured per-frame overhead (lut "frame_overhead_ms") is paid once per image at the exit it
    takes, like the upsample: it is added to ``upsample`` (per exit taken), so every configuration's expected
    cost, final-only included, carries it; ``overhead`` keeps it apart for reports."""
    segments, heads, final, upsample = _manifest_pieces(manifest, memo, where)
    entries = {}
    for e in lut.get("segments", []):
        entries[e.get("name")] = entries[("segment", e.get("index"))] = e
    for e in lut.get("heads", []):
        entries[e.get("name")] = entries[("head", e.get("exit"), _arch_key(e.get("arch")))] = e
    for key in ("final", "monolithic"):
        if isinstance(lut.get(key), dict):
            entries[lut[key].get("name", key)] = lut[key]
    ups = lut.get("upsample")
    for e in lut.get("upsamples") or (ups if isinstance(ups, list) else []):  # per upsample graph, by name
        entries[e.get("name")] = e

    def ms(graph):
        entry = entries.get(graph["name"])
        if entry is None and graph["role"] == "segment":
            entry = entries.get(("segment", graph.get("index")))
        if entry is None and graph["role"] == "head":
            entry = entries.get(("head", graph.get("exit"), _arch_key(graph.get("arch"))))
        if entry is None and graph["role"] == "upsample" and isinstance(ups, dict):
            entry = ups  # the spec's single upsample entry serves every resolution
        if entry is None or entry.get("median_ms", entry.get("mean_ms")) is None:
            raise MessError("{}: got no mean_ms for graph {}; expected every segment, memo head, final and "
                            "upsample profiled; try mess-edge profile again".format(where, graph["name"]))
        return _mean(entry, graph["name"], where)

    overhead = _lut_overhead(lut, [int(h) for h in memo.head_exit], where)
    upsample = [0.0 if u is None else ms(u) for u in upsample]
    return make_cost_table(
        "latency", [ms(g) for g in segments], [ms(g) for g in heads], ms(final),
        [u + o for u, o in zip(upsample, overhead)], [g.get("name") for g in heads],
        _lut_stretches(lut, [g["name"] for g in segments + [final]], where), overhead)


def _mean(entry, name, where):
    """An entry's mean_ms: an expected cost is a mean (tables before mean pricing lack it: re-profile)."""
    if entry.get("mean_ms") is None:
        raise MessError("{}: got a latency table without mean_ms (graph {}); expected the mean beside median_ms, "
                        "which the search prices expected costs with; try re-running mess-edge profile".format(
                            where, name))
    return _cost(entry["mean_ms"], "mean_ms", name, where, "mess-edge profile again")


def _lut_overhead(lut, head_exit, where):
    """float [H+1]: the chain's measured overhead per frame leaving at each memo head's exit point, then at the
    final exit (the lut's "frame_overhead_ms", profile/overhead.py); zeros when the table has none."""
    over = lut.get("frame_overhead_ms")
    if over is None:
        return [0.0] * (len(head_exit) + 1)
    exits = over.get("exits") if isinstance(over, dict) else None
    if not isinstance(exits, dict) or any(str(e) not in exits for e in head_exit):
        raise MessError("{}: got frame_overhead_ms {!r}; expected {{\"final\": ms, \"exits\": {{exit point: ms}}}} "
                        "covering exit points {}; try mess-edge profile again".format(where, over, sorted(set(head_exit))))
    return ([_cost(exits[str(e)], "frame_overhead_ms", "exit {}".format(e), where, "mess-edge profile again")
             for e in head_exit] + [_cost(over.get("final"), "frame_overhead_ms", "final", where,
                                          "mess-edge profile again")])


def _lut_stretches(lut, names, where):
    """((first, last, mean ms), ...) of the lut's optional "stretches" (absent in older tables: none).

    ``names``: the backbone graphs in order, the final graph last. An entry's "graphs", when given, must be
    names[first..last]: a table profiled from another export must not lend its stretches to this one.
    """
    out = []
    for e in lut.get("stretches") or []:
        first, last = e.get("from"), e.get("to")
        if not (isinstance(first, int) and isinstance(last, int) and 0 <= first < last < len(names)
                and isinstance(e.get("median_ms", e.get("mean_ms")), (int, float))):
            raise MessError("{}: got stretch {!r}; expected integers 0 <= from < to <= {} and a mean_ms; try "
                            "mess-edge profile again".format(where, {k: e.get(k) for k in ("from", "to", "mean_ms")},
                                                             len(names) - 1))
        if "graphs" in e and list(e["graphs"]) != names[first:last + 1]:
            raise MessError("{}: got stretch {}..{} of graphs {}; expected {}; try mess-edge profile again on these "
                            "engines".format(where, first, last, e["graphs"], names[first:last + 1]))
        out.append((first, last, _mean(e, "stretch {}..{}".format(first, last), where)))
    return out


def head_graph_names(table, memo):
    """[H] head graph names: the table's, else the manifest naming rule."""
    if len(table.head_graphs) == memo.n_heads:
        return list(table.head_graphs)
    return [head_graph_name(memo.head_exit[h], memo.head_arch[h]) for h in range(memo.n_heads)]
