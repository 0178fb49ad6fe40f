"""Localizing the evidence for a class: the CAM family (CAM, Grad-CAM, Grad-CAM++, HiResCAM,
LayerCAM, Score-CAM, Eigen-CAM) and Finer-CAM, on any backbone and any head.

``cam_maps(backbone, pixels_bchw, "grad-cam")`` for maps in memory; ``explain(ExplainConfig(...))``
(``traitlens explain``) for a folder of images written to disk.
"""

from traitlens.explain.config import DEFAULT_GAMMA, DEFAULT_N_REFS, ExplainConfig, ExplainError
from traitlens.explain.job import explain
from traitlens.explain.maps import CamResult, cam_maps, compute_cams, default_layer
from traitlens.explain.methods import METHODS

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_N_REFS",
    "METHODS",
    "CamResult",
    "ExplainConfig",
    "ExplainError",
    "cam_maps",
    "compute_cams",
    "default_layer",
    "explain",
]
