"""One-shot trait segmentation (``traitlens segment``): a few labelled specimens' masks carried to
every other image, as frames of a pseudo-video (Static Segmentation by Tracking)."""

from traitlens.segment.config import SegmentConfig, SegmentError
from traitlens.segment.job import segment

__all__ = ["SegmentConfig", "SegmentError", "segment"]
