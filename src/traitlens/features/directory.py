"""Typed reading of a features directory's own files: the manifest's fields, the files it names
(which must lie inside the directory) and the statistics' names, dtypes, shapes and indices.
Anything else is one :class:`FeaturesError` line; nothing is unpickled."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from traitlens.backbones.layout import TokenLayout
from traitlens.features.files import FORMAT, JOB, MANIFEST, VERSION, FeaturesError
from traitlens.json_config import read_json_config

TOKEN_KINDS = ("all", "patch", "cls")
FILE_ROLES = ("indptr", "rows", "values", "statistics")


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _positive(value: object) -> bool:
    return _count(value) and value != 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: object) -> bool:
    return isinstance(value, str)


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _record(keys: dict[str, Callable[[object], bool]]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, dict) and all(check(value.get(key)) for key, check in keys.items())


_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "job": (lambda value: isinstance(value, dict), "an object"),
    "sae": (_text, "a path"), "acts": (_text, "a path"), "layer": (_text, "a layer name"),
    "width": (_positive, "a positive integer"), "n_tokens": (_positive, "a positive integer"),
    "n_images": (_positive, "a positive integer"), "tokens_per_image": (_positive, "a positive integer"),
    "top_k": (_positive, "a positive integer"), "tokens": (lambda value: value in TOKEN_KINDS, f"one of {', '.join(TOKEN_KINDS)}"),
    "layout": (lambda value: isinstance(value, dict), "an object"),
    "class_names": (_optional(_names), "a list of names or null"), "label_names": (_names, "a list of names"),
    "label_positives": (_optional(_record({"rule": _text, "min_coverage": _number, "n_images": _count, "n_patches": _count})),
                        "null or an object with rule, min_coverage, n_images and n_patches"),
    "label_note": (_optional(_text), "a text or null"),
    "files": (_record({role: _text for role in FILE_ROLES}), f"an object naming the {', '.join(FILE_ROLES)} files"),
    "summary": (_record({"nnz": _count, "alive": _count, "dead": _count, "mean_l0": _number, "n_nonfinite_tokens": _count}),
                "an object with nnz, alive, dead, mean_l0 and n_nonfinite_tokens"),
}


def read_features_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a finished features directory, every field the readers use checked; one-line
    errors for anything else."""
    path = root / MANIFEST
    hint = " (analysis unfinished: run the same command again to resume)" if (root / JOB).is_file() else ""
    manifest = read_json_config(path, FORMAT, "features manifest", FeaturesError,
                                f"no features at {root}: {MANIFEST} missing{hint}", VERSION)
    for key, (check, expected) in _FIELDS.items():
        if not check(manifest.get(key)):
            raise FeaturesError(f"damaged features manifest {path}: {key} must be {expected}, got {str(manifest.get(key))[:80]!r}")
    try:
        layout = TokenLayout.from_dict(manifest["layout"])
    except (KeyError, TypeError, ValueError) as error:
        raise FeaturesError(f"damaged features manifest {path}: layout is not a token layout ({error})") from error
    first = None if manifest["tokens"] == "cls" else layout.first_patch(manifest["tokens"])
    if first is not None and manifest["tokens_per_image"] != first + layout.n_patches:
        raise FeaturesError(f"damaged features manifest {path}: {manifest['tokens_per_image']} {manifest['tokens']} tokens per "
                            f"image do not fit its layout ({layout.n_prefix} prefix + {layout.n_patches} patches)")
    if manifest["n_tokens"] != manifest["n_images"] * manifest["tokens_per_image"]:
        raise FeaturesError(f"damaged features manifest {path}: n_tokens is not n_images x tokens_per_image")
    return manifest


def member(root: Path, manifest: dict[str, Any], role: str) -> Path:
    """The file the manifest names for ``role``, refused unless it lies inside ``root``."""
    name = manifest["files"][role]
    path = root / name
    # resolved, so a link out of the folder is refused like a ".." or an absolute path
    if PurePosixPath(name).is_absolute() or root.resolve() not in path.resolve().parents:
        raise FeaturesError(f"damaged features manifest {root / MANIFEST}: its {role} file {name!r} is not inside {root}")
    return path


def _statistics_shapes(manifest: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each statistic's dtype and shape in a directory described by ``manifest``."""
    width, k = manifest["width"], manifest["top_k"]
    n_classes, n_labels = len(manifest["class_names"] or []), len(manifest["label_names"])
    return {
        "count_w": ("int64", (width,)), "frequency_w": ("float64", (width,)), "mean_activation_w": ("float64", (width,)),
        "max_activation_w": ("float32", (width,)),
        "top_images_wk": ("int64", (width, k)), "top_image_values_wk": ("float32", (width, k)),
        "top_tokens_wk": ("int64", (width, k)), "top_token_values_wk": ("float32", (width, k)),
        "class_mean_wc": ("float64", (width, n_classes)), "class_ap_wc": ("float64", (width, n_classes)),
        "label_ap_wl": ("float64", (width, n_labels)),
        "class_prevalence_c": ("float64", (n_classes,)), "label_prevalence_l": ("float64", (n_labels,)),
    }


def read_statistics(path: Path, manifest: dict[str, Any], counts_w: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics file, each array of its dtype and shape, top images and tokens inside the
    store (or -1 padding) and the counts those of the columns (``counts_w``)."""
    try:
        arrays = load_file(str(path))
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise FeaturesError(f"cannot read {path}: {str(error).splitlines()[0][:200] if str(error) else type(error).__name__}") from error
    for name, (dtype, shape) in _statistics_shapes(manifest).items():
        array = arrays.get(name)
        if array is None or array.dtype != np.dtype(dtype) or array.shape != shape:
            found = "nothing" if array is None else f"{array.dtype} {array.shape}"
            raise FeaturesError(f"damaged statistics {path}: {name} should be {dtype} {shape}, found {found}")
    for name, bound in (("top_images_wk", manifest["n_images"]), ("top_tokens_wk", manifest["n_tokens"])):
        if arrays[name].size and not (-1 <= arrays[name].min() and arrays[name].max() < bound):
            raise FeaturesError(f"damaged statistics {path}: {name} holds indices outside -1..{bound - 1}")
    if not np.array_equal(arrays["count_w"], counts_w):
        raise FeaturesError(f"damaged statistics {path}: its counts disagree with the latent columns")
    return arrays
