"""Device side: runners, engine building, latency tables (no torch; backends imported lazily).

    runner.Runner                  activate / infer / deactivate, input checks (base class)
    ort_runner.OrtRunner           ONNX Runtime; configure_ort_threads() for the process-wide pool
    trt_runner.TrtRunner           TensorRT + pycuda; device buffers shareable between runners
    build.build_engines            ONNX folder -> engines/<device-id>/ + engine.json
    build.load_engines             engine folder -> EngineSet (checked against this device)
    profile.profile_engines        EngineSet -> lut.json;  profile.bench_engines: bench table
    device / timing                device description, conditions; warm-up + perf_counter timing
"""

_LAZY = {"Runner": "runner", "TensorMeta": "runner", "OrtRunner": "ort_runner",
         "configure_ort_threads": "ort_runner", "TrtRunner": "trt_runner", "build_engines": "build",
         "load_engines": "build", "EngineSet": "build", "profile_engines": "profile", "bench_engines": "profile"}


def __getattr__(name):
    # PEP 562 (3.7+): `from mess_edge.runtime import OrtRunner` without importing every backend module
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module("mess_edge.runtime." + _LAZY[name]), name)
    raise AttributeError("module 'mess_edge.runtime' has no attribute {!r}".format(name))
