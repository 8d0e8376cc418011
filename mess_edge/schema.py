"""Schema checks on read for the JSON artifacts (device side: no torch, no numpy).

Every artifact a stage reads (instance.json, lut.json, manifest.json, the engine sidecar engine.json) is checked
field by field before use: types, ranges (thresholds in [0, 1], costs finite and >= 0), required fields and the
provenance hashes that tie it to the artifacts it came from. A failure is one MessError naming the file and the
field ("instance a/instance.json: exits[0].th_img got 'high'; expected a number in [0, 1]; try ..."), which the CLI
prints on one line with exit status 2. The formats are documented in docs/artifacts.md.
"""

import math

from mess_edge.errors import MessError

_MISSING = object()


class Fields(object):
    """Reads fields of one artifact, raising MessError naming ``what`` ``path``, the field and ``fix``."""

    def __init__(self, what, path, fix):
        self.what, self.path, self.fix = what, path, fix

    def fail(self, field, got, expected):
        shown = "nothing (missing)" if got is _MISSING else repr(got)[:80]
        raise MessError("{} {}: {} got {}; expected {}; try {}".format(self.what, self.path, field, shown, expected,
                                                                      self.fix))

    def get(self, d, key, field, kinds, expected, required=True, default=None):
        """``d[key]`` if it is an instance of ``kinds`` (None allowed when not required)."""
        value = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
        if value is _MISSING or value is None:
            if required:
                self.fail(field, value, expected)
            return default
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            self.fail(field, value, expected)
        return value

    def obj(self, value, field):
        if not isinstance(value, dict):
            self.fail(field, value, "an object")
        return value

    def number(self, d, key, field, lo=0.0, hi=None, required=True, default=None):
        """A finite number in [lo, hi] (either bound None: open)."""
        span = "a finite number >= {:g}".format(lo) if hi is None else "a number in [{:g}, {:g}]".format(lo, hi)
        value = self.get(d, key, field, (int, float), span, required, default)
        if value is default and not required:
            return value
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(field, value, span)
        return float(value)

    def integer(self, d, key, field, lo=0, required=True):
        value = self.get(d, key, field, (int,), "an integer >= {}".format(lo), required)
        if value is not None and value < lo:
            self.fail(field, value, "an integer >= {}".format(lo))
        return value

    def sha256(self, d, key, field, required=True):
        value = self.get(d, key, field, (str,), "a sha256 (64 hex digits)", required)
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            self.fail(field, value, "a sha256 (64 hex digits)")
        return value


def check_instance(inst, path, settings):
    """Validate an instance.json dict read from ``path`` (format checked by the caller)."""
    f = Fields("instance", path, "re-running mess-edge search ... --out {}".format(path))
    setting = f.get(inst, "setting", "setting", (str,), "one of " + ", ".join(settings))
    if setting not in settings:
        f.fail("setting", setting, "one of " + ", ".join(settings))
    f.get(inst, "final", "final", (bool,), "true or false (whether the final exit runs)")
    exits = f.get(inst, "exits", "exits", (list,), "a list of exits (may be empty)")
    for j, e in enumerate(exits):
        where = "exits[{}]".format(j)
        f.obj(e, where)
        f.integer(e, "exit", where + ".exit")
        f.get(e, "graph", where + ".graph", (str,), "a head graph name like head_e0_c1b1r0h0")
        f.get(e, "arch", where + ".arch", (dict,), "an object (crm, blocks, rdi, head)", required=False)
        f.number(e, "th_img", where + ".th_img", 0.0, 1.0, required=setting == "input-dependent")
    th_pix_needed = setting == "input-dependent" and exits and inst.get("policy", "edge") != "mean"
    f.number(inst, "th_pix", "th_pix", 0.0, 1.0, required=bool(th_pix_needed))
    f.get(inst, "policy", "policy", (str,), "edge, raw or mean", required=False)
    f.sha256(inst, "manifest_sha256", "manifest_sha256")
    f.sha256(inst, "checkpoint_sha256", "checkpoint_sha256", required=False)
    return inst


def check_lut_graph(f, name, entry, key="median_ms"):
    """One timed entry of a latency table: a finite latency >= 0 in ms."""
    f.obj(entry, "graphs.{}".format(name))
    return f.number(entry, key, "graphs.{}.{}".format(name, key), 0.0)


def check_manifest(manifest, path):
    """Validate the export's manifest.json (format checked by the caller): graphs, shapes, costs, hashes."""
    f = Fields("manifest", path, "re-exporting: mess-edge export CKPT --out FOLDER")
    graphs = f.get(manifest, "graphs", "graphs", (list,), "a list of graph entries")
    for j, g in enumerate(graphs):
        where = "graphs[{}]".format(j)
        f.obj(g, where)
        for key in ("name", "role", "file"):
            f.get(g, key, "{}.{}".format(where, key), (str,), "a string")
        f.sha256(g, "sha256", where + ".sha256")
        f.number(g, "gmacs", where + ".gmacs", 0.0)
        for key in ("inputs", "outputs"):
            for k, io in enumerate(f.get(g, key, "{}.{}".format(where, key), (list,), "a list of tensors")):
                f.obj(io, "{}.{}[{}]".format(where, key, k))
                f.get(io, "name", "{}.{}[{}].name".format(where, key, k), (str,), "a tensor name")
                f.get(io, "shape", "{}.{}[{}].shape".format(where, key, k), (list,), "a list of dimensions")
    # The device side needs these (the search does not): typed when present, required by the engine loader.
    hw = f.get(manifest, "input_hw", "input_hw", (list,), "[height, width] in pixels", required=False)
    if hw is not None and (len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                   for v in hw)):
        f.fail("input_hw", hw, "[height, width] in pixels")
    f.integer(manifest, "num_classes", "num_classes", 2, required=False)
    f.get(manifest, "normalization", "normalization", (dict,), "an object (mean, std, order, scale)", required=False)
    f.get(manifest, "exit_points", "exit_points", (list,), "a list of exit points")
    f.sha256(manifest, "checkpoint_sha256", "checkpoint_sha256")
    return manifest


def check_sidecar(sidecar, path, backends):
    """Validate an engine folder's engine.json (format checked by the caller)."""
    f = Fields("engine sidecar", path, "rebuilding: mess-edge build ONNX_DIR --out FOLDER")
    backend = f.get(sidecar, "backend", "backend", (str,), "one of " + ", ".join(backends))
    if backend not in backends:
        f.fail("backend", backend, "one of " + ", ".join(backends))
    f.get(sidecar, "precision", "precision", (str,), "fp32, fp16 or int8")
    f.get(sidecar, "providers", "providers", (list,), "a list of providers like ['cpu']", required=False)
    device = f.get(sidecar, "device", "device", (dict,), "an object with the device id")
    f.get(device, "id", "device.id", (str,), "the device id the engines were built for")
    f.get(sidecar, "versions", "versions", (dict,), "an object of library versions")
    f.sha256(sidecar, "manifest_sha256", "manifest_sha256")
    for j, e in enumerate(f.get(sidecar, "graphs", "graphs", (list,), "a list of built graphs")):
        where = "graphs[{}]".format(j)
        f.obj(e, where)
        for key in ("name", "file", "precision"):
            f.get(e, key, "{}.{}".format(where, key), (str,), "a string")
        f.sha256(e, "sha256", where + ".sha256")
    return sidecar
