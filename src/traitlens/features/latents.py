"""Reading a finished features directory: one latent's activations, its maps and its statistics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np

from traitlens.backbones.layout import TokenLayout, TokenSelection
from traitlens.features.association import BlockNonzeros, image_activations
from traitlens.features.directory import member, read_features_manifest, read_statistics
from traitlens.features.files import FeaturesError
from traitlens.features.sparse_columns import FloatArray, IntArray, SparseColumns


def _best(ap_c: np.ndarray, prevalence_c: np.ndarray) -> tuple[int | None, float | None]:
    """The column whose AP is furthest above chance (its prevalence; the first of ties) and its
    AP; (None, None) when no AP is defined. Raw AP would name the most common label for almost
    every latent, since a latent unrelated to a label still scores its prevalence."""
    lift_c = ap_c - prevalence_c
    if not len(lift_c) or np.isnan(lift_c).all():
        return None, None
    index = int(np.nanargmax(lift_c))
    return index, float(ap_c[index])


@dataclass(frozen=True)
class FeaturesSummary:
    """Counts over every latent of a features directory."""

    nnz: int
    alive: int
    dead: int
    mean_l0: float
    n_nonfinite_tokens: int


@dataclass(frozen=True)
class LabelPositives:
    """Which patches the label AP counts as positive, and over how many."""

    rule: str
    min_coverage: float
    n_images: int
    n_patches: int


class LatentFeatures:
    """A features directory written by :func:`traitlens.features.analyze_features`. Its manifest
    is checked on reading and read through the typed properties below (``manifest`` is the JSON as
    written, for provenance)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FeaturesError(f"no features directory at {self.root}")
        self.manifest: dict[str, Any] = read_features_manifest(self.root)
        indptr, rows, values = (member(self.root, self.manifest, role) for role in ("indptr", "rows", "values"))
        self.columns = SparseColumns(self.root, self.manifest["n_tokens"], (indptr, rows, values))
        if self.columns.width != self.width:
            raise FeaturesError(f"the latent columns in {self.root} hold {self.columns.width} latents, its manifest {self.width}")
        self._statistics = read_statistics(member(self.root, self.manifest, "statistics"), self.manifest, self.columns.counts_w)

    @property
    def width(self) -> int:
        return int(self.manifest["width"])

    @property
    def sae(self) -> str:
        """Where the SAE was when the features were computed."""
        return str(self.manifest["sae"])

    @property
    def acts(self) -> str:
        """The activation store the features were computed on."""
        return str(self.manifest["acts"])

    @property
    def layer(self) -> str:
        return str(self.manifest["layer"])

    @property
    def tokens(self) -> TokenSelection:
        """Which tokens of each image the features cover."""
        return cast(TokenSelection, self.manifest["tokens"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def summary(self) -> FeaturesSummary:
        summary = self.manifest["summary"]  # each value checked by the reader
        return FeaturesSummary(int(summary["nnz"]), int(summary["alive"]), int(summary["dead"]), float(summary["mean_l0"]),
                               int(summary["n_nonfinite_tokens"]))

    @property
    def label_positives(self) -> LabelPositives | None:
        positives = self.manifest["label_positives"]
        if positives is None:
            return None
        return LabelPositives(str(positives["rule"]), float(positives["min_coverage"]), int(positives["n_images"]),
                              int(positives["n_patches"]))

    @property
    def label_note(self) -> str | None:
        """Why there is no label AP (the store's masks could not be read), when there is none."""
        note = self.manifest["label_note"]
        return None if note is None else str(note)

    @property
    def sae_sha256(self) -> str:
        """The SHA-256 of the weights of the SAE these features were computed with, as
        :func:`traitlens.features.sae_weights_sha256` hashes a saved SAE."""
        recorded = (self.manifest.get("job") or {}).get("sae_sha256")
        if not isinstance(recorded, str):
            raise FeaturesError(f"the features at {self.root} do not record their SAE's hash; compute them again")
        return recorded

    @property
    def n_images(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def tokens_per_image(self) -> int:
        return int(self.manifest["tokens_per_image"])

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout.from_dict(self.manifest["layout"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"] or [])

    @property
    def label_names(self) -> list[str]:
        """Names of the ``label_ap`` columns: the mask labels but background."""
        return list(self.manifest["label_names"])

    def _array(self, name: str) -> np.ndarray:
        return self._statistics[name]

    @property
    def count(self) -> IntArray:
        """Tokens where each latent fires (width,)."""
        return self._array("count_w")

    @property
    def frequency(self) -> np.ndarray:
        """Share of stored tokens where each latent fires (width,) float64."""
        return self._array("frequency_w")

    @property
    def mean_activation(self) -> np.ndarray:
        """Mean activation over the tokens where each latent fires, 0 for a dead one (width,) float64."""
        return self._array("mean_activation_w")

    @property
    def max_activation(self) -> FloatArray:
        return self._array("max_activation_w")

    @property
    def class_mean(self) -> np.ndarray:
        """Mean image activation per class (width, n_classes) float64."""
        return self._array("class_mean_wc")

    @property
    def class_ap(self) -> np.ndarray:
        """Average precision of the image activation ranking each class's images (width, n_classes)."""
        return self._array("class_ap_wc")

    @property
    def label_ap(self) -> np.ndarray:
        """Average precision of the patch activations ranking each label's patches (width, n_labels)."""
        return self._array("label_ap_wl")

    @property
    def class_prevalence(self) -> np.ndarray:
        """Share of the labelled images in each class (n_classes,): the chance level of ``class_ap``."""
        return self._array("class_prevalence_c")

    @property
    def label_prevalence(self) -> np.ndarray:
        """Share of the masked images' patches showing each label (n_labels,): the chance level of ``label_ap``."""
        return self._array("label_prevalence_l")

    @cached_property
    def alive(self) -> np.ndarray:
        """Indices of the latents that fire at least once, ascending."""
        return np.flatnonzero(self.count > 0)

    def latent(self, latent: int) -> tuple[IntArray, FloatArray]:
        """(store rows ascending (n,), activations (n,)) where ``latent`` fires."""
        return self.columns.column(latent)

    def image_activations(self, latent: int) -> FloatArray:
        """The latent's largest activation over each image's stored tokens (n_images,)."""
        rows_n, values_n = self.latent(latent)
        block = BlockNonzeros(1, np.zeros(len(rows_n), dtype=np.int64), rows_n, values_n)
        return image_activations(block, self.n_images, self.tokens_per_image)[0]

    def patch_map(self, latent: int, image: int) -> FloatArray:
        """The latent's activation on each patch of one image, (grid_h, grid_w)."""
        layout, kind = self.layout, self.manifest["tokens"]
        if kind == "cls":
            raise FeaturesError(f"the features at {self.root} come from CLS tokens only; there are no patch maps")
        if not 0 <= image < self.n_images:
            raise FeaturesError(f"image {image} out of range 0..{self.n_images - 1}")
        first = image * self.tokens_per_image + layout.first_patch(kind)
        rows_n, values_n = self.latent(latent)
        lo, hi = np.searchsorted(rows_n, [first, first + layout.n_patches])
        map_p = np.zeros(layout.n_patches, dtype=np.float32)
        map_p[rows_n[lo:hi] - first] = values_n[lo:hi]
        return map_p.reshape(layout.grid_hw)

    def top_images(self, latent: int) -> tuple[IntArray, FloatArray]:
        """(image indices (n,), image activations (n,)) of the at most top_k images the latent
        activates most, strongest first."""
        images_k, values_k = self._array("top_images_wk")[latent], self._array("top_image_values_wk")[latent]
        found = images_k >= 0
        return images_k[found], values_k[found]

    def top_tokens(self, latent: int) -> tuple[IntArray, FloatArray]:
        """(store rows (n,), activations (n,)) of the at most top_k strongest tokens."""
        rows_k, values_k = self._array("top_tokens_wk")[latent], self._array("top_token_values_wk")[latent]
        found = rows_k >= 0
        return rows_k[found], values_k[found]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per latent: ``latent``, ``frequency``, ``mean``, ``max``, ``top_class`` (the
        class whose images its image activation ranks best) and ``class_ap``, ``top_label`` (the mask label its
        patch activations rank best) and ``label_ap``; names and APs are None where undefined.
        "Best" is furthest above chance (AP minus the class's or label's prevalence)."""
        rows = []
        classes, labels = self.class_names, self.label_names
        frequency, mean, maximum = self.frequency, self.mean_activation, self.max_activation
        for latent in range(self.width):
            top_class, class_ap = _best(self.class_ap[latent], self.class_prevalence)
            top_label, label_ap = _best(self.label_ap[latent], self.label_prevalence)
            rows.append({
                "latent": latent, "frequency": float(frequency[latent]), "mean": float(mean[latent]),
                "max": float(maximum[latent]),
                "top_class": None if top_class is None else classes[top_class], "class_ap": class_ap,
                "top_label": None if top_label is None else labels[top_label], "label_ap": label_ap,
            })
        return rows

