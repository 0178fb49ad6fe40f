"""Prompt-CAM's trait ranking: which attention heads of a class-query head carry an image's class.

Greedy head blurring (Chowdhury et al. 2025): blur, one at a time, each head still standing (its
attention of the target query made uniform) and keep blurred the one whose loss leaves the target
class's probability highest; repeat until every head is blurred. The heads blurred last are the
ones the class needs most: the ranking is the reverse order. Each step scores all candidate heads
in one batch.
"""

from __future__ import annotations

import torch

from traitlens.backbones.backbone import ClassAttention


@torch.no_grad()
def rank_heads(attention: ClassAttention, pixels_1chw: torch.Tensor, target: int, n_heads: int) -> list[tuple[int, float]]:
    """The ``n_heads`` attention heads ranked for class ``target`` on one image, most important
    first, each with the target probability once it and every less important head are blurred."""
    device = pixels_1chw.device
    blurred_h = torch.zeros(n_heads, dtype=torch.bool, device=device)
    removed: list[tuple[int, float]] = []
    while len(removed) < n_heads:
        standing = [head for head in range(n_heads) if not blurred_h[head]]
        masks_rh = blurred_h.expand(len(standing), -1).clone()
        masks_rh[torch.arange(len(standing)), standing] = True
        pixels_rchw = pixels_1chw.expand(len(standing), -1, -1, -1)
        targets_r = torch.full((len(standing),), target, device=device)
        probability_r = attention.blurred_logits(pixels_rchw, targets_r, masks_rh).double().softmax(1)[:, target]
        best = int(probability_r.argmax())  # ties: the lowest head index, so the ranking is deterministic
        removed.append((standing[best], float(probability_r[best])))
        blurred_h[standing[best]] = True
    return removed[::-1]
