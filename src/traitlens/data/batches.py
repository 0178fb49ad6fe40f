"""Preprocessed image batches in source order, the next one decoded on a thread while the model
runs on this one (explanations and interventions both read images this way)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from traitlens.backbones.preprocess import Preprocess
from traitlens.data.source import ImageSource


@dataclass
class PixelBatch:
    indices: list[int]
    images: list[Image.Image]
    pixels_bchw: torch.Tensor


def _load_batch(source: ImageSource, preprocess: Preprocess, indices: Sequence[int]) -> PixelBatch:
    images = [source.load_image(index) for index in indices]
    return PixelBatch(list(indices), images, torch.stack([preprocess.image(image) for image in images]))


def pixel_batches(source: ImageSource, preprocess: Preprocess, batch_size: int,
                  indices: Sequence[int] | None = None) -> Iterator[PixelBatch]:
    """Batches of ``indices`` (all images by default), in order."""
    order = list(range(len(source))) if indices is None else list(indices)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[PixelBatch] | None = pool.submit(_load_batch, source, preprocess, chunks[0]) if chunks else None
        for position in range(len(chunks)):
            assert pending is not None
            batch = pending.result()
            later = position + 1 < len(chunks)
            pending = pool.submit(_load_batch, source, preprocess, chunks[position + 1]) if later else None
            yield batch
