"""Every readable, labelled image of a class folder preprocessed into memory, for the loops that
train on images many times over (``specimens train-model``, ``heads train``) and for accuracy."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from traitlens.backbones.preprocess import Preprocess
from traitlens.data.images import UnreadableImageError
from traitlens.data.source import ImageSource
from traitlens.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    pixels_nchw: torch.Tensor
    labels_n: torch.Tensor
    class_names: list[str]


def load_labelled_images(source: ImageSource, preprocess: Preprocess, show_progress: bool = False) -> LabelledImages:
    """Every readable, labelled image of ``source`` preprocessed into memory (unreadable ones are
    skipped with a warning, as extraction does)."""
    if source.class_names is None or any(record.label is None for record in source.records):
        raise DataError(f"{source.root} has unlabelled images; training needs labelled images (a class folder: one subfolder per class)")
    if len(source.class_names) < 2:
        raise DataError(f"{source.root} has only one class; a classifier needs at least two")
    index = {name: i for i, name in enumerate(source.class_names)}
    pixels, labels = [], []
    for i in tqdm(range(len(source)), unit="img", desc="load", disable=not show_progress):
        try:
            pixels.append(preprocess.image(source.load_image(i)))
        except UnreadableImageError as error:
            log.warning("skipping %s", error)
            continue
        labels.append(index[str(source.records[i].label)])
    return LabelledImages(torch.stack(pixels), torch.tensor(labels), list(source.class_names))
