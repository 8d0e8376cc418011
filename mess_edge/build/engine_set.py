"""An engine folder on the read side: ``load_engines`` checks it belongs here, ``EngineSet`` opens its graphs.

The folder (written by build.build_engines) holds one engine per graph, a copy of the export's manifest.json
and the sidecar engine.json (backend, versions, device, precision, shapes, checksums, the rebuild command).
Engines are not portable: a folder built on another device, with another version of the backend library,
or whose files changed since the build is refused with the command that rebuilds it here.
"""

import os

from mess_edge.artifacts import read_json, sha256_file
from mess_edge.errors import MessError
from mess_edge.runtime.device import describe_device, library_versions
from mess_edge.schema import check_sidecar

FORMAT = "mess-edge-engines/1"
SIDECAR = "engine.json"
MANIFEST = "manifest.json"
BACKEND_LIBRARY = {"ort": "onnxruntime", "trt": "tensorrt"}  # backend -> the library whose version must match
# The sidecar fields the readers use, with their JSON types; build_engines writes more (docs/artifacts.md).
SIDECAR_FIELDS = (("backend", str), ("precision", str), ("device", dict), ("versions", dict),
                  ("manifest_sha256", str), ("graphs", list))
GRAPH_FIELDS = (("name", str), ("file", str), ("sha256", str), ("precision", str))
_JSON_TYPE = {str: "a string", dict: "an object", list: "a list"}


class EngineSet(object):
    """A validated engine folder: ``sidecar``, ``manifest``, ``graphs`` (manifest order, each with the
    sidecar's ``file``/``precision``), and ``runner(name)`` making the backend's Runner for a graph."""

    def __init__(self, engine_dir, sidecar, manifest, device_index=0):
        self.dir, self.sidecar, self.manifest, self.device_index = engine_dir, sidecar, manifest, device_index
        self.backend, self.precision = sidecar["backend"], sidecar["precision"]
        built = {e["name"]: e for e in sidecar["graphs"]}
        self.graphs = []
        missing = [g.get("name") for g in manifest.get("graphs", []) if g.get("name") not in built]
        if missing:
            raise MessError("engine sidecar {}: graphs lacks {}; expected every graph of the manifest built; try "
                            "rebuilding: {}".format(os.path.join(engine_dir, SIDECAR), ", ".join(map(str, missing)),
                                                    sidecar.get("rebuild_command", "mess-edge build")))
        for g in manifest["graphs"]:
            merged = dict(g)
            merged.update(file=built[g["name"]]["file"], precision=built[g["name"]]["precision"])
            self.graphs.append(merged)
        self._by_name = {g["name"]: g for g in self.graphs}

    def graph(self, name):
        if name not in self._by_name:
            raise MessError("got graph {!r}; expected one of {}".format(name, sorted(self._by_name)))
        return self._by_name[name]

    def by_role(self, role):
        """Graphs of one role ("segment", "head", "final", "upsample", "monolithic"); segments by index."""
        found = [g for g in self.graphs if g["role"] == role]
        return sorted(found, key=lambda g: g.get("index", 0)) if role == "segment" else found

    def path(self, name):
        return os.path.join(self.dir, self.graph(name)["file"])

    def runner(self, name, **options):
        """A fresh (inactive) Runner for graph ``name``; ``options`` go to OrtRunner / TrtRunner."""
        if self.backend == "ort":
            from mess_edge.runtime.ort_runner import OrtRunner
            return OrtRunner(self.path(name), providers=self.sidecar["providers"], name=name, **options)
        from mess_edge.runtime.trt_runner import TrtRunner
        options.setdefault("device_index", self.device_index)
        return TrtRunner(self.path(name), name=name, dla_core=self.sidecar.get("dla_core"), **options)


def _check_device(engine_dir, sidecar, backend, rebuild):
    """The engines' device id must be this device's, for the providers they were built with."""
    providers = tuple(sidecar.get("providers") or ("cpu",))
    if backend == "ort" and set(providers) - {"cpu"}:
        from mess_edge.runtime.ort_runner import resolve_providers

        try:  # providers this onnxruntime lacks: this device is the plain CPU one, whatever the sidecar claims
            resolve_providers(providers)
        except MessError:
            providers = ("cpu",)
    here = describe_device(backend, providers, sidecar.get("dla_core"))["id"]
    built = sidecar["device"]["id"]
    if here != built:
        raise MessError("engines in {} were built for device '{}'; got this device '{}'; engines are not "
                        "portable; rebuild here: {}".format(engine_dir, built, here, rebuild))


def engine_files(engines):
    """Every file of an EngineSet's folder that its readers use (sidecar, manifest, engines, timing cache)."""
    names = [SIDECAR, MANIFEST, "timing.cache"] + [e["file"] for e in engines.sidecar["graphs"]]
    return [os.path.join(engines.dir, n) for n in names]


def load_engines(engine_dir, verify_files=True, device_index=0):
    """Open an engine folder after checking that it belongs to this device and these library versions.
    ``device_index``: the CUDA device TensorRT runners use (ignored by ONNX Runtime engines).

    Refuses (MessError with the rebuild command) a folder built on another device, with another version
    of the backend library, or whose files or manifest changed since the build.
    """
    sidecar_path = os.path.join(engine_dir, SIDECAR)
    sidecar = read_json(sidecar_path, "engine sidecar")
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise MessError("got {} with format {!r}; expected {!r}; try mess-edge build ONNX_DIR --out {}".format(
            sidecar_path, sidecar.get("format") if isinstance(sidecar, dict) else None, FORMAT, engine_dir))
    check_sidecar(sidecar, sidecar_path, tuple(BACKEND_LIBRARY))
    rebuild = sidecar.get("rebuild_command", "mess-edge build ONNX_DIR --out {}".format(engine_dir))
    backend = sidecar["backend"]
    _check_device(engine_dir, sidecar, backend, rebuild)
    lib = BACKEND_LIBRARY[backend]
    built_with, here = sidecar["versions"].get(lib), library_versions(backend).get(lib)
    if built_with != here:
        raise MessError("engines in {} were built with {} {}; got {} {} here; rebuild here: {}".format(
            engine_dir, lib, built_with, lib, here, rebuild))
    manifest_path = os.path.join(engine_dir, MANIFEST)
    manifest = read_json(manifest_path, "manifest")
    built = {g["name"] for g in sidecar["graphs"]}
    lacking = [g["name"] for g in manifest.get("graphs", []) if g.get("name") not in built]
    if lacking:
        raise MessError("{} has no engine for graph(s) {} of {}; rebuild: {}".format(
            os.path.join(engine_dir, SIDECAR), ", ".join(lacking[:3]), manifest_path, rebuild))
    if sha256_file(manifest_path) != sidecar["manifest_sha256"]:
        raise MessError("{} differs from the manifest the engines were built from; rebuild: {}".format(
            manifest_path, rebuild))
    if verify_files:
        for e in sidecar["graphs"]:
            path = os.path.join(engine_dir, e["file"])
            if not os.path.isfile(path) or sha256_file(path) != e["sha256"]:
                raise MessError("engine file {} is missing or changed since the build; rebuild: {}".format(
                    path, rebuild))
    return EngineSet(engine_dir, sidecar, manifest, device_index)
