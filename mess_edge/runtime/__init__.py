"""What every device stage shares (no torch; backends imported lazily).

    runner.Runner                  activate / infer / deactivate, input checks (base class)
    ort_runner.OrtRunner           ONNX Runtime; configure_ort_threads() for the process-wide pool
    trt_runner.TrtRunner           TensorRT + pycuda; device buffers shareable between runners, CUDA context
    fuse                           fusing consecutive segment graphs into one (the stretches the chain runs)
    device                         device identity (id, CPU/GPU, library versions) and timing conditions

The stages built on it: ``mess_edge.build`` (engines), ``mess_edge.profile`` (latency table, bench) and
``mess_edge.run`` (the chain and the camera loop).
"""

_LAZY = {"Runner": "runner", "TensorMeta": "runner", "OrtRunner": "ort_runner",
         "configure_ort_threads": "ort_runner", "TrtRunner": "trt_runner"}


def __getattr__(name):
    # PEP 562 (3.7+): `from mess_edge.runtime import OrtRunner` without importing every backend module
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module("mess_edge.runtime." + _LAZY[name]), name)
    raise AttributeError("module 'mess_edge.runtime' has no attribute {!r}".format(name))
