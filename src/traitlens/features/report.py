"""A static HTML report of a features directory: an index of latents and a page per latent with
its top images, each with the latent's patch heatmap drawn over the image the model saw.

Opened from disk, no server: ``report/index.html``, ``report/latents/<j>.html`` and
``report/images/<image>.png`` (each top image once, as the model saw it), linked by relative paths.
A latent's heatmap is a patch-grid-sized PNG inlined in its page and stretched over the image by
the browser: drawing and compressing a full-size overlay per (latent, image) would make the report
the slowest and largest part of the job.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from traitlens.atomic import atomic_write_bytes
from traitlens.backbones.preprocess import Preprocess
from traitlens.data import ImageSource, UnreadableImageError
from traitlens.errors import TraitlensError
from traitlens.features.files import FeaturesError
from traitlens.features.latents import LatentFeatures
from traitlens.features.report_html import Figure, index_page, latent_file, latent_page
from traitlens.features.store_images import open_store_source, source_indices
from traitlens.overlay import MAX_OPACITY, colorize
from traitlens.store import ActivationStore

log = logging.getLogger(__name__)

# Drawn images are at most this many pixels on a side: the model's view of larger inputs is scaled down.
MAX_IMAGE_SIDE = 160
TOP_CLASSES = 10


class _ModelViews:
    """The images of a store as its model saw them (after resize and crop), as RGB PIL images."""

    def __init__(self, store: ActivationStore, source: ImageSource) -> None:
        self.store, self.source = store, source
        self.index_of = source_indices(store, source)
        settings = store.manifest.get("preprocess")
        self.preprocess = Preprocess.from_dict(settings) if settings is not None else None

    def image(self, image: int) -> Image.Image:
        if image not in self.index_of:
            raise UnreadableImageError(f"image {self.store.images[image].source} of the store is no longer in {self.source.root}")
        loaded = self.source.load_image(self.index_of[image]).convert("RGB")
        if self.preprocess is not None:
            pre = self.preprocess
            normalized_hwc = pre.image(loaded).permute(1, 2, 0).numpy()
            rgb_hwc = np.clip(normalized_hwc * np.array(pre.std) + np.array(pre.mean), 0.0, 1.0)
            loaded = Image.fromarray(np.round(255 * rgb_hwc).astype(np.uint8))
        if max(loaded.size) > MAX_IMAGE_SIDE:
            scale = MAX_IMAGE_SIDE / max(loaded.size)
            loaded = loaded.resize((max(1, round(loaded.width * scale)), max(1, round(loaded.height * scale))), Image.Resampling.BILINEAR)
        return loaded


def _open_views(features: LatentFeatures) -> tuple[_ModelViews | None, ActivationStore | None, str | None]:
    """The model views of the store's images, the store, and why images cannot be shown (or None)."""
    acts = Path(features.acts)
    try:
        store = ActivationStore(acts)
    except TraitlensError:
        return None, None, f"The activation store at {acts} is gone, so its images are not shown."
    source = open_store_source(store)
    if isinstance(source, str):
        return None, store, f"{source[0].upper()}{source[1:]}, so they are not shown."
    return _ModelViews(store, source), store, None


