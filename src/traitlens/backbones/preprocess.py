"""Image preprocessing with explicit geometry, shared by images and their masks.

Each provider describes its model's preprocessing as a :class:`Preprocess`; applying the same
resize and crop to a segmentation mask is what lets patch labels line up with patch tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from traitlens.errors import DataError

ResizeMode = Literal["shortest", "squash"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """Resize, center-crop, scale to [0, 1] and normalize.

    ``resize_mode="shortest"`` scales the shorter side to ``resize`` then crops ``size``;
    ``"squash"`` resizes straight to ``size`` (aspect ratio not kept), as SigLIP does.
    """

    size_hw: tuple[int, int]
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: ResizeMode = "shortest"

    def _geometry(self, image_chw: torch.Tensor, interpolation: InterpolationMode) -> torch.Tensor:
        if self.resize_mode == "squash":
            return tvf.resize(image_chw, list(self.size_hw), interpolation=interpolation, antialias=True)
        resized = tvf.resize(image_chw, [self.resize], interpolation=interpolation, antialias=True)
        return tvf.center_crop(resized, list(self.size_hw))

    def image(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> normalized float32 (3, h, w)."""
        uint8_chw = tvf.pil_to_tensor(image.convert("RGB"))
        resized = self._geometry(uint8_chw, InterpolationMode(self.interpolation))
        scaled = resized.to(torch.float32).div_(255.0)
        return tvf.normalize(scaled, list(self.mean), list(self.std))

    def mask(self, labels_hw: np.ndarray) -> np.ndarray:
        """A label map (h, w) -> the same geometry as :meth:`image`, nearest-neighbour, int64.

        Label values are kept exactly: the geometry moves pixel indices (exact in float64, which
        torchvision resizes without a cast) and labels are gathered by index, because resizing
        labels directly goes through float32 and corrupts values above 2**24. Pixels a crop pads
        in get label 0, as the image gets black.
        """
        labels = np.asarray(labels_hw, dtype=np.int64)
        if labels.ndim != 2:
            raise DataError(f"a mask must be a 2-d label map (h, w), got shape {labels.shape}")
        height, width = labels.shape
        index_1hw = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, height, width)
        moved_hw = self._geometry(index_1hw, InterpolationMode.NEAREST_EXACT)[0].round().to(torch.int64)
        padded_flat = np.concatenate([np.zeros(1, dtype=np.int64), labels.reshape(-1)])
        return padded_flat[moved_hw.numpy()]

    def _crop_window(self, image_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Size (h, w) of the image after the resize, and the crop's top-left corner in it (negative
        where the crop pads), by torchvision's rules: the short side becomes ``resize``, the long
        side is truncated to an integer; the crop anchor is rounded (padding is floored)."""
        height, width = image_hw
        crop_h, crop_w = self.size_hw
        if self.resize_mode == "squash":
            return (crop_h, crop_w), (0, 0)
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize * long / short)
        resized_h, resized_w = (new_long, self.resize) if width <= height else (self.resize, new_long)

        def anchor(size: int, crop: int) -> int:
            return -((crop - size) // 2) if crop > size else round((size - crop) / 2.0)

        return (resized_h, resized_w), (anchor(resized_h, crop_h), anchor(resized_w, crop_w))

    def unmap(self, map_hw: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """A map over the model input (h, w), any size with the input's aspect, back onto the
        original image: (H, W) float32 on the map's device, the inverse of :meth:`image`'s geometry.

        Each image pixel samples the map bilinearly where its centre lands in the crop; pixels the
        crop cut away get 0 (sampling with zero padding would instead fade the crop's border).
        """
        (resized_h, resized_w), (top, left) = self._crop_window(image_hw)
        crop_h, crop_w = self.size_hw
        height, width = image_hw
        device = map_hw.device
        # Pixel centres of the image in crop coordinates, as fractions of the crop (0..1 inside).
        rows = ((torch.arange(height, device=device) + 0.5) * resized_h / height - top) / crop_h
        cols = ((torch.arange(width, device=device) + 0.5) * resized_w / width - left) / crop_w
        grid_hw2 = torch.stack(torch.meshgrid(cols * 2 - 1, rows * 2 - 1, indexing="xy"), dim=-1)
        sampled_hw = torch.nn.functional.grid_sample(
            map_hw.to(torch.float32)[None, None], grid_hw2[None].to(torch.float32),
            mode="bilinear", padding_mode="border", align_corners=False,
        )[0, 0]
        inside_hw = ((rows >= 0) & (rows < 1))[:, None] & ((cols >= 0) & (cols < 1))[None, :]
        return sampled_hw * inside_hw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists back to tuples)."""
        height, width = (int(v) for v in data["size_hw"])
        mean_r, mean_g, mean_b = (float(v) for v in data["mean"])
        std_r, std_g, std_b = (float(v) for v in data["std"])
        return cls(
            size_hw=(height, width),
            resize=int(data["resize"]),
            mean=(mean_r, mean_g, mean_b),
            std=(std_r, std_g, std_b),
            interpolation=str(data["interpolation"]),
            resize_mode=data["resize_mode"],
        )
