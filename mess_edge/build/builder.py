"""Build stage: an ONNX folder (manifest.json + graphs) -> an engine folder for THIS device.

ONNX Runtime: each graph is optimised once and saved. The saved level is ORT_ENABLE_EXTENDED, not ALL:
ALL adds layout transformations (NCHWc) tied to this CPU's instruction set and the ORT docs warn such
files only run on the same hardware; EXTENDED files stay portable and loadable by every provider, and
the runner re-applies ALL at load time, where the layout pass is cheap.
TensorRT: one serialized plan per graph (explicit batch, workspace limit, FP16 / INT8 with an entropy
calibrator, optional DLA with GPU fallback), with a timing cache saved in the folder and reused.

The folder gets one engine per graph, a copy of manifest.json and, written last, the sidecar engine.json
(backend, versions, device, precision, shapes, checksums) that ``engine_set.load_engines`` checks before use.
INT8 calibration inputs come from ``int8``; the folder's format constants from ``engine_set``.
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
from mess_edge.build.int8 import _graphs_in_build_order, calibration_images
from mess_edge.runtime.device import describe_device, library_versions
from mess_edge.build.engine_set import BACKEND_LIBRARY, FORMAT, MANIFEST, SIDECAR

PRECISIONS = ("fp32", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    backend: str                            # "ort" (ONNX Runtime) or "trt" (TensorRT)
    precision: str = "fp32"                 # fp32 | fp16 | int8; ORT builds fp32 only
    providers: Tuple[str, ...] = ("cpu",)   # ORT: providers the graphs are built and run with
    dla_core: Optional[int] = None          # TRT: build for this DLA core (fp16/int8), GPU fallback on
    calib_dir: Optional[str] = None         # TRT int8: images (.jpg/.png/...) or preprocessed .npy arrays
    calib_max_images: int = 32              # TRT int8: images used; one exit's features are held in memory
    calib_cache_dir: Optional[str] = None   # TRT int8: calibration caches; default calibrate/int8/<device id>
    workspace_mib: int = 1024               # TRT: builder workspace limit (bounded: Jetson memory is shared)


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
    return " ".join(shlex.quote(str(p)) for p in parts + ["--out", out_dir])


def build_engines(onnx_dir, backend, precision="fp32", out_dir=None, providers=("cpu",), dla_core=None,
                  calib_dir=None, calib_max_images=32, calib_cache_dir=None, workspace_mib=1024, log=None):
    """Build every graph of ``onnx_dir`` for this device into ``out_dir`` (default engines/<device id>).

    Checks the manifest's sha256 of every graph first. ``log``: a callable taking one progress line.
    Returns the engine folder's path.
    """
    cfg = BuildConfig(backend, precision, tuple(providers), dla_core, calib_dir, calib_max_images,
                      calib_cache_dir, workspace_mib)
    if backend not in BACKEND_LIBRARY:
        raise MessError("got backend {!r}; expected 'ort' or 'trt'".format(backend))
    if precision not in PRECISIONS:
        raise MessError("got precision {!r}; expected one of {}".format(precision, PRECISIONS))
    if backend == "ort" and precision != "fp32":
        raise MessError("got --precision {} with --backend ort; expected fp32 (ONNX Runtime runs these "
                        "graphs in fp32 only); try --precision fp32, or --backend trt on an NVIDIA GPU"
                        .format(precision))
    if backend == "ort" and dla_core is not None:
        raise MessError("got --dla with --backend ort; expected --backend trt (DLA is a TensorRT target)")
    if precision == "int8" and not calib_dir:
        raise MessError("got --precision int8 without --calib-data; expected a folder of calibration "
                        "images; try --calib-data calibrate/<set>")
    log = log or (lambda line: None)
    manifest, manifest_sha = read_manifest(onnx_dir)
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
        entries.append(graph_entry(g, out_dir, file, "fp32"))
        log("[{:>3}/{}] {:<24} ort fp32  {:.2f} s".format(i + 1, len(manifest["graphs"]), g["name"],
                                                          time.perf_counter() - t0))
    return entries


# -- TensorRT ----------------------------------------------------------------------------------------------

def build_trt_plan(builder, onnx_path, precision, cfg, timing_cache_path, calibrator=None):
    """Serialized TensorRT plan (bytes) of one ONNX graph; the timing cache file is read and updated.

    Call inside trt_runner.cuda_context (the calibrator and the builder use the current CUDA context).
    """
    from mess_edge.runtime.trt_runner import import_trt, trt_logger, trt_major

    trt = import_trt()
    # 8.x: the ONNX parser needs an explicit-batch network; 10.x: always explicit, the flag is deprecated
    flags = 0 if trt_major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(onnx_path):
        errors = ["node {}: {}".format(parser.get_error(i).node(), parser.get_error(i).desc())
                  for i in range(parser.num_errors)]
        raise MessError("TensorRT {} could not parse {}: {}; expected opset <= 17 graphs of supported ops; "
                        "try re-exporting, or --backend ort".format(trt.__version__, onnx_path,
                                                                     "; ".join(errors) or "no parser message"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mib) << 20)
    if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16, not fp32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(cfg.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU (silently)
    cache_bytes = b""
    if os.path.isfile(timing_cache_path):
        with open(timing_cache_path, "rb") as f:
            cache_bytes = f.read()
    # a cache made on another GPU / TensorRT is refused (ignore_mismatch False), never silently misused
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MessError("TensorRT {} failed to build {} at {}; see the TensorRT log above; try --precision "
                        "fp32 or without --dla".format(trt.__version__, onnx_path, precision))
    write_bytes_atomic(timing_cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    return memoryview(plan).tobytes()


def _build_trt(onnx_dir, manifest, out_dir, cfg, device_id, log):
    from mess_edge.runtime.trt_runner import cuda_context, import_trt, make_entropy_calibrator, trt_logger

    trt = import_trt()
    manifest = dict(manifest, graphs=[dict(g, _path=os.path.join(onnx_dir, g["file"])) for g in manifest["graphs"]])
    if cfg.dla_core is not None and cfg.precision == "fp32":
        raise MessError("got --dla {} with --precision fp32; expected fp16 or int8 (DLA runs only those); try "
                        "--precision fp16".format(cfg.dla_core))
    images = calibration_images(cfg.calib_dir, manifest, cfg.calib_max_images) if cfg.precision == "int8" else None
    cache_dir = cfg.calib_cache_dir or os.path.join("calibrate", "int8", device_id)
    entries = []
    with cuda_context(0):
        builder = trt.Builder(trt_logger(trt))
        fast = {"fp16": builder.platform_has_fast_fp16, "int8": builder.platform_has_fast_int8, "fp32": True}
        if not fast[cfg.precision]:
            raise MessError("got --precision {}; this GPU has no fast {} path (TensorRT {}); try --precision "
                            "{}".format(cfg.precision, cfg.precision, trt.__version__,
                                        "int8" if fast["int8"] else "fp32"))
        if cfg.dla_core is not None and not 0 <= cfg.dla_core < builder.num_DLA_cores:
            raise MessError("got --dla {}; this device has {} DLA cores; try --dla 0 or no --dla".format(
                cfg.dla_core, builder.num_DLA_cores))
        for i, (g, feeds) in enumerate(_graphs_in_build_order(manifest, images)):
            t0 = time.perf_counter()
            precision = cfg.precision
            if precision == "int8" and feeds is None:  # upsample: no weights to quantise, nothing to calibrate
                precision = "fp16" if fast["fp16"] else "fp32"
            calibrator = None
            if precision == "int8":
                cache = os.path.join(cache_dir, "{}-{}.cache".format(g["name"], g["sha256"][:16]))
                calibrator = make_entropy_calibrator(trt, feeds, cache)
            file = g["name"] + ".plan"
            plan = build_trt_plan(builder, g["_path"], precision, cfg, os.path.join(out_dir, "timing.cache"),
                                  calibrator)
            write_bytes_atomic(os.path.join(out_dir, file), plan)
            entries.append(graph_entry(g, out_dir, file, precision))
            log("[{:>3}/{}] {:<24} trt {:<5} {:.1f} s".format(i + 1, len(manifest["graphs"]), g["name"], precision,
                                                             time.perf_counter() - t0))
    order = {g["name"]: k for k, g in enumerate(manifest["graphs"])}
    return sorted(entries, key=lambda e: order[e["name"]])
