"""Label propagation from labelled images to new ones, coarse to fine, the way video object
segmentation carries a first frame's labels through a clip.

Coarse: every patch of a new image finds its ``n_neighbours`` most similar memory patches by the
cosine similarity of the model's patch features, weighted by softmax(similarity / temperature).
Patch features say *which part of the organism* a patch shows, but a trait is often smaller than
a patch, so a patch-level vote would hand it to the body around it. Fine: each pixel of the patch
then takes the labels of the pixels of those matched patches that look like it — close in colour
and in place within the patch — so a red band keeps its own pixels. The memory holds the support
images' patches (exact labels) and those of the ``capacity`` images segmented last (their
predicted labels), so labels also travel through specimens that look more like a neighbour than
like the support.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def unit_features(tokens_bpd: torch.Tensor) -> torch.Tensor:
    """Patch features scaled to unit length, so a dot product is a cosine similarity."""
    return F.normalize(tokens_bpd.to(torch.float32), dim=-1)


def cell_size(input_hw: tuple[int, int], grid_hw: tuple[int, int]) -> tuple[int, int]:
    """Whole pixels of the model input per patch (rows, columns)."""
    return max(1, input_hw[0] // grid_hw[0]), max(1, input_hw[1] // grid_hw[1])


def patch_cells(image_bchw: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(b, c, h, w) at the model input -> (b, patches, cell pixels, c): each patch's pixels, in the
    row-major patch order of the token grid (the input is resized to a whole number of pixels per
    patch first, nearest-neighbour, when it does not divide)."""
    grid_h, grid_w = grid_hw
    cell_h, cell_w = cell_size((image_bchw.shape[-2], image_bchw.shape[-1]), grid_hw)
    if image_bchw.shape[-2:] != (grid_h * cell_h, grid_w * cell_w):
        image_bchw = F.interpolate(image_bchw.to(torch.float32), size=(grid_h * cell_h, grid_w * cell_w), mode="nearest")
    batch, channels = image_bchw.shape[:2]
    cells = image_bchw.reshape(batch, channels, grid_h, cell_h, grid_w, cell_w).permute(0, 2, 4, 3, 5, 1)
    return cells.reshape(batch, grid_h * grid_w, cell_h * cell_w, channels)


def cell_positions(cell_hw: tuple[int, int]) -> torch.Tensor:
    """(cell pixels, 2): each pixel's place in its patch, rows and columns in [0, 1]."""
    rows = (torch.arange(cell_hw[0], dtype=torch.float32) + 0.5) / cell_hw[0]
    cols = (torch.arange(cell_hw[1], dtype=torch.float32) + 0.5) / cell_hw[1]
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


CANDIDATE_SIDE = 6


@dataclass(frozen=True)
class Fine:
    """The fine step's scales: a colour difference of ``colour_scale`` (RGB in [0, 1]), a difference
    of ``contrast_scale`` in colour relative to the patch's mean, or a shift of ``place_scale``
    patch sides each weigh a pixel down by e^-1."""

    colour_scale: float = 1.0
    contrast_scale: float = 0.1
    place_scale: float = 0.5

    def describe(self, colours_pq3: torch.Tensor) -> torch.Tensor:
        """The pixels' colours as the fine step compares them, each divided by its scale: the colour
        itself and its difference from its patch's mean colour, which survives a change of the
        organism's colour from specimen to specimen (a band stays brighter than its wing)."""
        contrast_pq3 = colours_pq3 - colours_pq3.mean(dim=-2, keepdim=True)
        return torch.cat([colours_pq3 / self.colour_scale, contrast_pq3 / self.contrast_scale], dim=-1)


