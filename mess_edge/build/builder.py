"""Build stage: an ONNX folder (manifest.json + graphs) -> an engine folder for THIS device.

ONNX Runtime: each graph is optimised once and saved. The saved level is ORT_ENABLE_EXTENDED, not ALL:
ALL adds layout transformations (NCHWc) tied to this CPU's instruction set and the ORT docs warn such
files only run on the same hardware; EXTENDED files stay portable and loadable by every provider, and
the runner re-applies ALL at load time, where the layout pass is cheap.
TensorRT 8.5 to 11.x: one serialized plan per graph (workspace limit, optional DLA with GPU fallback), with a
timing cache saved in the folder and reused. Precision comes from the graph where ``mess-edge quantize`` put it
there (Q/DQ INT8, FP16 tensors: explicit precision, the only kind 11.x builds); fp32 graphs can still be built
at FP16 / INT8 through builder flags and the implicit entropy calibrator on the releases that have them (8.x,
10.x), calibrated on the runtime's preprocessing with caches keyed on the calibration set (``int8``).

The folder gets one engine per graph, a copy of manifest.json and, written last, the sidecar engine.json
(backend, versions, device, precision, shapes, checksums) that ``engine_set.load_engines`` checks before use.
INT8 caches come from ``int8``, calibration feeds from runtime/calib_data.py; the folder's format constants
from ``engine_set``.
"""

import dataclasses
import datetime
import os
import shlex
import time
from typing import Optional, Tuple

from mess_edge.artifacts import (Output, atomic_path, check_outputs, read_json, sha256_file, write_bytes_atomic,
                                 write_json_atomic)
from mess_edge.errors import MessError
from mess_edge.schema import check_manifest
from mess_edge.build.int8 import check_int8_cache, int8_cache_path, record_int8_cache
from mess_edge.runtime.device import describe_device, library_versions
from mess_edge.runtime.trt_runner import trt_major
from mess_edge.build.engine_set import BACKEND_LIBRARY, FORMAT, MANIFEST, SIDECAR

