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

FORMAT = "mess-edge-engines/1"
SIDECAR = "engine.json"
MANIFEST = "manifest.json"
BACKEND_LIBRARY = {"ort": "onnxruntime", "trt": "tensorrt"}  # backend -> the library whose version must match


class EngineSet(object):
    """A validated engine folder: ``sidecar``, ``manifest``, ``graphs`` (manifest order, each with the
    sidecar's ``file``/``precision``), and ``runner(name)`` making the backend's Runner for a graph."""

    def __init__(self, engine_dir, sidecar, manifest, device_index=0):
        self.dir, self.sidecar, self.manifest, self.device_index = engine_dir, sidecar, manifest, device_index
        self.backend, self.precision = sidecar["backend"], sidecar["precision"]
        built = {e["name"]: e for e in sidecar["graphs"]}
        self.graphs = []
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


def load_engines(engine_dir, verify_files=True, device_index=0):
    """Open an engine folder after checking that it belongs to this device and these library versions.
    ``device_index``: the CUDA device TensorRT runners use (ignored by ONNX Runtime engines).

    Refuses (MessError with the rebuild command) a folder built on another device, with another version
    of the backend library, or whose files or manifest changed since the build.
    """
    sidecar = read_json(os.path.join(engine_dir, SIDECAR), "engine sidecar")
    if sidecar.get("format") != FORMAT:
        raise MessError("got {} with format {!r}; expected {!r}; try mess-edge build ONNX_DIR --out {}".format(
            os.path.join(engine_dir, SIDECAR), sidecar.get("format"), FORMAT, engine_dir))
    rebuild = sidecar.get("rebuild_command", "mess-edge build ONNX_DIR --out {}".format(engine_dir))
    backend = sidecar["backend"]
    device = describe_device(backend, tuple(sidecar.get("providers", ("cpu",))), sidecar.get("dla_core"))
    if device["id"] != sidecar["device"]["id"]:
        raise MessError("engines in {} were built for device '{}'; got this device '{}'; engines are not "
                        "portable; rebuild here: {}".format(engine_dir, sidecar["device"]["id"], device["id"],
                                                            rebuild))
    lib = BACKEND_LIBRARY[backend]
    built_with, here = sidecar["versions"].get(lib), library_versions(backend).get(lib)
    if built_with != here:
        raise MessError("engines in {} were built with {} {}; got {} {} here; rebuild here: {}".format(
            engine_dir, lib, built_with, lib, here, rebuild))
    manifest_path = os.path.join(engine_dir, MANIFEST)
    manifest = read_json(manifest_path, "manifest")
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
