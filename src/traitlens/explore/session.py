"""What ``traitlens explore`` computes, without the web: one model with its SAE, the images it
shows, and per image the predictions, the latents at chosen patches, a latent's map, a CAM and
the effect of latent edits.

Edits go through the same spliced forward pass as ``traitlens steer`` (:func:`steer_batch` with
:func:`latent_edit`, reconstruction error added back) on the same preprocessed pixels, so an edit
shown here is the one the printed ``traitlens steer`` command computes. One lock serializes every
use of the model: its edit and capture hooks are shared state, and requests come from many threads.
"""

from __future__ import annotations

import io
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from traitlens.backbones import TokenSelection
from traitlens.data import ImageSource, UnreadableImageError, open_image_source
from traitlens.data.source import FileImageSource
from traitlens.errors import TraitlensError
from traitlens.explain.maps import cam_maps
from traitlens.explain.methods import CLASSIFIER_METHODS
from traitlens.features import LatentFeatures
from traitlens.features.store_images import open_store_source, source_indices
from traitlens.interventions.edits import EDIT_SYNTAX, LatentEdit, latent_edit
from traitlens.interventions.setup import features_of_sae, load_sae_on_model, resolve_classes
from traitlens.interventions.steer import steer_batch
from traitlens.overlay import overlay
from traitlens.store import ActivationStore

MAX_UPLOADS = 32
"""Uploaded images kept in memory (the oldest go first)."""
THUMBNAIL_SIDE = 160
MAX_UPLOAD_PIXELS = 40_000_000
"""The most pixels an upload may decode to: checked from its header, before decoding."""
UPLOAD_SIDE = 1024
"""Uploads are kept shrunk to at most this side (or four times the model's input, if larger)."""


class ExploreError(TraitlensError):
    """A request the explorer cannot answer: an unknown image or latent, a bad edit or upload."""