PRECISIONS = ("fp32", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    backend: str                            # "ort" (ONNX Runtime) or "trt" (TensorRT)
    precision: str = "fp32"                 # fp32 | fp16 | int8; ORT (and TRT 11): the graphs' own only
    providers: Tuple[str, ...] = ("cpu",)   # ORT: providers the graphs are built and run with
    dla_core: Optional[int] = None          # TRT: build for this DLA core (fp16/int8), GPU fallback on
    calib_dir: Optional[str] = None         # TRT int8: images (.jpg/.png/...) or preprocessed .npy arrays
    calib_max_images: int = 32              # TRT int8: images used (streamed: one image's features at a time)
    calib_cache_dir: Optional[str] = None   # TRT int8: calibration caches; default calibrate/int8/<device id>
    workspace_mib: int = 1024               # TRT: builder workspace limit (bounded: Jetson memory is shared)
    recalibrate: bool = False               # TRT int8: replace caches made from another calibration set
    device_index: int = 0                   # TRT: the CUDA device the engines are built for


def read_manifest(onnx_dir):
    """(manifest dict, its sha256) of ``onnx_dir``; MessError if missing or not a mess-edge manifest."""
    path = os.path.join(onnx_dir, MANIFEST)
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != "mess-edge-manifest/1" or not manifest.get("graphs"):
        raise MessError("got {} with format {!r}; expected 'mess-edge-manifest/1' with graphs; try "
                        "mess-edge export CKPT --out {}".format(
                            path, manifest.get("format") if isinstance(manifest, dict) else None, onnx_dir))
    return check_manifest(manifest, path), sha256_file(path)


def check_graph_files(onnx_dir, manifest):
    """Every graph file of the manifest exists and has the manifest's sha256, else MessError naming it."""
    for g in manifest["graphs"]:
        path = os.path.join(onnx_dir, g["file"])
        if not os.path.isfile(path):
            raise MessError("graph '{}' is missing: got no file {}; expected the export's output; try "
                            "mess-edge export CKPT --out {}".format(g["name"], path, onnx_dir))
        digest = sha256_file(path)
        if digest != g["sha256"]:
            raise MessError("{} changed after export: got sha256 {}; expected {} (manifest); try "
                            "re-exporting: mess-edge export CKPT --out {}".format(path, digest[:16],
                                                                                 g["sha256"][:16], onnx_dir))


def rebuild_command(onnx_dir, cfg, out_dir):
    """The command line that rebuilds ``out_dir`` from ``onnx_dir`` with ``cfg``."""
    parts = ["mess-edge", "build", onnx_dir, "--backend", cfg.backend, "--precision", cfg.precision]
    if cfg.backend == "ort" and tuple(cfg.providers) != ("cpu",):
        parts += ["--provider", cfg.providers[0]]
    if cfg.dla_core is not None:
        parts += ["--dla", str(cfg.dla_core)]
    if cfg.calib_dir:
        parts += ["--calib-data", cfg.calib_dir]
    if cfg.device_index:
        parts += ["--device", str(cfg.device_index)]
    return " ".join(shlex.quote(str(p)) for p in parts + ["--out", out_dir])


def graph_precision(manifest):
    """The precision the graphs of a manifest were made at: "fp32" (export) unless ``quantize`` recorded one."""
    return manifest.get("precision", "fp32")


def resolve_precision(manifest, backend, precision, onnx_dir):
    """The build precision: the graphs' own unless ``precision`` asks for another that this backend can give.

    Graphs made at int8 / fp16 (``mess-edge quantize``) build only at that precision; fp32 graphs build at fp32
    on ONNX Runtime, and at fp16 / int8 through TensorRT's builder flags (releases before 11 only, checked
    where TensorRT is imported). MessError otherwise.
    """
    made = graph_precision(manifest)
    if precision is None:
        return made
    if precision not in PRECISIONS:
        raise MessError("got precision {!r}; expected one of {}".format(precision, PRECISIONS))
    if made != "fp32" and precision != made:
        raise MessError("got --precision {} for graphs made at {} ({}/manifest.json precision); expected {}; "
                        "try omitting --precision, or build the fp32 export ({})".format(
                            precision, made, onnx_dir, made, manifest.get("source_onnx_dir", "ONNX_DIR")))
    if backend == "ort" and precision != made:
        raise MessError("got --precision {} with --backend ort; expected fp32, the precision of these graphs (ONNX "
                        "Runtime runs the precision in the graph); try mess-edge quantize {} --precision {} "
                        "--calib-data DATA --out Q_DIR, then build Q_DIR".format(precision, onnx_dir, precision))
    return precision


def build_engines(onnx_dir, backend, precision=None, out_dir=None, providers=("cpu",), dla_core=None,
                  calib_dir=None, calib_max_images=32, calib_cache_dir=None, workspace_mib=1024, log=None,
                  recalibrate=False, device_index=0):
    """Build every graph of ``onnx_dir`` for this device into ``out_dir`` (default engines/<device id>).

    ``precision`` None: the graphs' own (manifest.json "precision", fp32 for an export). Checks the
    manifest's sha256 of every graph first. ``log``: a callable taking one progress line.
    Returns the engine folder's path.
    """
    if backend not in BACKEND_LIBRARY:
        raise MessError("got backend {!r}; expected 'ort' or 'trt'".format(backend))
    manifest, manifest_sha = read_manifest(onnx_dir)
    precision = resolve_precision(manifest, backend, precision, onnx_dir)
    cfg = BuildConfig(backend, precision, tuple(providers), dla_core, calib_dir, calib_max_images,
                      calib_cache_dir, workspace_mib, recalibrate, device_index)
    if backend == "ort" and dla_core is not None:
        raise MessError("got --dla with --backend ort; expected --backend trt (DLA is a TensorRT target)")
    implicit_int8 = precision == "int8" and graph_precision(manifest) == "fp32"
    if implicit_int8 and not calib_dir:
        raise MessError("got --precision int8 without --calib-data; expected a folder of calibration "
                        "images; try --calib-data calibrate/<set>, or mess-edge quantize (Q/DQ graphs)")
    if backend == "trt" and (manifest.get("calibration") or {}).get("activations") == "uint8":
        raise MessError("got graphs quantized with uint8 activations ({}); expected symmetric int8 Q/DQ for "
                        "TensorRT (it has no asymmetric INT8); try mess-edge quantize --activations int8".format(
                            onnx_dir))
    if backend == "trt":
        from mess_edge.runtime.trt_runner import import_trt

        import_trt()  # an absent or unknown TensorRT fails here, in one line, before anything is written
    log = log or (lambda line: None)
    check_graph_files(onnx_dir, manifest)
    device = describe_device(backend, cfg.providers, dla_core)
    out_dir = out_dir or os.path.join("engines", device["id"])
    check_outputs([Output("--out", out_dir, folder=True)], [("ONNX_DIR", onnx_dir), ("--calib-data", calib_dir)])
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, SIDECAR)):
        os.remove(os.path.join(out_dir, SIDECAR))  # a half-rebuilt folder must not pass for a complete one
    if backend == "ort":
        entries = _build_ort(onnx_dir, manifest, out_dir, cfg, log)
    else:
        entries = _build_trt(onnx_dir, manifest, out_dir, cfg, device["id"], log)
    with open(os.path.join(onnx_dir, MANIFEST), "rb") as f:
        write_bytes_atomic(os.path.join(out_dir, MANIFEST), f.read())
    sidecar = {"format": FORMAT, "backend": backend, "precision": precision, "providers": list(cfg.providers),
               "dla_core": dla_core, "device": device, "versions": library_versions(backend),
               "input_hw": manifest.get("input_hw"), "manifest_sha256": manifest_sha,
               "checkpoint_sha256": manifest.get("checkpoint_sha256"), "onnx_dir": os.path.abspath(onnx_dir),
               "graph_precision": graph_precision(manifest), "calibration": manifest.get("calibration"),
               "config": dataclasses.asdict(cfg), "rebuild_command": rebuild_command(onnx_dir, cfg, out_dir),
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "graphs": entries}
    write_json_atomic(os.path.join(out_dir, SIDECAR), sidecar)
    return out_dir


