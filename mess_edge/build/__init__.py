"""Stage ``build`` (target, no torch): an ONNX folder -> ``engines/<device-id>/`` for this device.

    builder.build_engines          ONNX Runtime optimised graphs or TensorRT plans + engine.json (the sidecar)
    int8                           INT8 calibration inputs (images, per-graph features) for TensorRT builds
    engine_set.load_engines        engine folder -> EngineSet, checked against this device and its sidecar
    commands                       ``mess-edge build``
"""
