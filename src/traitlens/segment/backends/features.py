"""``--backend features``: labels carried by patch-feature affinity in one of the model's layers
(:mod:`traitlens.segment.propagation`), then taken to pixels (:mod:`traitlens.segment.refine`).
Works offline on every backbone traitlens loads."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from traitlens.backbones import Backbone, load_backbone
from traitlens.distributed import Workers
from traitlens.segment.backends import Segmented, confident_labels, register_backend
from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.propagation import DescribedMemory, Fine, LabelMemory, cell_size, patch_cells, propagate, unit_features
from traitlens.segment.refine import pixel_scores
from traitlens.segment.support import SupportImage

MAX_REFINED_SIDE = 1024


def default_segment_layer(backbone: Backbone) -> str:
    """The layer two thirds of the way down the model (rounded up): deep enough to tell parts
    apart, early enough to keep where they are (the last layers of a classifier pool towards the
    class). Chosen on the specimens benchmark's choice seed; docs/results.md shows every layer."""
    names = backbone.layer_names
    return names[min(len(names) - 1, -(-2 * len(names) // 3) - 1)]


class FeatureBackend:
    def __init__(self, config: SegmentConfig, n_labels: int, backbone: Backbone | None = None) -> None:
        self.config, self.n_labels = config, n_labels
        if backbone is None:
            backbone = load_backbone(config.model, weights=config.weights, pretrained=config.pretrained)
        self.backbone = backbone.to(Workers(0, 1).device(config.device))
        self.layer = backbone.resolve_layer(config.layer) if config.layer is not None else default_segment_layer(backbone)
        self.layout = backbone.layer(self.layer).layout
        self.preprocess = backbone.preprocess.fitted(config.fit)
        self.memory: LabelMemory | None = None
        self.fine = Fine(config.colour_scale, config.contrast_scale, config.place_scale)
        self.cell_hw = cell_size(self.preprocess.size_hw, self.layout.grid_hw)
        (input_h, input_w), (grid_h, grid_w) = self.preprocess.size_hw, self.layout.grid_hw
        if not 0.5 <= (grid_h / grid_w) / (input_h / input_w) <= 2:
            raise SegmentError(f"the tokens of {self.layer} of {backbone.spec} do not form a patch grid of the image "
                               f"({grid_h}x{grid_w} for a {input_h}x{input_w} input); choose another --layer")

    def identity(self) -> dict[str, Any]:
        return {"model_spec": self.backbone.spec, "weights_fingerprint": self.backbone.weights_fingerprint(),
                "layer_used": self.layer, "grid_hw": list(self.layout.grid_hw)}

    def _encode(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit patch features (b, patches, d) at the layer, and each patch's pixel colours
        (b, patches, q, 3) in [0, 1] at the model's input."""
        pixels_bchw = torch.stack([self.preprocess.image(image) for image in images])
        tokens_btd = self.backbone.tokens(pixels_bchw.to(self.backbone.device), self.layer)[self.layer]
        mean_13hw, std_13hw = (torch.tensor(values).view(1, 3, 1, 1) for values in (self.preprocess.mean, self.preprocess.std))
        rgb_bchw = (pixels_bchw * std_13hw + mean_13hw).clamp(0, 1)
        return unit_features(self.layout.select(tokens_btd, "patch")).cpu(), patch_cells(rgb_bchw, self.layout.grid_hw)

    def start(self, supports: tuple[SupportImage, ...]) -> None:
        keys_bpd, colours_bpq3 = self._encode([support.image for support in supports])
        labels_b1hw = torch.stack([torch.from_numpy(self.preprocess.mask(support.labels_hw)) for support in supports])[:, None]
        labels_bpq = patch_cells(labels_b1hw, self.layout.grid_hw)[..., 0].to(torch.int64)
        self.memory = LabelMemory(keys_bpd.flatten(0, 1), colours_bpq3.flatten(0, 1), labels_bpq.flatten(0, 1), self.config.memory)

    def _radius(self, image: Image.Image) -> int:
        if self.config.radius is not None:
            return self.config.radius
        patch_side = min(image.height / self.layout.grid_hw[0], image.width / self.layout.grid_hw[1])
        return max(1, round(patch_side / 2))

    def _pixels(self, probs_pqc: torch.Tensor, image: Image.Image) -> Segmented:
        """Cell probabilities at the model input -> labels at the image's own size. A large photo is
        refined at most ``MAX_REFINED_SIDE`` pixels a side, then upsampled: the filter holds a few
        dozen float64 planes of its working size at once."""
        (grid_h, grid_w), (cell_h, cell_w) = self.layout.grid_hw, self.cell_hw
        probs_chw = (probs_pqc.reshape(grid_h, grid_w, cell_h, cell_w, -1).permute(4, 0, 2, 1, 3)
                     .reshape(-1, grid_h * cell_h, grid_w * cell_w))
        image_hw = (image.height, image.width)
        scale = min(1.0, MAX_REFINED_SIDE / max(image_hw))
        work_hw = (max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale)))
        scores_chw = self.preprocess.unmap(probs_chw, work_hw)
        rgb_3hw = None
        if self.config.refine == "guided":
            rgb_3hw = tvf.pil_to_tensor(image.convert("RGB").resize((work_hw[1], work_hw[0]), Image.Resampling.BILINEAR))
            rgb_3hw = rgb_3hw.to(torch.float32) / 255.0
        refined_chw = pixel_scores(scores_chw, rgb_3hw, max(1, round(self._radius(image) * scale)), self.config.eps)
        if work_hw != image_hw:
            refined_chw = F.interpolate(refined_chw[None], size=image_hw, mode="bilinear", align_corners=False)[0]
        return confident_labels(refined_chw)

    def segment(self, images: list[Image.Image]) -> list[Segmented]:
        assert self.memory is not None, "start() first"
        queries_bpd, colours_bpq3 = self._encode(images)
        memory = DescribedMemory.of(self.memory, self.fine)
        probs = [propagate(queries_pd, colours_pq3, self.cell_hw, memory, self.n_labels, self.config.n_neighbours,
                           self.config.temperature, self.fine) for queries_pd, colours_pq3 in zip(queries_bpd, colours_bpq3, strict=True)]
        self.memory.remember(queries_bpd, colours_bpq3, torch.stack([probs_pqc.argmax(-1) for probs_pqc in probs]))
        return [self._pixels(probs_pqc, image) for probs_pqc, image in zip(probs, images, strict=True)]

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.memory is None else self.memory.state()

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        assert self.memory is not None, "start() first"
        self.memory.restore(state)


register_backend("features", FeatureBackend,
                 "each patch matched to its nearest support patches by the features of --layer, each pixel labelled by the "
                 "look-alike pixels of those patches, then refined by the image (works offline on any model)")


