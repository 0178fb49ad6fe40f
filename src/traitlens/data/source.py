"""The image source interface: ordered records, image and mask loading, and a cheap fingerprint."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from traitlens.data.images import decode_image


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source.

    ``source`` is the image's path relative to the source root (posix), or ``"<split>/<index>"`` for
    a row of a Hugging Face dataset; ``label`` is its image-level class, ``None`` when there is none.
    """

    source: str
    label: str | None


class ImageSource(ABC):
    """An ordered collection of images with optional class labels and segmentation masks.

    Subclasses fill ``records`` in a deterministic order; ``class_names`` is the sorted vocabulary
    of their labels unless the source declares its own.
    """

    kind: ClassVar[str]
    has_masks: ClassVar[bool] = False
    """Whether ``load_mask`` can give masks (a capability, so readers never test ``kind``)."""

    def __init__(
        self, root: Path, records: list[ImageRecord], class_names: list[str] | None = None
    ) -> None:
        self.root = root
        self.records = records
        if class_names is None:
            labels = {record.label for record in records if record.label is not None}
            class_names = sorted(labels) if labels else None
        self.class_names = class_names
        self.mask_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)})"

    @abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """The image at ``index``, fully decoded, RGB; raises UnreadableImageError."""

    def load_mask(self, index: int) -> np.ndarray | None:
        """The (h, w) int64 label map of the image at ``index``, or None when it has none."""
        return None

    @abstractmethod
    def _content_sizes(self) -> list[list[int]]:
        """Per record, the byte sizes of the files (or blobs) behind it; -1 for a missing one."""

    def fingerprint(self) -> str:
        """A sha256 hex digest over the kind and each record's source, label and byte sizes.

        Sizes come from ``stat`` (or array offsets), so no image is read: it detects added,
        removed, relabelled or rewritten-with-a-new-size images, not same-size edits.
        """
        digest = hashlib.sha256(self.kind.encode())
        for record, sizes in zip(self.records, self._content_sizes(), strict=True):
            digest.update(json.dumps([record.source, record.label, sizes]).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes, -1 when it cannot be stat-ed (missing, no permission, or a
    name no file can have, such as one with a NUL byte from a table cell)."""
    try:
        return path.stat().st_size
    except (OSError, ValueError):
        return -1


class FileImageSource(ImageSource):
    """A source whose every record is one image file on disk."""

    def __init__(self, root: Path, records: list[ImageRecord], paths: list[Path]) -> None:
        super().__init__(root, records)
        self.paths = paths

    def load_image(self, index: int) -> Image.Image:
        """The image at ``index``, fully decoded, RGB; raises UnreadableImageError."""
        return decode_image(self.paths[index], self.records[index].source)

    def _content_sizes(self) -> list[list[int]]:
        return [[file_size(path)] for path in self.paths]
