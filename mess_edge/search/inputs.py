"""Reading the search's inputs and refusing ones that do not belong together (device side: numpy only).

A memo, a manifest and a latency table belong together when they come from one checkpoint (memo and manifest
carry its sha256), the table was profiled from engines built from that very manifest (lut.manifest_sha256 is
the sha256 of the manifest file), and they agree on the input size, the class count, the exit points and the
heads. Anything else would pair the accuracy of one network with the cost of another, so it is refused.
"""

from dataclasses import dataclass
from typing import Optional

from mess_edge.artifacts import read_json, sha256_file
from mess_edge.schema import check_manifest
from mess_edge.errors import MessError
from mess_edge.search.costs import costs_from_lut, costs_from_manifest
from mess_edge.search.memo import load_memo

MANIFEST_FORMAT = "mess-edge-manifest/1"
LUT_FORMAT = "mess-edge-lut/1"


@dataclass(frozen=True, eq=False)
class SearchInputs:
    """A memo with its cost table, checked to belong together, and the checksums an instance records."""

    memo: object  # Memo
    costs: object  # CostTable
    manifest: dict
    memo_sha256: str
    manifest_sha256: str
    lut_sha256: Optional[str]  # None for the MAC cost model
    checkpoint_sha256: str


def _short(value):
    return str(value)[:12] if value is not None else "none"


def _mismatch(a_what, a_path, b_what, b_path, got, expected, hint):
    return MessError("{} {} and {} {} do not belong together: got {}; expected {}; try {}".format(
        a_what, a_path, b_what, b_path, got, expected, hint))


def check_memo_manifest(memo, manifest, memo_path="memo", manifest_path="manifest"):
    """Refuse a memo and a manifest from different checkpoints, inputs, classes, exit points or heads."""
    meta = memo.meta
    hint = "calibrating and exporting the same checkpoint"
    pairs = [
        ("checkpoint_sha256", meta.get("checkpoint_sha256"), manifest.get("checkpoint_sha256"), _short),
        ("input_hw", meta.get("input_hw"), manifest.get("input_hw"), list),
        ("num_classes", memo.n_classes, manifest.get("num_classes"), int),
        ("exit points", len(meta.get("exit_points", manifest.get("exit_points", []))),
         len(manifest.get("exit_points", [])), int),
    ]
    for name, a, b, show in pairs:
        if a is None or b is None or show(a) != show(b):
            raise _mismatch("memo", memo_path, "manifest", manifest_path,
                            "{} {} in the memo and {} in the manifest".format(
                                name, None if a is None else show(a), None if b is None else show(b)),
                            "the same {}".format(name), hint)
    n = len(manifest.get("exit_points", []))
    if memo.n_heads and int(memo.head_exit.max()) >= n:
        raise _mismatch("memo", memo_path, "manifest", manifest_path,
                        "a head at exit point {} and {} exit points".format(int(memo.head_exit.max()), n),
                        "heads at exit points 0..{}".format(n - 1), hint)


def check_lut_manifest(lut, manifest, manifest_sha256, lut_path="lut", manifest_path="manifest"):
    """Refuse a latency table profiled from engines of another manifest, checkpoint or input size."""
    hint = "mess-edge build and profile on engines built from this manifest"
    if lut.get("format") != LUT_FORMAT:
        raise MessError("lut {} has format {!r}; expected {!r}; try {}".format(lut_path, lut.get("format"),
                                                                             LUT_FORMAT, hint))
    pairs = [
        ("manifest_sha256", lut.get("manifest_sha256"), manifest_sha256, "the sha256 of the manifest file"),
        ("checkpoint_sha256", lut.get("checkpoint_sha256"), manifest.get("checkpoint_sha256"), "the same checkpoint"),
        ("input size", lut.get("input_size"), manifest.get("input_hw"), "the same input size"),
    ]
    for name, a, b, expected in pairs:
        if a is None or b is None or (list(a) if isinstance(a, list) else a) != (list(b) if isinstance(b, list) else b):
            show = list if name == "input size" else _short
            raise _mismatch("lut", lut_path, "manifest", manifest_path,
                            "{} {} in the lut and {} for the manifest".format(
                                name, None if a is None else show(a), None if b is None else show(b)),
                            expected, hint)


def load_manifest(path):
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise MessError("manifest {} has format {!r}; expected {!r}; try mess-edge export".format(
            path, manifest.get("format") if isinstance(manifest, dict) else None, MANIFEST_FORMAT))
    return check_manifest(manifest, path)


def load_search_inputs(memo_path, manifest_path, lut_path=None):
    """Load memo + manifest (+ lut), check they belong together, build the cost table (latency with a lut)."""
    memo = load_memo(memo_path)
    manifest = load_manifest(manifest_path)
    check_memo_manifest(memo, manifest, memo_path, manifest_path)
    manifest_sha = sha256_file(manifest_path)
    where = "memo {} and manifest {}".format(memo_path, manifest_path)
    lut_sha = None
    if lut_path is None:
        costs = costs_from_manifest(manifest, memo, where)
    else:
        lut = read_json(lut_path, "lut")
        if not isinstance(lut, dict):
            raise MessError("lut {} is not a JSON object; expected a lut.json from mess-edge profile".format(lut_path))
        check_lut_manifest(lut, manifest, manifest_sha, lut_path, manifest_path)
        costs = costs_from_lut(lut, manifest, memo, "lut {} and manifest {}".format(lut_path, manifest_path))
        lut_sha = sha256_file(lut_path)
    return SearchInputs(memo, costs, manifest, sha256_file(memo_path), manifest_sha, lut_sha,
                        str(manifest.get("checkpoint_sha256")))
