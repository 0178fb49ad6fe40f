"""The oracle map on a hand-made model whose answer is known."""

from __future__ import annotations

import pytest
import torch

from traitlens.specimens.benchmark import ScoringError
from traitlens.specimens.oracle import cell_bounds, oracle_maps


def _model_reading_one_cell(row: slice, col: slice) -> torch.nn.Module:
    """Class 0's score is the red mean of one region, class 1's minus it, class 2 is constant."""

    class ReadsOneCell(torch.nn.Module):
        def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
            red = pixels_bchw[:, 0, row, col].mean((1, 2))
            return torch.stack([red, -red, torch.zeros_like(red)], 1)

    return ReadsOneCell()


def test_the_oracle_lights_the_cell_the_model_reads_and_only_where_the_twin_differs() -> None:
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0, 2:4, 6:8] = 1.0       # the trait, read by the model, in cell (1, 3) of a 4x4 grid
    images[:, 0, 6:8, 0:2] = 1.0       # another trait the model ignores, in cell (3, 0)
    twins = images.clone()
    twins[:, 0, 2:4, 6:8] = 0.0
    twins[:, 0, 6:8, 0:2] = 0.0
    model = _model_reading_one_cell(slice(2, 4), slice(6, 8))
    maps = oracle_maps(model, images, twins, torch.tensor([0, 1]), torch.tensor([1, 0]), (4, 4), batch_size=1)
    assert maps.shape == (2, 4, 4)
    # species 0: margin 2·red drops by 2 when the trait goes; species 1 (reversed roles) gains it
    assert maps[0, 1, 3] == pytest.approx(2.0) and maps[1, 1, 3] == pytest.approx(-2.0)
    maps[:, 1, 3] = 0
    assert torch.count_nonzero(maps) == 0


def test_identical_twins_give_a_zero_map_and_shapes_are_checked() -> None:
    images = torch.rand(1, 3, 6, 6)
    model = _model_reading_one_cell(slice(0, 6), slice(0, 6))
    assert torch.count_nonzero(oracle_maps(model, images, images.clone(), torch.tensor([0]), torch.tensor([1]), (2, 2))) == 0
    with pytest.raises(ScoringError, match="same"):
        oracle_maps(model, images, images[:, :, :4], torch.tensor([0]), torch.tensor([1]), (2, 2))


def test_cells_cover_every_pixel_once() -> None:
    assert cell_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert cell_bounds(96, 8)[-1] == (84, 96)