def graph_entry(g, out_dir, file, precision):
    """The sidecar's record of one built graph."""
    return {"name": g["name"], "role": g["role"], "file": file, "sha256": sha256_file(os.path.join(out_dir, file)),
            "onnx_sha256": g["sha256"], "precision": precision, "inputs": g["inputs"], "outputs": g["outputs"]}


def _build_ort(onnx_dir, manifest, out_dir, cfg, log):
    import onnxruntime as ort

    from mess_edge.runtime.ort_runner import resolve_providers, session_options

    providers = resolve_providers(cfg.providers)
    entries = []
    for i, g in enumerate(manifest["graphs"]):
        t0 = time.perf_counter()
        src, file = os.path.join(onnx_dir, g["file"]), g["name"] + ".onnx"
        with atomic_path(os.path.join(out_dir, file)) as tmp:
            so, _ = session_options(level="extended")
            so.optimized_model_filepath = tmp
            try:
                ort.InferenceSession(src, so, providers=providers)
            except Exception as e:  # ORT's InvalidProtobuf / Fail / InvalidGraph ...
                raise MessError("{} is not a loadable ONNX graph ({}: {}); expected the export's output; try "
                                "re-exporting: mess-edge export CKPT --out {}".format(
                                    src, type(e).__name__, str(e).strip().splitlines()[0][:200], onnx_dir))
        made = g.get("precision", "fp32")  # per graph: quantize keeps the upsample graphs fp32
        entries.append(graph_entry(g, out_dir, file, made))
        log("[{:>3}/{}] {:<24} ort {:<5} {:.2f} s".format(i + 1, len(manifest["graphs"]), g["name"], made,
                                                          time.perf_counter() - t0))
    return entries


