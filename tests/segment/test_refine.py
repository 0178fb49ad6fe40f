"""The guided filter behind --refine guided."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from traitlens.segment.refine import _box_mean, guided_filter, pixel_scores


def test_box_mean_is_the_window_mean_cut_at_the_border() -> None:
    x = torch.rand(1, 3, 17, 11)
    expected = F.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False)
    assert torch.allclose(_box_mean(x, 3), expected, atol=1e-6)


def test_a_constant_score_stays_constant_and_an_edge_follows_the_guide() -> None:
    guide_3hw = torch.zeros(3, 24, 24)
    guide_3hw[:, :, 12:] = 1.0  # a sharp colour edge down the middle
    assert torch.allclose(guided_filter(guide_3hw, torch.full((2, 24, 24), 0.3), 4, 1e-3), torch.full((2, 24, 24), 0.3), atol=1e-5)
    # a blurred score (upsampled from patches: a ramp over 8 pixels across the edge) comes out sharp
    ramp_w = ((torch.arange(24) + 0.5 - 12) / 8 + 0.5).clamp(0, 1)
    scores_chw = torch.stack([1 - ramp_w.expand(24, 24), ramp_w.expand(24, 24)])
    probs = pixel_scores(scores_chw, guide_3hw, 4, 1e-3)
    step_before, step_after = (p[1, :, 12] - p[1, :, 11] for p in (scores_chw, probs))
    assert (step_before < 0.2).all() and (step_after > 0.4).all()  # most of the change now happens at the edge
    assert (probs.argmax(0)[:, :12] == 0).all() and (probs.argmax(0)[:, 12:] == 1).all()
    assert torch.allclose(probs.sum(0), torch.ones(24, 24)) and (probs >= 0).all()
