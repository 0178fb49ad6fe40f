"""Image preprocessing with explicit geometry, shared by images and their masks.

Each provider describes its model's preprocessing as a :class:`Preprocess`; applying the same
resize and crop to a segmentation mask is what lets patch labels line up with patch tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from traitlens.errors import DataError

ResizeMode = Literal["shortest", "squash", "pad"]
Fit = Literal["squash", "pad", "crop"]
"""How an image of any shape meets the model's input: ``squash`` resizes the whole image to it
(aspect ratio not kept), ``pad`` letterboxes the whole image into it, ``crop`` is the model's own
resize and centre crop, which cuts away the long side's ends."""
FITS: tuple[Fit, ...] = get_args(Fit)
_FIT_MODES: dict[Fit, ResizeMode] = {"squash": "squash", "pad": "pad", "crop": "shortest"}

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
    ``"squash"`` resizes straight to ``size`` (aspect ratio not kept), as SigLIP does; ``"pad"``
    scales the longer side to fit ``size`` and pads the shorter one evenly (letterbox). Where a
    crop or the letterbox pads, pixels get the mean colour (0 after normalization).
    """

    size_hw: tuple[int, int]
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_mode: ResizeMode = "shortest"

    def _resized_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The image's size after the resize, by torchvision's rules for ``shortest`` (the short side
        becomes ``resize``, the long side is truncated to an integer)."""
        height, width = image_hw
        if self.resize_mode == "squash":
            return self.size_hw
        if self.resize_mode == "pad":
            scale = min(self.size_hw[0] / height, self.size_hw[1] / width)
            return (min(self.size_hw[0], max(1, round(height * scale))),
                    min(self.size_hw[1], max(1, round(width * scale))))
        new_long = int(self.resize * max(height, width) / min(height, width))
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def _resize(self, image_chw: torch.Tensor, interpolation: InterpolationMode) -> torch.Tensor:
        size_hw = self._resized_hw((image_chw.shape[-2], image_chw.shape[-1]))
        return tvf.resize(image_chw, list(size_hw), interpolation=interpolation, antialias=True)

    def _crop(self, image_chw: torch.Tensor) -> torch.Tensor:
        """The centre ``size_hw``, padded with 0 where the resized image is smaller."""
        return tvf.center_crop(image_chw, list(self.size_hw))

    def image(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> normalized float32 (3, h, w)."""
        uint8_chw = tvf.pil_to_tensor(image.convert("RGB"))
        resized = self._resize(uint8_chw, InterpolationMode(self.interpolation))
        scaled = resized.to(torch.float32).div_(255.0)
        # cropped after normalizing, so padding is 0 there: the mean colour, not black
        return self._crop(tvf.normalize(scaled, list(self.mean), list(self.std)))

    def view(self, image: Image.Image) -> Image.Image:
        """The model's input as a picture: the image resized and cropped (or letterboxed) exactly as
        :meth:`image` does, at the input size, where patch ``(i, j)`` of the grid is plain to see."""
        mean_c11, std_c11 = (torch.tensor(values).view(3, 1, 1) for values in (self.mean, self.std))
        rgb_chw = (self.image(image) * std_c11 + mean_c11).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return tvf.to_pil_image(rgb_chw)

    def mask(self, labels_hw: np.ndarray) -> np.ndarray:
        """A label map (h, w) -> the same geometry as :meth:`image`, nearest-neighbour, int64.

        Label values are kept exactly: the geometry moves pixel indices (exact in float64, which
        torchvision resizes without a cast) and labels are gathered by index, because resizing
        labels directly goes through float32 and corrupts values above 2**24. Pixels a crop or the
        letterbox pads in get label 0.
        """
        labels = np.asarray(labels_hw, dtype=np.int64)
        if labels.ndim != 2:
            raise DataError(f"a mask must be a 2-d label map (h, w), got shape {labels.shape}")
        height, width = labels.shape
        index_1hw = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, height, width)
        moved_hw = self._crop(self._resize(index_1hw, InterpolationMode.NEAREST_EXACT))[0].round().to(torch.int64)
        padded_flat = np.concatenate([np.zeros(1, dtype=np.int64), labels.reshape(-1)])
        return padded_flat[moved_hw.numpy()]

    def _crop_window(self, image_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Size (h, w) of the image after the resize, and the crop's top-left corner in it (negative
        where the crop pads), by torchvision's rules: the crop anchor is rounded, padding floored."""
        resized_h, resized_w = self._resized_hw(image_hw)
        crop_h, crop_w = self.size_hw

        def anchor(size: int, crop: int) -> int:
            return -((crop - size) // 2) if crop > size else round((size - crop) / 2.0)

        return (resized_h, resized_w), (anchor(resized_h, crop_h), anchor(resized_w, crop_w))

    def unmap(self, map_hw: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """A map over the model input (h, w), any size with the input's aspect, back onto the
        original image: (H, W) float32 on the map's device, the inverse of :meth:`image`'s geometry.
        Several maps at once as (c, h, w) give (c, H, W).

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
        maps_chw = map_hw[None] if map_hw.ndim == 2 else map_hw
        sampled_chw = torch.nn.functional.grid_sample(
            maps_chw.to(torch.float32)[None], grid_hw2[None].to(torch.float32),
            mode="bilinear", padding_mode="border", align_corners=False,
        )[0]
        inside_hw = ((rows >= 0) & (rows < 1))[:, None] & ((cols >= 0) & (cols < 1))[None, :]
        unmapped = sampled_chw * inside_hw
        return unmapped[0] if map_hw.ndim == 2 else unmapped

    def fitted(self, fit: Fit) -> Preprocess:
        """This preprocessing with the geometry ``fit`` asks for (see :data:`Fit`); ``crop`` is the
        shortest-side resize to ``resize`` and centre crop."""
        return replace(self, resize_mode=_FIT_MODES[fit])

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
