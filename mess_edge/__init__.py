"""mess-edge: multi-exit semantic segmentation (Kouris et al., ECCV 2022) for edge GPUs.

Host side (torch): ``mess_edge.model``, ``mess_edge.train``, ``mess_edge.export``, ``mess_edge.calibrate``.
Device side (numpy, OpenCV, onnxruntime or TensorRT): ``mess_edge.runtime``, ``mess_edge.search``,
``mess_edge.confidence``, ``mess_edge.metrics``. The device side never imports torch.
"""

__version__ = "0.1.0"
