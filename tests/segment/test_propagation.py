"""Label propagation on hand-made features and colours, where the answer is known exactly."""

from __future__ import annotations

import torch

from traitlens.segment.propagation import DescribedMemory, Fine, LabelMemory, cell_size, patch_cells, propagate


def test_patch_cells_are_each_patch_s_pixels_in_token_order() -> None:
    image_1chw = torch.arange(16.0).reshape(1, 1, 4, 4)
    cells = patch_cells(image_1chw, (2, 2))
    assert cells.shape == (1, 4, 4, 1)
    assert cells[0, :, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert cell_size((96, 96), (8, 8)) == (12, 12)
    assert patch_cells(torch.zeros(1, 3, 10, 10), (3, 3)).shape == (1, 9, 9, 3)  # 10 px on 3 patches: 3 px each


def _memory(capacity: int = 0) -> LabelMemory:
    """Two patches of 2x2 pixels: patch A (feature e0) red on its left column (label 2) and grey
    elsewhere (label 1); patch B (feature e1) all green background (label 0)."""
    keys_md = torch.eye(2, 4)
    grey, red, green = [0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.8, 0.1]
    colours_mq3 = torch.tensor([[red, grey, red, grey], [green, green, green, green]])
    labels_mq = torch.tensor([[2, 1, 2, 1], [0, 0, 0, 0]])
    return LabelMemory(keys_md, colours_mq3, labels_mq, capacity)


def test_each_pixel_takes_the_label_of_the_look_alike_pixel_of_the_matched_patch() -> None:
    # a query patch like A but mirrored: red on the right column, and a darker grey
    queries_pd = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    grey, red, green = [0.4, 0.4, 0.4], [0.9, 0.1, 0.1], [0.1, 0.8, 0.1]
    colours_pq3 = torch.tensor([[grey, red, grey, red], [green, green, green, green]])

    memory = DescribedMemory.of(_memory(), Fine())
    probs_pqc = propagate(queries_pd, colours_pq3, (2, 2), memory, 3, n_neighbours=1, temperature=0.05, fine=Fine())

    assert probs_pqc.shape == (2, 4, 3)
    assert torch.allclose(probs_pqc.sum(-1), torch.ones(2, 4))
    assert probs_pqc.argmax(-1).tolist() == [[1, 2, 1, 2], [0, 0, 0, 0]]
    assert (probs_pqc.max(-1).values > 0.9).all()


def test_the_short_term_memory_keeps_the_last_images_and_restores() -> None:
    memory = _memory(capacity=1)
    keys_bpd = torch.rand(2, 3, 4)
    colours_bpq3 = torch.rand(2, 3, 4, 3)
    labels_bpq = torch.randint(0, 3, (2, 3, 4))
    memory.remember(keys_bpd, colours_bpq3, labels_bpq)
    keys_md, _, labels_mq = memory.entries()
    assert torch.equal(keys_md[2:], keys_bpd[1]) and torch.equal(labels_mq[2:], labels_bpq[1])  # only the last image
    restored = _memory(capacity=1)
    restored.restore(memory.state())
    assert all(torch.equal(a, b) for a, b in zip(restored.entries(), memory.entries(), strict=True))
    assert _memory(capacity=0).state() == {}
