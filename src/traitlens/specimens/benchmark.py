"""A specimens benchmark as scoring reads it: ``traits.json`` and the per-image label maps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, get_args

import numpy as np

from traitlens.data import open_image_source
from traitlens.data.images import decode_label_map
from traitlens.errors import DataError, TraitlensError, first_line
from traitlens.json_config import parse_standard_json
from traitlens.output_folder import claim_output_folder
from traitlens.specimens.catalog import FIRST_TRAIT_LABEL, Lookalike, Plan, TraitKind
from traitlens.specimens.generate import FORMAT, TRAITS_FILE, VERSION, mask_source
from traitlens.store.reader import ActivationStore


class ScoringError(TraitlensError):
    """Inputs to a score do not fit together (shapes, values, options)."""


def claim_score_folder(out: Path, score: str, overwrite: bool = False, resumable: bool = False) -> None:
    """Claim ``out`` for ``specimens score <score>`` before any work, by the output policy of
    :mod:`traitlens.output_folder` (an earlier result of the same score is replaced only with
    ``overwrite``). The ``score_*`` functions only write into their folder, so that one job (the
    demo, ``specimens report``) can gather several scores in a folder of its own."""
    claim_output_folder(out, f"specimens score {score}", overwrite=overwrite, resumable=resumable, error=ScoringError)


TRAIT_KINDS: tuple[str, ...] = get_args(TraitKind)
PLANS: tuple[str, ...] = get_args(Plan)
MAX_LABEL = 255
"""Label maps are 8-bit PNGs."""


@dataclass(frozen=True)
class Benchmark:
    """What scoring needs from a benchmark folder's ``traits.json``."""

    root: Path
    trait_labels: dict[str, int]
    lookalikes: tuple[Lookalike, ...]
    image_species: dict[str, str]
    twins: dict[str, str] = field(default_factory=dict)
    """Each image's counterfactual twin (``generate --twins``), relative to ``root``; empty for a
    benchmark without twins."""
    masks: dict[str, str] = field(default_factory=dict)
    """Each image's (and twin's) trait masks file, relative to ``root``; empty for a benchmark
    described by its label maps only (written before masks existed, or converted without them)."""
    image_values: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each image's value of every trait: with :meth:`trait_masks`, the mask of each drawn value."""

    def lookalike(self, species: str) -> Lookalike:
        """The look-alike pair ``species`` belongs to."""
        for pair in self.lookalikes:
            if species in (pair.a, pair.b):
                return pair
        raise ScoringError(f"species {species} has no look-alike in {self.root}")

    @cached_property
    def _images_by_suffix(self) -> dict[str, list[str]]:
        """Every image under each of its path's endings: ``images/sp01/x.png`` under itself,
        ``sp01/x.png`` and ``x.png``."""
        index: dict[str, list[str]] = defaultdict(list)
        for source in self.image_species:
            parts = source.split("/")
            for start in range(len(parts)):
                index["/".join(parts[start:])].append(source)
        return index

    def resolve(self, source: str) -> str:
        """The benchmark image (``images/<species>/<stem>.png``) that a path names: a path relative
        to the benchmark, to its ``images/`` or to a folder inside it (a species folder: then it is
        the ending of exactly one image's path), or a longer path ending in an image's path."""
        parts = [part for part in PurePosixPath(source.replace("\\", "/")).parts if part not in ("/", ".")]
        if parts and ".." not in parts:
            matches = self._images_by_suffix.get("/".join(parts), [])
            if len(matches) > 1:
                raise DataError(f"image {source!r} is ambiguous: the benchmark at {self.root} has {matches[0]}, {matches[1]}"
                                f"{', ...' if len(matches) > 2 else ''}; give paths relative to the benchmark")
            if matches:
                return matches[0]
            for start in range(1, len(parts)):
                tail = "/".join(parts[start:])
                for candidate in (tail, f"images/{tail}"):
                    if candidate in self.image_species:
                        return candidate
        raise DataError(f"image {source!r} is not an image of the benchmark at {self.root} (see its {TRAITS_FILE})")

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
        """The species of each image of a source (paths as :meth:`resolve` reads them)."""
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

    def trait_masks(self, source: str) -> np.ndarray:
        """(traits, h, w) bool, traits in the order of :attr:`trait_labels`: one mask per trait of a
        benchmark image or twin, overlaps allowed. From its masks file when the benchmark has one,
        else from its label map (one trait per pixel: the visible one)."""
        if source not in self.masks:
            labels_hw = self.annotation(source)
            return np.stack([labels_hw == label for label in self.trait_labels.values()])
        path = self.root / self.masks[source]
        try:
            masks_thw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read trait masks {path}: {first_line(error)}") from error
        if masks_thw.dtype != np.bool_ or masks_thw.ndim != 3 or len(masks_thw) != len(self.trait_labels):
            raise DataError(f"trait masks {path} must be a ({len(self.trait_labels)}, h, w) bool array, "
                            f"got {masks_thw.dtype} {masks_thw.shape}")
        return masks_thw

    def distinguishing_mask(self, source: str) -> np.ndarray:
        """(h, w) bool: the pixels of a benchmark image that show its species' distinguishing
        traits. With twins and masks, also where its twin shows them: the only pixels where the two
        differ, so an image whose value draws nothing (a species without the crest its look-alike
        has) is scored on where the trait would be."""
        traits = self.distinguishing_traits(self.image_species[source])
        if source not in self.masks:
            return np.isin(self.annotation(source), [self.trait_labels[trait] for trait in traits])
        rows = [list(self.trait_labels).index(trait) for trait in traits]
        masks_thw = self.trait_masks(source)[rows]
        twin = self.twins.get(source)
        if twin is not None and twin in self.masks:
            masks_thw = np.concatenate([masks_thw, self.trait_masks(twin)[rows]])
        return np.asarray(masks_thw.any(0), dtype=bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(item: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``item[key]`` checked to be a ``kind`` (``true`` is not a number)."""
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: {key} {_shown(value)} is not {getattr(kind, '__name__', 'a number')}")
    return value


def _name(item: Any, key: str, where: str) -> str:
    value = _field(item, key, str, where)
    if not value.strip():
        raise ValueError(f"{where}: {key} is empty")
    return value


def _items(data: dict[str, Any], key: str) -> list[Any]:
    items = _field(data, key, list, "the description")
    if not items:
        raise ValueError(f"{key} is empty")
    return items


def _choice(item: Any, key: str, choices: Sequence[str], where: str) -> str:
    value = item.get(key) if isinstance(item, dict) else None
    if value not in choices:
        raise ValueError(f"{where}: unknown {key} {_shown(value)} (one of {', '.join(choices)})")
    return str(value)


def _unique(names: Sequence[Any], what: str) -> None:
    seen: set[Any] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {_shown(name)} is listed twice")
        seen.add(name)


def _check_trait_values(values: Any, values_of: dict[str, list[str]], where: str) -> None:
    """A species' or image's traits: a value of each trait of the catalog, from its values."""
    if not isinstance(values, dict) or sorted(values) != sorted(values_of):
        raise ValueError(f"{where}: traits must give a value of each of {', '.join(values_of)}")
    for trait, value in values.items():
        if value not in values_of[trait]:
            raise ValueError(f"{where}: trait {trait} has unknown value {_shown(value)} (one of {', '.join(values_of[trait])})")


def _image_source(image: Any, where: str) -> str:
    """An image path: under ``images/``, relative, never leaving the benchmark folder."""
    source = _name(image, "source", where)
    path = PurePosixPath(source)
    if path.is_absolute() or path.parts[0] != "images" or len(path.parts) < 2 or ".." in path.parts \
            or "\\" in source or str(path) != source:
        raise ValueError(f"{where}: source {_shown(source)} is not a path images/... inside the benchmark")
    return source


def _masks_source(image: Any, key: str, image_path: str, where: str) -> str:
    """A masks path: the image's own, ``masks/`` in place of ``images/`` and ``.npy`` for ``.png``
    (so it stays inside the benchmark folder whatever ``traits.json`` says)."""
    source = _name(image, key, where)
    if source != mask_source(image_path):
        raise ValueError(f"{where}: {key} {_shown(source)} must be {mask_source(image_path)}")
    return source


def _twin_source(image: Any, where: str) -> str:
    """A twin's path: under ``twins/images/``, relative, never leaving the benchmark folder."""
    source = _name(image, "twin", where)
    path = PurePosixPath(source)
    if path.is_absolute() or path.parts[:2] != ("twins", "images") or len(path.parts) < 3 or ".." in path.parts \
            or "\\" in source or str(path) != source:
        raise ValueError(f"{where}: twin {_shown(source)} is not a path twins/images/... inside the benchmark")
    return source


def _parse_benchmark(root: Path, data: Any) -> Benchmark:
    """``traits.json`` with every field checked; ValueError names the first bad one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a traitlens specimens description (format {FORMAT!r})")
    if _field(data, "version", int, "the description") != VERSION:
        raise ValueError(f"version {data['version']}; this traitlens reads version {VERSION}")
    for key, minimum in (("seed", 0), ("size", 1), ("n", 1)):
        if _field(data, key, int, "the description") < minimum:
            raise ValueError(f"{key} must be at least {minimum}")
    values_of: dict[str, list[str]] = {}
    trait_labels: dict[str, int] = {}
    for i, trait in enumerate(_items(data, "traits")):
        where = f"trait {i}"
        name = _name(trait, "name", where)
        _choice(trait, "kind", TRAIT_KINDS, where)
        _name(trait, "part", where)
        values = _field(trait, "values", list, where)
        if len(values) < 2 or not all(isinstance(value, str) and value for value in values):
            raise ValueError(f"{where}: values must be two or more names")
        _unique(values, f"{where}: value")
        label = _field(trait, "label", int, where)
        if not FIRST_TRAIT_LABEL <= label <= MAX_LABEL:
            raise ValueError(f"{where}: label {label} is outside {FIRST_TRAIT_LABEL}..{MAX_LABEL} (0 is background, 1 the body)")
        values_of[name], trait_labels[name] = values, label
    _unique([trait.get("name") for trait in data["traits"]], "trait")
    _unique(list(trait_labels.values()), "trait label")
    species: list[str] = []
    for i, item in enumerate(_items(data, "species")):
        species.append(_name(item, "name", f"species {i}"))
        _choice(item, "plan", PLANS, f"species {i}")
        _check_trait_values(item.get("traits"), values_of, f"species {i}")
    _unique(species, "species")
    lookalikes = []
    for i, pair in enumerate(_field(data, "lookalikes", list, "the description")):
        a, b = (_choice(pair, key, species, f"look-alike pair {i}") for key in ("a", "b"))
        lookalikes.append(Lookalike(a, b, _choice(pair, "trait", list(values_of), f"look-alike pair {i}")))
        if a == b:
            raise ValueError(f"look-alike pair {i} pairs {a} with itself")
    image_species: dict[str, str] = {}
    twins: dict[str, str] = {}
    masks: dict[str, str] = {}
    image_values: dict[str, dict[str, str]] = {}
    for i, image in enumerate(_items(data, "images")):
        where = f"image {i}"
        source = _image_source(image, where)
        if source in image_species:
            raise ValueError(f"image {_shown(source)} is listed twice")
        image_species[source] = _choice(image, "species", species, where)
        _check_trait_values(image.get("traits"), values_of, where)
        image_values[source] = dict(image["traits"])
        if not 0 <= _field(image, "occluded_fraction", (int, float), where) <= 1:
            raise ValueError(f"{where}: occluded_fraction must be in [0, 1]")
        if isinstance(image, dict) and "twin" in image:
            twins[source] = _twin_source(image, where)
        if isinstance(image, dict) and "masks" in image:
            masks[source] = _masks_source(image, "masks", source, where)
        if isinstance(image, dict) and "twin_masks" in image:
            if source not in twins:
                raise ValueError(f"{where}: twin_masks without a twin")
            masks[twins[source]] = _masks_source(image, "twin_masks", twins[source], where)
    if data["n"] != len(image_species):
        raise ValueError(f"n is {data['n']} but {len(image_species)} images are listed")
    if twins and len(twins) != len(image_species):
        raise ValueError(f"{len(twins)} of {len(image_species)} images have a twin; all or none must")
    return Benchmark(root, trait_labels, tuple(lookalikes), image_species, twins, masks, image_values)


def read_benchmark(root: Path) -> Benchmark:
    """Read ``root/traits.json``, every field checked (types, known kinds and plans, names that
    refer to listed traits and species, image paths inside ``root``); DataError when it is missing
    or damaged."""
    path = root / TRAITS_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a specimens benchmark: {TRAITS_FILE} missing")
    try:
        return _parse_benchmark(root, parse_standard_json(path.read_bytes()))
    except (OSError, ValueError, RecursionError) as error:  # JSON and Unicode errors are ValueErrors
        raise DataError(f"damaged benchmark description {path}: {error}") from error


def check_store_of(store: ActivationStore, data: Path) -> None:
    """Refuse a store extracted from other images than the benchmark at ``data`` (the folder or its
    ``images/``), by the image source's fingerprint the store recorded."""
    recorded = store.dataset.fingerprint
    for root in (data, data / "images"):
        if root.is_dir() and open_image_source(root).fingerprint() == recorded:
            return
    raise ScoringError(f"the store at {store.root} was extracted from {store.dataset.path}, "
                       f"not from the benchmark at {data}; extract it from {data}")
