"""A specimens benchmark as scoring reads it: ``traits.json`` and the per-image label maps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from traitlens.data import open_image_source
from traitlens.data.images import decode_label_map
from traitlens.errors import DataError, TraitlensError
from traitlens.specimens.catalog import Lookalike
from traitlens.specimens.generate import TRAITS_FILE
from traitlens.store.reader import ActivationStore


class ScoringError(TraitlensError):
    """Inputs to a score do not fit together (shapes, values, options)."""



@dataclass(frozen=True)
class Benchmark:
    """What scoring needs from a benchmark folder's ``traits.json``."""

    root: Path
    trait_labels: dict[str, int]
    lookalikes: tuple[Lookalike, ...]
    image_species: dict[str, str]

    def resolve(self, source: str) -> str:
        """The benchmark image (``images/<species>/<stem>.png``) of a store image's source, which is
        relative to the folder it was extracted from: the benchmark root or its ``images/``."""
        for candidate in (source, f"images/{source}"):
            if candidate in self.image_species:
                return candidate
        raise DataError(f"store image {source} is not an image of the benchmark at {self.root} (see its {TRAITS_FILE})")

    def annotation(self, source: str) -> np.ndarray:
        """The (h, w) int64 label map of a benchmark image."""
        path = self.root / "annotations" / PurePosixPath(source).relative_to("images").with_suffix(".png")
        if not path.is_file():
            raise DataError(f"annotation {path} of benchmark image {source} is missing")
        return decode_label_map(path, str(path.relative_to(self.root)))

    def distinguishing_traits(self, species: str) -> tuple[str, ...]:
        """The traits that tell ``species`` from its look-alikes, sorted; empty when it has none."""
        return tuple(sorted({pair.trait for pair in self.lookalikes if species in (pair.a, pair.b)}))

    def species_of(self, sources: Sequence[str]) -> list[str]:
        """The species of each image of a source (paths relative to the benchmark or its ``images/``)."""
        return [self.image_species[self.resolve(source)] for source in sources]

    def class_index(self, class_names: Sequence[str] | None, model: str) -> dict[str, int]:
        """Each class of a model by name, refused in one line when the model has no class names or
        lacks a species of a look-alike pair."""
        if class_names is None:
            raise ScoringError(f"{model} has no class names to compare with the benchmark's species")
        index = {name: i for i, name in enumerate(class_names)}
        missing = sorted({name for pair in self.lookalikes for name in (pair.a, pair.b)} - set(index))
        if missing:
            raise ScoringError(f"species {', '.join(missing[:5])} are not classes of {model}")
        return index

    def distinguishing_mask(self, source: str) -> np.ndarray:
        """(h, w) bool: the pixels of a benchmark image that show its species' distinguishing traits."""
        traits = self.distinguishing_traits(self.image_species[source])
        return np.isin(self.annotation(source), [self.trait_labels[trait] for trait in traits])


def read_benchmark(root: Path) -> Benchmark:
    """Read ``root/traits.json``; DataError when it is missing or malformed."""
    path = root / TRAITS_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a specimens benchmark: {TRAITS_FILE} missing")
    try:
        data = json.loads(path.read_text())
        trait_labels = {str(trait["name"]): int(trait["label"]) for trait in data["traits"]}
        lookalikes = tuple(Lookalike(str(pair["a"]), str(pair["b"]), str(pair["trait"])) for pair in data["lookalikes"])
        image_species = {str(image["source"]): str(image["species"]) for image in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"damaged benchmark description {path}: {type(error).__name__} {error}") from error
    if any(label < 2 for label in trait_labels.values()):
        raise DataError(f"{path}: trait labels must be 2 or more (0 is background, 1 the body)")
    unknown = sorted({pair.trait for pair in lookalikes} - set(trait_labels))
    if unknown:
        raise DataError(f"{path}: look-alike pairs name unknown traits: {', '.join(unknown)}")
    return Benchmark(root, trait_labels, lookalikes, image_species)


def check_store_of(store: ActivationStore, data: Path) -> None:
    """Refuse a store extracted from other images than the benchmark at ``data`` (the folder or its
    ``images/``), by the image source's fingerprint the store recorded."""
    recorded = store.manifest["dataset"]["fingerprint"]
    for root in (data, data / "images"):
        if root.is_dir() and open_image_source(root).fingerprint() == recorded:
            return
    raise ScoringError(f"the store at {store.root} was extracted from {store.manifest['dataset']['path']}, "
                       f"not from the benchmark at {data}; extract it from {data}")
