"""Device side: runners, engine building, latency tables, the chain and the camera loop (no torch;
backends imported lazily).

    runner.Runner                  activate / infer / deactivate, input checks (base class)
    ort_runner.OrtRunner           ONNX Runtime; configure_ort_threads() for the process-wide pool
    trt_runner.TrtRunner           TensorRT + pycuda; device buffers shareable between runners
    build.build_engines            ONNX folder -> engines/<device-id>/ + engine.json
    calib                          INT8 calibration inputs (images, per-graph features) for the build
    engines.load_engines           engine folder -> EngineSet (checked against this device)
    profile.profile_engines        EngineSet -> lut.json
    bench.bench_engines            per-graph latency / GMACs, chained final-only vs monolithic
    chain.Chain                    early-exit executor over an EngineSet (backends in chain_backends)
    capture / camera               source + capture thread / preprocessing, overlay, sinks
    run_commands / stats           `mess-edge run` loop / its statistics
    device / timing                device description, conditions; warm-up + perf_counter timing
"""

_LAZY = {"Runner": "runner", "TensorMeta": "runner", "OrtRunner": "ort_runner",
         "configure_ort_threads": "ort_runner", "TrtRunner": "trt_runner", "build_engines": "build",
         "load_engines": "engines", "EngineSet": "engines", "profile_engines": "profile", "bench_engines": "bench"}


def __getattr__(name):
    # PEP 562 (3.7+): `from mess_edge.runtime import OrtRunner` without importing every backend module
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module("mess_edge.runtime." + _LAZY[name]), name)
    raise AttributeError("module 'mess_edge.runtime' has no attribute {!r}".format(name))
