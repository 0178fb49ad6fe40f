"""The patch-label targets of a store: which patch tokens show each mask label, by the rule of
:mod:`traitlens.features.patch_positives` on the masks of the store's image source.

The store's own patch labels (one majority label per patch) are not used: a small part never wins
a patch's majority, so its AP would be undefined, and it would disagree with trait discovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traitlens.features.association import PatchTargets
from traitlens.features.files import FeaturesError
from traitlens.features.patch_positives import mask_geometry, patch_coverage, patch_positives
from traitlens.features.store_images import open_store_source, source_indices
from traitlens.store import ActivationStore
from traitlens.store.manifest import StoredLayer


@dataclass(frozen=True)
class LabelTargets:
    """The targets (None when there are none), the names of their labels (every mask label but
    background 0), and why there are none when the store's source had masks but they cannot be read."""

    targets: PatchTargets | None
    names: list[str]
    note: str | None = None


def _first_patch(store: ActivationStore, layer: StoredLayer) -> int:
    """Index of the first patch token among an image's stored tokens, checked against the layout."""
    return layer.layout.first_patch(store.tokens)  # the manifest was checked to fit the layout


def label_targets(store: ActivationStore, layer: StoredLayer, min_coverage: float) -> LabelTargets:
    """The patch positives of every store image that has a mask (see the module docstring); no
    targets for CLS tokens or a source without masks."""
    if store.tokens == "cls" or layer.patch_label_files is None:
        return LabelTargets(None, [])
    first = _first_patch(store, layer)
    source = open_store_source(store)
    if isinstance(source, str):
        return LabelTargets(None, [], f"no patch-label AP: {source}")
    index_of = source_indices(store, source)
    geometry = mask_geometry(store.manifest.get("preprocess"))
    names = list(store.dataset.mask_names or ["background"])
    images, positives = [], []
    for image in range(store.n_images):
        if image not in index_of:
            raise FeaturesError(f"image {store.images[image].source} of the store at {store.root} is not in {source.root}")
        mask_hw = source.load_mask(index_of[image])
        if mask_hw is None:
            continue
        labels_hw = geometry(mask_hw)
        n_labels = max(len(names), int(labels_hw.max(initial=0)) + 1)
        coverage_pl = patch_coverage(labels_hw, layer.layout.grid_hw, n_labels)
        images.append(image)
        positives.append(patch_positives(coverage_pl, range(1, n_labels), min_coverage))
    n_labels = max([len(names), *(positive.shape[1] + 1 for positive in positives)])
    names += [f"label {label}" for label in range(len(names), n_labels)]
    # images whose masks hold fewer labels than the largest: their missing labels show nowhere
    positives_ql = np.concatenate([np.pad(positive, ((0, 0), (0, n_labels - 1 - positive.shape[1]))) for positive in positives]
                                  ) if positives else np.zeros((0, n_labels - 1), dtype=bool)
    targets = PatchTargets(np.array(images, dtype=np.int64), positives_ql, store.n_images, layer.tokens_per_image, first,
                           layer.layout.n_patches)
    return LabelTargets(targets, names[1:])
