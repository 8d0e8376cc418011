"""Configuration search (paper sec. 5.1, Table 1, eqs. 4-6): memo + cost table in, instance out. numpy only.

    memo = load_memo("calibrate/m/memo.npz")
    costs = costs_from_manifest(manifest, memo)          # or costs_from_lut(lut, manifest, memo)
    result = search(memo, costs, "input-dependent", Objective(max_drop=0.01))
    simulate(test_memo, instance_dict(result, memo, costs))["miou"]
"""

from mess_edge.search.costs import (CostTable, cost_anytime, cost_budgeted, cost_final_only, cost_input_dependent,
                                    cost_upsample, costs_from_lut, costs_from_manifest, make_cost_table)
from mess_edge.search.optimizer import DesignPoints, Objective, SearchResult, search
from mess_edge.search.inputs import SearchInputs, load_search_inputs
from mess_edge.search.instance import instance_dict, simulate
from mess_edge.search.memo import Memo, load_memo, miou_from_stats
from mess_edge.search.space import SETTINGS, Config, Grid

__all__ = [
    "Config", "CostTable", "DesignPoints", "Grid", "Memo", "Objective", "SETTINGS", "SearchInputs", "SearchResult",
    "cost_anytime", "cost_budgeted", "cost_final_only", "cost_input_dependent", "cost_upsample", "costs_from_lut",
    "costs_from_manifest", "instance_dict", "load_memo", "load_search_inputs", "make_cost_table", "miou_from_stats",
    "search", "simulate",
]