def _heat_layer(features: LatentFeatures, latent: int, image: int) -> str | None:
    """The latent's patch map on one image as a data-URI PNG of the patch grid's size, colour and
    opacity from the activation divided by the latent's max as
    :func:`traitlens.overlay.overlay` draws them. The page stretches it over the image, so
    the browser does the bilinear upsampling. None for CLS tokens, which have no patch map."""
    if features.tokens == "cls":
        return None
    peak = max(float(features.max_activation[latent]), 1e-12)
    heat_hw = np.clip(features.patch_map(latent, image) / peak, 0.0, 1.0).astype(np.float64)
    rgba_hw4 = np.concatenate([colorize(heat_hw), (255 * MAX_OPACITY * heat_hw)[..., None]], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.round(rgba_hw4).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _draw_views(views: _ModelViews, images: list[int], images_dir: Path) -> dict[int, tuple[int, int]]:
    """Write each image as the model saw it to ``images/<image>.png``; returns the (width, height)
    of those drawn (an unreadable image is logged and left out)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for image in images:
        try:
            view = views.image(image)
        except (TraitlensError, OSError) as error:
            log.warning("cannot draw image %d: %s", image, error)
            continue
        buffer = io.BytesIO()
        view.save(buffer, format="PNG")
        atomic_write_bytes(images_dir / f"{image}.png", buffer.getvalue())
        sizes[image] = view.size
    return sizes


def label_ap_definition(features: LatentFeatures) -> str | None:
    """What a features directory's label AP is over, and what a positive patch is, as a sentence;
    why there is none when the store's masks could not be read; None without masks."""
    positives = features.label_positives
    if positives is not None:
        return (f"Label AP is over the {positives.n_patches:,} patches of the {positives.n_images:,} store images "
                f"with a mask, where {positives.rule}.")
    note = features.label_note
    return f"{note[0].upper()}{note[1:]}." if note else None


def _best_first(ap_c: np.ndarray, prevalence_c: np.ndarray) -> list[int]:
    """Column indices by AP above chance, highest first, ties to the lower index, NaN last."""
    lift_c = np.nan_to_num(ap_c - prevalence_c, nan=-np.inf)
    return [int(c) for c in np.lexsort((np.arange(len(ap_c)), -lift_c))]


def _chosen_latents(features: LatentFeatures, max_latents: int | None) -> list[int]:
    """The alive latents, or the ``max_latents`` most frequent of them (ties to the lower index),
    in latent order."""
    alive = features.alive
    if max_latents is not None and max_latents < len(alive):
        order = np.lexsort((alive, -features.frequency[alive]))
        alive = np.sort(alive[order[:max_latents]])
    return [int(latent) for latent in alive]


def write_report(features_dir: str | Path, out: str | Path | None = None, max_latents: int | None = None,
                 images_per_latent: int = 8) -> Path:
    """Write the report of a features directory into ``out`` (default ``features_dir/report``);
    returns the path of its ``index.html``. Images come from the store's image source through its
    preprocessing; when they are gone the pages say so and show none."""
    features = LatentFeatures(features_dir)
    if max_latents is not None and max_latents < 1:
        raise FeaturesError(f"max_latents must be at least 1, got {max_latents}")
    if images_per_latent < 0:
        raise FeaturesError(f"images_per_latent must be at least 0, got {images_per_latent}")
    root = Path(out) if out is not None else Path(features_dir) / "report"
    (root / "latents").mkdir(parents=True, exist_ok=True)
    latents = _chosen_latents(features, max_latents)
    listed = set(latents)
    for stale in (root / "latents").glob("*.html"):  # pages of latents an earlier report listed
        if stale.stem.isdigit() and int(stale.stem) not in listed:
            stale.unlink()
    rows = features.summary_rows()
    views, store, image_note = _open_views(features)

    tops = {latent: [(int(image), float(value)) for image, value in zip(*features.top_images(latent), strict=True)][:images_per_latent]
            for latent in latents}
    sizes: dict[int, tuple[int, int]] = {}
    if views is not None:
        sizes = _draw_views(views, sorted({image for top in tops.values() for image, _ in top}), root / "images")
        n_missing = len({image for top in tops.values() for image, _ in top} - set(sizes))
        if n_missing:
            image_note = f"{n_missing} of the store's images could not be read, so they are not shown."

    classes, labels = features.class_names, features.label_names
    label_definition = label_ap_definition(features)
    for position, latent in enumerate(latents):
        figures = []
        for image, value in tops[latent]:
            stored = store.images[image] if store is not None else None
            label = f" · {stored.label}" if stored is not None and stored.label else ""
            figures.append(Figure(
                path=f"images/{image}.png" if image in sizes else None, size_wh=sizes.get(image),
                heat=_heat_layer(features, latent, image) if image in sizes else None,
                caption=f"image {image}{label} · {value:.3f}", title=stored.source if stored is not None else f"image {image}",
            ))
        class_ap_c, class_mean_c, label_ap_l = features.class_ap[latent], features.class_mean[latent], features.label_ap[latent]
        class_chance_c, label_chance_l = features.class_prevalence, features.label_prevalence
        neighbours = (latents[position - 1] if position > 0 else None, latents[position + 1] if position + 1 < len(latents) else None)
        page = latent_page(rows[latent], int(features.count[latent]), figures, image_note, label_definition,
                           [(classes[c], float(class_mean_c[c]), float(class_ap_c[c]), float(class_chance_c[c]))
                            for c in _best_first(class_ap_c, class_chance_c)[:TOP_CLASSES]],
                           [(labels[c], float(label_ap_l[c]), float(label_chance_l[c])) for c in _best_first(label_ap_l, label_chance_l)],
                           neighbours)
        atomic_write_bytes(root / latent_file(latent), page.encode())

    summary = features.summary
    shown = "all alive latents" if len(latents) == summary.alive else f"the {len(latents)} most frequent alive latents"
    meta = [f"SAE {features.sae} on layer {features.layer} of {features.acts}",
            f"{features.n_tokens:,} {features.tokens} tokens of {features.n_images:,} images; "
            f"{summary.alive:,} of {features.width:,} latents fire ({summary.dead:,} dead), "
            f"{summary.mean_l0:.1f} per token on average; listing {shown}.",
            "Class AP: how well the latent's image activation (its max over the image's tokens) ranks the class's images "
            "among the store's images with a class. Label AP: how well its patch activations rank the patches positive for a "
            "mask label. The top class and best label are those furthest above chance (their prevalence, the AP of an "
            "unrelated latent).", *([label_definition] if label_definition else [])]
    index = root / "index.html"
    atomic_write_bytes(index, index_page([rows[latent] for latent in latents], f"SAE latents of {features.layer}", meta).encode())
    return index
