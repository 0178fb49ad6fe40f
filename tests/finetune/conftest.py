"""The models the fine-tuning tests use (their images: the ``colours`` fixture of tests/conftest.py)."""

from __future__ import annotations

MODEL = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=5"
CNN = "timm:resnet18?num_classes=5"
