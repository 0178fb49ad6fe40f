"""The offline ImageNet MobileNetV2 checkpoint lands in torchvision's own cache, never over a file there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pretrained import mobilenet_checkpoint
from traitlens.install_weights import CHECKPOINT, install


def test_install_copies_into_the_hub_cache_and_keeps_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    target = install()
    assert target == tmp_path / "torch" / "hub" / "checkpoints" / CHECKPOINT
    assert target.read_bytes() == mobilenet_checkpoint().read_bytes()
    target.write_bytes(b"the user's own file")
    assert install() == target and target.read_bytes() == b"the user's own file"