# -- TensorRT ----------------------------------------------------------------------------------------------
# Precision, per release (TENSORRT.md sec. 1.4, 2.2; tests/runtime/test_trt_backend.py holds the names to them):
#   graphs made at int8 / fp16 (Q/DQ nodes, fp16 tensors): explicit precision. 8.x: explicit batch + the INT8
#     (Q/DQ) or FP16 flag, which those releases need to use the graph's types; 10.x and 11.x: STRONGLY_TYPED,
#     no precision flag (a strongly typed network refuses them).
#   fp32 graphs at --precision fp16 / int8: builder flags and, for int8, the implicit entropy calibrator, on
#     8.x and 10.x only; 11.x removed both (MessError: quantize the graphs instead).

def network_flags(trt, strongly_typed):
    """create_network flags: explicit batch on 8.x; STRONGLY_TYPED for graph precision on 10.x, always on 11.x."""
    if trt_major(trt) >= 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif trt_major(trt) >= 10:
        # 10.x: networks are always explicit batch (the flag is deprecated)
        flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strongly_typed else 0
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return flags


def _set_timing_cache(trt, config, path, log):
    """Load the timing cache file into ``config``; one from another GPU / TensorRT is replaced, not misused."""
    cache_bytes = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            cache_bytes = f.read()
    # ignore_mismatch False: set_timing_cache returns False for a cache made on another device / release
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), False):
        log("timing cache {} was made by another GPU or TensorRT release: starting a new one".format(path))
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            raise MessError("TensorRT {} refused an empty timing cache; expected it to accept one; try "
                            "deleting {}".format(trt.__version__, path))