@dataclass
class LabelMemory:
    """Memory patches: unit features ``keys_md`` with their pixels' colours ``colours_mq3`` and
    labels ``labels_mq`` (q pixels per patch); the support's first, then those of the
    ``capacity`` images segmented last."""

    support_keys_md: torch.Tensor
    support_colours_mq3: torch.Tensor
    support_labels_mq: torch.Tensor
    capacity: int
    recent_keys_md: torch.Tensor | None = None
    recent_colours_mq3: torch.Tensor | None = None
    recent_labels_mq: torch.Tensor | None = None

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.recent_keys_md is None or self.recent_colours_mq3 is None or self.recent_labels_mq is None:
            return self.support_keys_md, self.support_colours_mq3, self.support_labels_mq
        return (torch.cat([self.support_keys_md, self.recent_keys_md]),
                torch.cat([self.support_colours_mq3, self.recent_colours_mq3]),
                torch.cat([self.support_labels_mq, self.recent_labels_mq]))

    def remember(self, keys_bpd: torch.Tensor, colours_bpq3: torch.Tensor, labels_bpq: torch.Tensor) -> None:
        """Add a batch's images (in order) and keep only the last ``capacity`` of all remembered."""
        if self.capacity == 0:
            return
        kept = self.capacity * keys_bpd.shape[1]
        new = (keys_bpd.flatten(0, 1), colours_bpq3.flatten(0, 1), labels_bpq.flatten(0, 1))
        if self.recent_keys_md is not None and self.recent_colours_mq3 is not None and self.recent_labels_mq is not None:
            new = (torch.cat([self.recent_keys_md, new[0]]), torch.cat([self.recent_colours_mq3, new[1]]),
                   torch.cat([self.recent_labels_mq, new[2]]))
        self.recent_keys_md, self.recent_colours_mq3, self.recent_labels_mq = (part[-kept:].clone() for part in new)

    def state(self) -> dict[str, torch.Tensor]:
        """The short-term memory as tensors (saved with each finished batch, so a resumed run goes on
        from the same memory); empty before anything was remembered."""
        if self.recent_keys_md is None or self.recent_colours_mq3 is None or self.recent_labels_mq is None:
            return {}
        return {"recent_keys_md": self.recent_keys_md.contiguous(), "recent_colours_mq3": self.recent_colours_mq3.contiguous(),
                "recent_labels_mq": self.recent_labels_mq.contiguous()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.recent_keys_md = state.get("recent_keys_md")
        self.recent_colours_mq3 = state.get("recent_colours_mq3")
        self.recent_labels_mq = state.get("recent_labels_mq")


@functools.cache
def _candidates(cell_hw: tuple[int, int], place_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pixels of a matched patch are candidates, and each query pixel's place penalty to each.

    Every pixel, or for large patches a regular subset: at most about CANDIDATE_SIDE x CANDIDATE_SIDE,
    since the cost grows with pixels x candidates. The same for every image of a model, so made once."""
    step_h, step_w = (-(-side // CANDIDATE_SIDE) for side in cell_hw)
    kept_q = torch.tensor([row * cell_hw[1] + col for row in range(0, cell_hw[0], step_h) for col in range(0, cell_hw[1], step_w)])
    positions_q2 = cell_positions(cell_hw)
    return kept_q, torch.cdist(positions_q2, positions_q2[kept_q]).square() / place_scale ** 2


@dataclass(frozen=True)
class DescribedMemory:
    """The memory as one batch reads it: features, pixels described by :meth:`Fine.describe` (on
    whole patches, so a pixel's contrast is against its whole patch's mean, as a query pixel's is)
    and labels. Made once per batch, not once per image."""

    keys_md: torch.Tensor
    described_mqe: torch.Tensor
    labels_mq: torch.Tensor

    @classmethod
    def of(cls, memory: LabelMemory, fine: Fine) -> DescribedMemory:
        keys_md, colours_mq3, labels_mq = memory.entries()
        return cls(keys_md, fine.describe(colours_mq3), labels_mq)


def propagate(queries_pd: torch.Tensor, colours_pq3: torch.Tensor, cell_hw: tuple[int, int], memory: DescribedMemory,
              n_labels: int, n_neighbours: int, temperature: float, fine: Fine) -> torch.Tensor:
    """One image: unit patch features (patches, d) and the pixels' colours (patches, q, 3), q the
    ``cell_hw`` pixels of a patch ->
    (patches, q, labels), each pixel's label distribution (see the module docstring)."""
    similarity_pm = queries_pd @ memory.keys_md.T
    top_similarity_pk, top_index_pk = similarity_pm.topk(min(n_neighbours, memory.keys_md.shape[0]), dim=1)
    patch_weights_pk = torch.softmax(top_similarity_pk / temperature, dim=1)
    kept_q, place_qq = _candidates(cell_hw, fine.place_scale)
    candidate_described_pkqe = memory.described_mqe[top_index_pk][:, :, kept_q]
    candidate_labels_pkq = memory.labels_mq[top_index_pk][:, :, kept_q]
    cells, kept = colours_pq3.shape[1], len(kept_q)
    # colour distance of every pixel (x) to every pixel (q) of every matched patch (k)
    colour_pxkq = torch.cdist(fine.describe(colours_pq3), candidate_described_pkqe.flatten(1, 2))
    colour_pxkq = colour_pxkq.reshape(len(colours_pq3), cells, -1, kept)
    log_weight_pxkq = (patch_weights_pk.log()[:, None, :, None] - colour_pxkq.square()
                       - place_qq[None, :, None, :])
    weight_pxkq = torch.softmax(log_weight_pxkq.flatten(2), dim=2).reshape(log_weight_pxkq.shape)
    one_hot_pkqc = F.one_hot(candidate_labels_pkq, n_labels).to(weight_pxkq.dtype)
    return torch.einsum("pxkq,pkqc->pxc", weight_pxkq, one_hot_pkqc)
