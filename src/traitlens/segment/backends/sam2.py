"""``--backend sam2``: Static Segmentation by Tracking as its authors run it. The support images
are the first frames of a pseudo-video (each with its label map, every label an object), the images
to segment follow, and SAM 2's video predictor tracks every object through them with its memory of
recent frames. Each batch is one pseudo-video, so a killed run resumes at a batch.

SAM 2 is optional (``pip install sam2``, with ``SAM2_BUILD_CUDA=0`` on machines without a CUDA
compiler; its PyPI release is a packaging of Meta's code). Its checkpoint is read by SAM 2's own
loader (``torch.load(..., weights_only=True)``: tensors only, never arbitrary objects); the model
config follows the checkpoint's name unless ``--sam2-config`` names one. ``--random-init`` builds
the model with random weights, which checks the wiring and nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from traitlens.digests import file_sha256
from traitlens.distributed import Workers
from traitlens.errors import first_line
from traitlens.segment.backends import Segmented, confident_labels, register_backend
from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.support import SupportImage

INSTALL = "SAM2_BUILD_CUDA=0 pip install sam2"
# checkpoint file stems (Meta's release names) -> the model config inside the sam2 package
CONFIGS = {"sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
           "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
           "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
           "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml"}
RANDOM_INIT_CONFIG = CONFIGS["sam2.1_hiera_tiny"]


def _model_config(config: SegmentConfig) -> str:
    if config.sam2_config is not None:
        return config.sam2_config
    if config.sam2_checkpoint is None:
        return RANDOM_INIT_CONFIG
    stem = config.sam2_checkpoint.stem
    if stem not in CONFIGS:
        raise SegmentError(f"cannot tell the model config of SAM 2 checkpoint {config.sam2_checkpoint} from its name; pass "
                           f"--sam2-config (one of {', '.join(sorted(set(CONFIGS.values())))})")
    return CONFIGS[stem]


class Sam2Backend:
    def __init__(self, config: SegmentConfig, n_labels: int) -> None:
        try:
            from sam2.build_sam import build_sam2_video_predictor
        except ImportError as error:
            raise SegmentError(f"--backend sam2 needs the sam2 package ({first_line(error)}); install it with: {INSTALL}") from error
        if config.pretrained and config.sam2_checkpoint is None:
            raise SegmentError("--backend sam2 needs --sam2-checkpoint PATH (a SAM 2 checkpoint such as sam2.1_hiera_tiny.pt, "
                               "from Meta's release); --random-init builds an untrained model for checking the wiring only")
        if config.sam2_checkpoint is not None and not config.sam2_checkpoint.is_file():
            raise SegmentError(f"SAM 2 checkpoint {config.sam2_checkpoint} does not exist")
        self.config, self.n_labels = config, n_labels
        self.model_config = _model_config(config)
        overrides = [] if config.sam2_image_size is None else [f"++model.image_size={config.sam2_image_size}"]
        torch.manual_seed(0)  # the random-init model is the same every run
        try:
            self.predictor = build_sam2_video_predictor(
                self.model_config, ckpt_path=None if not config.pretrained else str(config.sam2_checkpoint),
                device=str(Workers(0, 1).device(config.device)), hydra_overrides_extra=overrides)
        except Exception as error:  # hydra, a checkpoint of another model, a damaged file: all one line
            raise SegmentError(f"cannot build SAM 2 from {self.model_config} and {config.sam2_checkpoint}: {first_line(error)}") from error
        self.predictor.fill_hole_area = 0  # hole filling needs SAM 2's compiled extension, absent on CPU installs
        self.supports: tuple[SupportImage, ...] = ()

    def identity(self) -> dict[str, Any]:
        checkpoint = self.config.sam2_checkpoint
        # the file's content, not its path: a checkpoint replaced in place is another job
        weights = None if not self.config.pretrained or checkpoint is None else file_sha256(checkpoint)
        return {"sam2_model_config": self.model_config, "sam2_image_size": int(self.predictor.image_size),
                "sam2_checkpoint_sha256": weights}

    def start(self, supports: tuple[SupportImage, ...]) -> None:
        self.supports = supports

    @torch.inference_mode()
    def segment(self, images: list[Image.Image]) -> list[Segmented]:
        """One pseudo-video: the support frames (their masks added), then ``images``."""
        frames = [support.image for support in self.supports] + images
        with tempfile.TemporaryDirectory(prefix="traitlens-sam2-") as folder:
            for number, frame in enumerate(frames):  # SAM 2 reads a video as JPEG frames named by number
                frame.convert("RGB").resize(frames[-1].size).save(Path(folder) / f"{number:05d}.jpg", quality=95)
            state = self.predictor.init_state(video_path=folder)
        for number, support in enumerate(self.supports):
            labels_hw = torch.from_numpy(support.labels_hw)
            for label in sorted(set(labels_hw.unique().tolist()) - {0}):
                self.predictor.add_new_mask(state, frame_idx=number, obj_id=int(label), mask=(labels_hw == label).numpy())
        logits_by_frame: dict[int, tuple[list[int], torch.Tensor]] = {}
        for frame_idx, object_ids, masks_o1hw in self.predictor.propagate_in_video(state):
            if frame_idx >= len(self.supports):
                logits_by_frame[frame_idx] = (list(object_ids), masks_o1hw[:, 0].float().cpu())
        results = []
        for number, image in enumerate(images, start=len(self.supports)):
            object_ids, logits_ohw = logits_by_frame[number]
            logits_ohw = F.interpolate(logits_ohw[None], size=(image.height, image.width), mode="bilinear")[0]
            # a background channel at logit 0: a pixel no object claims (logit < 0) stays background
            scores_chw = torch.full((self.n_labels, image.height, image.width), float("-inf"))
            scores_chw[0] = 0.0
            for row, label in enumerate(object_ids):
                scores_chw[label] = logits_ohw[row]
            results.append(confident_labels(torch.softmax(scores_chw, dim=0)))
        return results

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        pass


register_backend("sam2", Sam2Backend, "SAM 2's video predictor tracks each label from the support frames through the images "
                                      f"(Static Segmentation by Tracking; {INSTALL}; --sam2-checkpoint)")
