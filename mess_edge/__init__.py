"""mess-edge: multi-exit semantic segmentation (Kouris et al., ECCV 2022) for edge GPUs.

One package per pipeline stage, each with its ``commands.py`` (the click command that calls it):

    host (torch)       data -> train -> calibrate -> export
    target (no torch)  build -> profile -> search -> run

``runtime`` holds what every device stage shares (the ``Runner`` interface, the ONNX Runtime and TensorRT
runners, CUDA helpers, graph fusion, device identity); ``model`` is the multi-exit network; ``confidence``,
``metrics``, ``artifacts`` and ``errors`` are shared by both sides. The device side never imports torch.
"""

__version__ = "0.1.0"
