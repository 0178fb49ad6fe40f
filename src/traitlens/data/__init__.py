"""Image sources (folders, tables, segmentation folders, saved HF datasets) and patch labels."""

from traitlens.data.detect import open_image_source
from traitlens.data.images import UnreadableImageError
from traitlens.data.patch_labels import patch_labels
from traitlens.data.source import ImageRecord, ImageSource

__all__ = [
    "ImageRecord",
    "ImageSource",
    "UnreadableImageError",
    "open_image_source",
    "patch_labels",
]