def build_trt_plan(builder, onnx_path, precision, cfg, timing_cache_path, calibrator=None, graph_typed=False,
                   log=None):
    """Serialized TensorRT plan (bytes) of one ONNX graph; the timing cache file is read and updated.

    ``graph_typed``: the graph carries its precision (Q/DQ or fp16 tensors: explicit precision); else
    ``precision`` fp16 / int8 asks the builder to choose (flags, the implicit ``calibrator``; before 11.x).
    Call inside trt_runner.cuda_context (the calibrator and the builder use the current CUDA context).
    """
    from mess_edge.runtime.trt_runner import import_trt, trt_logger, trt_major

    trt = import_trt()
    log = log or (lambda line: None)
    network = builder.create_network(network_flags(trt, graph_typed))
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(onnx_path):
        errors = ["node {}: {}".format(parser.get_error(i).node(), parser.get_error(i).desc())
                  for i in range(parser.num_errors)]
        raise MessError("TensorRT {} could not parse {}: {}; expected opset <= 17 graphs of supported ops; "
                        "try re-exporting, or --backend ort".format(trt.__version__, onnx_path,
                                                                     "; ".join(errors) or "no parser message"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mib) << 20)
    if trt_major(trt) >= 11:
        if precision != "fp32" and not graph_typed:
            raise MessError("got --precision {} for fp32 graphs on TensorRT {}; expected graphs that carry their "
                            "precision (11.x builds strongly typed networks only); try mess-edge quantize ONNX_DIR "
                            "--precision {} --calib-data DATA --out Q_DIR and build Q_DIR".format(
                                precision, trt.__version__, precision))
    elif trt_major(trt) >= 10 and graph_typed:
        pass  # strongly typed: the graph's types are the precision; flags would be refused
    elif graph_typed:
        # 8.x explicit precision: Q/DQ layers need the INT8 flag, fp16 tensors the FP16 flag
        config.set_flag(trt.BuilderFlag.INT8 if precision == "int8" else trt.BuilderFlag.FP16)
    else:
        if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16, not fp32
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(cfg.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU (silently)
    _set_timing_cache(trt, config, timing_cache_path, log)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MessError("TensorRT {} failed to build {} at {}; see the TensorRT log above; try --precision "
                        "fp32 or without --dla".format(trt.__version__, onnx_path, precision))
    write_bytes_atomic(timing_cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    return memoryview(plan).tobytes()


def fast_precisions(trt, builder):
    """{precision: whether this GPU has a fast path}; 11.x has no such query (None: the graph decides)."""
    if trt_major(trt) >= 11:
        fast = None
    else:
        fast = {"fp16": builder.platform_has_fast_fp16, "int8": builder.platform_has_fast_int8, "fp32": True}
    return fast


def _build_trt(onnx_dir, manifest, out_dir, cfg, device_id, log):
    from mess_edge.runtime.calib_data import CalibrationSet, graph_feeds, ort_graph_runner
    from mess_edge.runtime.trt_runner import cuda_context, import_trt, make_entropy_calibrator, trt_logger

    trt = import_trt()
    if cfg.dla_core is not None and cfg.precision == "fp32":
        raise MessError("got --dla {} with --precision fp32; expected fp16 or int8 (DLA runs only those); try "
                        "--precision fp16".format(cfg.dla_core))
    typed = graph_precision(manifest) != "fp32"
    calib = None
    if cfg.precision == "int8" and not typed:
        calib = CalibrationSet(cfg.calib_dir, manifest, cfg.calib_max_images, allow_resize=True)
        calib.identity()  # hash the list now: a cache check needs it, and a bad folder fails before the build
    paths = {g["name"]: os.path.join(onnx_dir, g["file"]) for g in manifest["graphs"]}
    run = ort_graph_runner(paths.__getitem__)  # fp32 features; computed only if TensorRT asks for a batch
    cache_dir = cfg.calib_cache_dir or os.path.join("calibrate", "int8", device_id)
    entries = []
    with cuda_context(cfg.device_index):
        builder = trt.Builder(trt_logger(trt))
        fast = fast_precisions(trt, builder)
        if fast is not None and not fast[cfg.precision]:
            raise MessError("got --precision {}; this GPU has no fast {} path (TensorRT {}); try --precision "
                            "{}".format(cfg.precision, cfg.precision, trt.__version__,
                                        "int8" if fast["int8"] else "fp32"))
        if cfg.dla_core is not None and not 0 <= cfg.dla_core < builder.num_DLA_cores:
            raise MessError("got --dla {}; this device has {} DLA cores; try --dla 0 or no --dla".format(
                cfg.dla_core, builder.num_DLA_cores))
        caches = {g["name"]: int8_cache_path(cache_dir, g) for g in manifest["graphs"] if g["role"] != "upsample"}
        if calib is not None:
            for path in caches.values():
                check_int8_cache(path, calib, cfg.recalibrate)  # before any build: one line, nothing half done
        for i, g in enumerate(manifest["graphs"]):
            t0 = time.perf_counter()
            precision = g.get("precision", cfg.precision) if typed else cfg.precision
            calibrator = None
            if calib is not None and g["role"] == "upsample":
                # upsample: no weights to quantise, nothing to calibrate
                precision = "fp16" if fast is not None and fast["fp16"] else "fp32"
            elif calib is not None:
                calibrator = make_entropy_calibrator(trt, graph_feeds(manifest, g, calib, run), caches[g["name"]])
            file = g["name"] + ".plan"
            plan = build_trt_plan(builder, paths[g["name"]], precision, cfg, os.path.join(out_dir, "timing.cache"),
                                  calibrator, graph_typed=typed and precision != "fp32", log=log)
            if calibrator is not None:
                record_int8_cache(caches[g["name"]], calib)
            write_bytes_atomic(os.path.join(out_dir, file), plan)
            entries.append(graph_entry(g, out_dir, file, precision))
            log("[{:>3}/{}] {:<24} trt {:<5} {:.1f} s".format(i + 1, len(manifest["graphs"]), g["name"], precision,
                                                             time.perf_counter() - t0))
    return entries