@dataclass(frozen=True)
class ExploreConfig:
    """The model and SAE to explore, the images to browse (``data``, optional: uploads work without
    it) and the features directory of this SAE (optional: latents' associations and top images)."""

    model: str
    sae: Path
    data: Path | None = None
    features: Path | None = None
    weights: Path | None = None
    pretrained: bool = True
    layer: str | None = None
    tokens: TokenSelection | None = None
    device: str = "auto"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer:
    """One model, its SAE and the images to browse, answering the explorer's questions."""

    def __init__(self, config: ExploreConfig) -> None:
        self.config = config
        placed = load_sae_on_model(config.model, config.sae, weights=config.weights, pretrained=config.pretrained,
                                   layer=config.layer, tokens=config.tokens, device=config.device)
        self.backbone, self.sae, self.layer, self.tokens = placed.backbone, placed.sae, placed.layer, placed.tokens
        self.layout = self.backbone.layer(self.layer).layout
        if self.tokens == "cls" or self.layout.n_patches == 0:
            raise ExploreError(f"the SAE at {config.sae} reads no patch tokens of {self.layer}; the explorer needs patches")
        self.source: ImageSource | None = None if config.data is None else open_image_source(config.data)
        self.features: LatentFeatures | None = (None if config.features is None else
                                                features_of_sae(config.features, config.sae, self.layer, self.tokens))
        self.lock = threading.Lock()
        self._uploads: OrderedDict[str, Image.Image] = OrderedDict()
        self._n_uploads = 0
        self._cache: OrderedDict[str, _Analysis] = OrderedDict()

    # -- images ---------------------------------------------------------------------------------
    @cached_property
    def class_names(self) -> list[str]:
        if self.backbone.class_names is not None:
            return list(self.backbone.class_names)
        with self.lock, torch.no_grad():
            pixels = torch.zeros(1, 3, *self.backbone.preprocess.size_hw, device=self.backbone.device)
            return [str(index) for index in range(int(self.backbone.forward(pixels).shape[1]))]

    def images(self, offset: int, limit: int) -> dict[str, Any]:
        """One page of the data's images: id, source (relative path) and label."""
        records = [] if self.source is None else self.source.records
        page = [{"id": f"d{index}", "source": records[index].source, "label": records[index].label}
                for index in range(offset, min(offset + limit, len(records)))]
        return {"total": len(records), "images": page}

    def image(self, image_id: str) -> Image.Image:
        """The RGB image ``image_id`` names (``d<index>`` of the data, ``u<n>`` of the uploads)."""
        kind, number = image_id[:1], image_id[1:]
        if not number.isdecimal() or len(number) > 9:
            raise ExploreError(f"no image {image_id!r}")
        index = int(number)
        if kind == "d" and self.source is not None and index < len(self.source):
            try:
                return self.source.load_image(index)
            except UnreadableImageError as error:
                raise ExploreError(str(error)) from error
        if kind == "u":
            with self.lock:  # another request may be dropping the oldest upload right now
                upload = self._uploads.get(image_id)
            if upload is not None:
                return upload
        raise ExploreError(f"no image {image_id!r}")

    def add_upload(self, data: bytes) -> str:
        """Decode an uploaded image (one line on anything but a readable image) and keep it."""
        try:
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > MAX_UPLOAD_PIXELS:
                    raise ValueError(f"{width}x{height} pixels, more than {MAX_UPLOAD_PIXELS:,}")
                opened.load()
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
            raise ExploreError(f"the upload is not an image this server reads ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from error
        side = max(UPLOAD_SIDE, 4 * max(self.backbone.preprocess.size_hw))
        image.thumbnail((side, side))  # 32 full-size photos would hold gigabytes
        with self.lock:
            image_id = f"u{self._n_uploads}"
            self._n_uploads += 1
            self._uploads[image_id] = image
            while len(self._uploads) > MAX_UPLOADS:
                self._uploads.popitem(last=False)
        return image_id

    def thumbnail(self, image_id: str) -> bytes:
        image = self.image(image_id).copy()
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return png_bytes(image)

    def view(self, image_id: str) -> bytes:
        """The image as the model sees it (its crop or letterbox at the input size), as PNG: the
        picture the patch grid is drawn on."""
        return png_bytes(self.backbone.preprocess.view(self.image(image_id)))

    # -- analysis -------------------------------------------------------------------------------
    def _analysis(self, image_id: str) -> _Analysis:
        """Pixels, clean probabilities and the SAE's latents at every patch (cached per image)."""
        cached = self._cache.get(image_id)
        if cached is not None:
            return cached
        pixels_1chw = self.backbone.preprocess.image(self.image(image_id))[None].to(self.backbone.device)
        with self.lock, torch.no_grad(), self.backbone.capture([self.layer]) as tokens:
            logits_1c = self.backbone.forward(pixels_1chw)
            patches_pd = tokens[self.layer][0, self.layout.n_prefix :]
            latents_pw = self.sae.encode(patches_pd.to(self.sae.W_dec.dtype)).float().cpu()
        analysis = _Analysis(pixels_1chw, logits_1c.double().softmax(1)[0].cpu(), latents_pw)
        self._cache[image_id] = analysis
        while len(self._cache) > MAX_UPLOADS:
            self._cache.popitem(last=False)
        return analysis

    def _top(self, probs_c: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
        order = probs_c.argsort(descending=True, stable=True)[:k]
        return [{"class": self.class_names[c], "index": int(c), "probability": float(probs_c[c])} for c in order]

    def predict(self, image_id: str) -> dict[str, Any]:
        """The top-5 classes and the patch grid."""
        return {"predictions": self._top(self._analysis(image_id).probs_c), "grid_hw": list(self.layout.grid_hw),
                "size_hw": list(self.backbone.preprocess.size_hw), "classes": self.class_names}

    def _check_patches(self, patches: list[int]) -> list[int]:
        bad = [patch for patch in patches if not 0 <= patch < self.layout.n_patches]
        if bad or not patches:
            raise ExploreError(f"patches must be 0..{self.layout.n_patches - 1} (row-major on the "
                               f"{self.layout.grid_hw[0]}x{self.layout.grid_hw[1]} grid), got {patches[:8]}")
        return sorted(set(patches))

    def latents_at(self, image_id: str, patches: list[int], top: int = 12) -> list[dict[str, Any]]:
        """The latents active on ``patches``, strongest mean activation there first, with their
        associations and top images when a features directory is given."""
        latents_pw = self._analysis(image_id).latents_pw[self._check_patches(patches)]
        mean_w = latents_pw.mean(0)
        order = [int(w) for w in mean_w.argsort(descending=True, stable=True)[:top] if mean_w[w] > 0]
        return [{"latent": w, "activation": float(mean_w[w]), "max_here": float(latents_pw[:, w].max()),
                 **self._latent_info(w)} for w in order]

    def _latent_info(self, latent: int) -> dict[str, Any]:
        if self.features is None:
            return {"associations": [], "top_images": 0}
        associations = []
        for ap_c, names, kind in ((self.features.class_ap, self.features.class_names, "class"),
                                  (self.features.label_ap, self.features.label_names, "label")):
            if len(names) and ap_c.shape[0] > latent:
                for index in np.argsort(-np.nan_to_num(ap_c[latent], nan=-1.0), kind="stable")[:2]:
                    if np.isfinite(ap_c[latent, index]):
                        associations.append({"kind": kind, "name": names[index], "ap": float(ap_c[latent, index])})
        return {"associations": associations, "top_images": len(self._top_image_indices(latent))}

    def latent_map(self, image_id: str, latent: int) -> dict[str, Any]:
        """The latent's activation on every patch of the image (row-major), with its maximum."""
        latents_pw = self._analysis(image_id).latents_pw
        if not 0 <= latent < latents_pw.shape[1]:
            raise ExploreError(f"no latent {latent}: the SAE has {latents_pw.shape[1]}")
        values = latents_pw[:, latent]
        return {"latent": latent, "values": [float(v) for v in values], "max": float(values.max())}

    # -- features -------------------------------------------------------------------------------
    @cached_property
    def _store_images(self) -> tuple[ImageSource, dict[int, int]] | None:
        """The image source of the features' store, and each store image's index in it (None
        when the store or its images have moved or been deleted since: no top images then)."""
        if self.features is None:
            return None
        try:
            store = ActivationStore(Path(self.features.acts))
            source = open_store_source(store)
            return None if isinstance(source, str) else (source, source_indices(store, source))
        except (TraitlensError, OSError):
            return None

    def _top_image_indices(self, latent: int) -> list[int]:
        found = self._store_images
        if self.features is None or found is None or not 0 <= latent < self.features.width:
            return []
        images, _ = self.features.top_images(latent)
        return [found[1][int(image)] for image in images if int(image) in found[1]]

    def top_image(self, latent: int, rank: int) -> bytes:
        """A thumbnail of the latent's ``rank``-th top image of the features directory."""
        indices = self._top_image_indices(latent)
        found = self._store_images
        if found is None or not 0 <= rank < len(indices):
            raise ExploreError(f"no top image {rank} of latent {latent}")
        try:
            image = found[0].load_image(indices[rank])
        except UnreadableImageError as error:
            raise ExploreError(str(error)) from error
        image.thumbnail((THUMBNAIL_SIDE // 2, THUMBNAIL_SIDE // 2))
        return png_bytes(image)

    # -- edits and maps -------------------------------------------------------------------------
    def steer(self, image_id: str, edits: list[str], patches: list[int] | None) -> dict[str, Any]:
        """Predictions before and after ``edits`` (``12=zero``, ``12*0.5``, ``12=3``) on
        ``patches`` (None: every token the SAE reads), and the command that reproduces them."""
        if not edits:
            raise ExploreError(f"no edit given; write each as {EDIT_SYNTAX}")
        parsed = [LatentEdit.parse(text) for text in edits]
        chosen = None if patches is None else self._check_patches(patches)
        observed_max = None if self.features is None else torch.as_tensor(self.features.max_activation, dtype=torch.float32)
        edit = latent_edit(self.sae, parsed, self.layout, self.tokens, chosen, observed_max)
        analysis = self._analysis(image_id)
        with self.lock:
            clean_1c, edited_1c, _, _ = steer_batch(self.backbone, self.layer, edit, analysis.pixels_1chw)
        before_c, after_c = clean_1c.double().softmax(1)[0].cpu(), edited_1c.double().softmax(1)[0].cpu()
        delta_c = after_c - before_c
        moved = delta_c.abs().argsort(descending=True, stable=True)[:5]
        return {"before": self._top(before_c), "after": self._top(after_c),
                "changes": [{"class": self.class_names[c], "change": float(delta_c[c])} for c in moved],
                "command": self.steer_command(image_id, edits, chosen)}

    def steer_command(self, image_id: str, edits: list[str], patches: list[int] | None) -> str:
        """The ``traitlens steer`` command that computes the same edit on this image (an image
        that is no file of its own, an upload or a table row, is named ``YOUR_IMAGE.png``)."""
        data = Path("YOUR_IMAGE.png")
        if image_id.startswith("d") and isinstance(self.source, FileImageSource):
            data = self.source.paths[int(image_id[1:])]
        argv = ["traitlens", "steer", "--model", self.config.model, "--sae", str(self.config.sae), "--data", str(data),
                "--layer", self.layer, "--tokens", self.tokens, *[f"--edit={edit.strip()}" for edit in edits]]
        if patches is not None:
            argv += ["--patches", ",".join(str(patch) for patch in patches)]
        if self.config.features is not None and any(LatentEdit.parse(edit).op == "max" for edit in edits):
            argv += ["--features", str(self.config.features)]
        if self.config.weights is not None:
            argv += ["--weights", str(self.config.weights)]
        if not self.config.pretrained:
            argv.append("--random-init")
        return shlex.join(argv) + " --out steer-out"

    def cam(self, image_id: str, method: str, target: str | None, reference: str | None) -> bytes:
        """A CAM of ``target`` (default: the predicted class), as Finer-CAM against ``reference``
        when given, drawn over the model's view of the image (PNG)."""
        if method not in CLASSIFIER_METHODS:
            raise ExploreError(f"unknown method {method!r}; choose one of {', '.join(CLASSIFIER_METHODS)}")
        analysis = self._analysis(image_id)
        target_index = int(analysis.probs_c.argmax()) if not target else resolve_classes([target], self.class_names, "class")[0]
        refs = None if not reference else torch.tensor([resolve_classes([reference], self.class_names, "class")])
        with self.lock:
            map_1hw = cam_maps(self.backbone, analysis.pixels_1chw, method, torch.tensor([target_index]), refs)
        return png_bytes(overlay(self.backbone.preprocess.view(self.image(image_id)), map_1hw[0]))


@dataclass
class _Analysis:
    pixels_1chw: torch.Tensor
    probs_c: torch.Tensor
    latents_pw: torch.Tensor
