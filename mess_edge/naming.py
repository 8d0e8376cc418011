"""How exits are named to people: one 0-based numbering everywhere (search, eval, run, demo).

Exit point k (0-based, the ``exit`` field of instance.json and the manifest) is ``e{k}``, as in the head graphs'
names ``head_e{k}_c{crm}b{blocks}r{rdi}h{head}``; the network's own last exit is ``final``.
"""

import re

_HEAD = re.compile(r"^head_e(\d+)_(.+)$")


def exit_label(exit_or_graph):
    """0 -> "e0"; "head_e1_c0b0r0h0" -> "e1 c0b0r0h0"; "final" -> "final"; any other name as it is."""
    if isinstance(exit_or_graph, int) and not isinstance(exit_or_graph, bool):
        return "e{}".format(exit_or_graph)
    m = _HEAD.match(str(exit_or_graph))
    return "e{} {}".format(m.group(1), m.group(2)) if m else str(exit_or_graph)


def histogram_text(counts):
    """{"head_e1_c0b0r0h0": 181, "final": 319} -> "e1 c0b0r0h0 181 (36.2%), final 319 (63.8%)": early exits
    in exit order, then final; no Python reprs in what a person reads."""
    total = float(sum(counts.values())) or 1.0

    def order(name):
        m = _HEAD.match(str(name))
        return (0, int(m.group(1)), str(name)) if m else (1, 0, str(name))
    return ", ".join("{} {} ({:.1%})".format(exit_label(k), v, v / total) for k, v in
                     sorted(counts.items(), key=lambda kv: order(kv[0]))) or "none"
