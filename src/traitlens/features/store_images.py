"""The image source a store was extracted from, found again: the report draws its images, and the
analysis reads its masks for the patch-label APs."""

from __future__ import annotations

from pathlib import Path

from traitlens.data import ImageSource, open_image_source
from traitlens.errors import TraitlensError
from traitlens.store import ActivationStore


def _dataset_root(store: ActivationStore) -> Path | None:
    """The store's image source. A relative path is tried from the working directory, then from
    the store's parent folders (the extraction ran in one of them)."""
    if store.dataset.path is None:
        return None
    recorded = Path(store.dataset.path)
    candidates = [recorded] if recorded.is_absolute() else [recorded, *(parent / recorded for parent in store.root.resolve().parents)]
    return next((path for path in candidates if path.exists()), None)


def open_store_source(store: ActivationStore) -> ImageSource | str:
    """The image source the store was extracted from, or why it cannot be used (a sentence without
    its capital: it was not recorded, is gone, cannot be read, or is not the one extracted, by its
    fingerprint)."""
    recorded = store.dataset.path
    if recorded is None:
        return "the store records no image source"
    root = _dataset_root(store)
    if root is None:
        return f"the store's images at {recorded} are gone"
    try:
        source = open_image_source(root)
        same = source.fingerprint() == store.dataset.fingerprint
    except (TraitlensError, OSError) as error:
        return f"the store's images cannot be read ({error})"
    if not same:
        return f"the images at {root} changed since the store was extracted from them"
    return source


def source_indices(store: ActivationStore, source: ImageSource) -> dict[int, int]:
    """Each store image's index in ``source``, for the store images it holds."""
    index_of = {record.source: index for index, record in enumerate(source.records)}
    return {image: index_of[stored.source] for image, stored in enumerate(store.images) if stored.source in index_of}
