"""Average precision from nonzeros only, against the dense computation, ties and signs included."""

from __future__ import annotations

import numpy as np

from traitlens.features.association import (
    BlockNonzeros,
    PatchTargets,
    class_average_precision,
    image_activations,
    label_average_precision,
    sparse_average_precision,
    token_statistics,
    top_images,
    top_tokens,
)
from traitlens.specimens.average_precision import average_precision_by_target


def test_sparse_average_precision_equals_the_dense_one() -> None:
    rng = np.random.default_rng(0)
    n_items, n_latents, n_targets = 300, 7, 4
    scores_nb = rng.choice([0.0, 0.0, 0.0, 1.0, 2.0, -1.0], size=(n_items, n_latents)) * rng.choice([1.0, 1.5], size=(n_items, 1))
    scores_nb[:, 0] = 0  # a latent that never fires: all items tied
    scores_nb[:, 1] = np.abs(rng.normal(size=n_items))  # one that fires everywhere
    scores_nb[:, 2] = np.where(rng.random(n_items) < 0.1, rng.normal(size=n_items), 0)  # rare, both signs
    positives_nt = rng.random((n_items, n_targets)) < [0.3, 0.05, 0.5, 0.0]  # the last target has no positives
    item_n, local_n = np.nonzero(scores_nb)
    order = np.lexsort((item_n, local_n))
    item_n, local_n = item_n[order], local_n[order]
    sparse_bt = sparse_average_precision(local_n, scores_nb[item_n, local_n].astype(np.float32), positives_nt[item_n],
                                         n_latents, n_items, positives_nt.sum(0))
    dense_tb = average_precision_by_target(scores_nb.astype(np.float32), positives_nt).numpy()
    np.testing.assert_allclose(sparse_bt, dense_tb.T, rtol=1e-12)
    assert np.isnan(sparse_bt[:, 3]).all() and not np.isnan(sparse_bt[:, :3]).any()


def test_a_block_of_latents_that_never_fire() -> None:
    """Every per-block statistic of a block without a single nonzero: padding, zeros and chance APs."""
    empty = BlockNonzeros(3, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    rows_bk, values_bk = top_tokens(empty, 4)
    assert rows_bk.shape == values_bk.shape == (3, 4) and (rows_bk == -1).all() and (values_bk == 0).all()
    assert rows_bk.dtype == np.int64 and values_bk.dtype == np.float32
    counts_b, sums_b, max_b = token_statistics(empty)
    assert not counts_b.any() and not sums_b.any() and not max_b.any()
    activations_bi = image_activations(empty, n_images=5, tokens_per_image=2)
    assert activations_bi.shape == (3, 5) and not activations_bi.any()
    images_bk, image_values_bk = top_images(activations_bi, 4)
    assert (images_bk == -1).all() and (image_values_bk == 0).all()
    class_i = np.array([0, 1, 1, -1, 0])
    np.testing.assert_allclose(class_average_precision(activations_bi, class_i, 2), [[0.5, 0.5]] * 3)
    positives_ql = np.array([[True], [False], [False], [False]])  # 2 masked images x 2 patches, one label
    targets = PatchTargets(np.array([0, 3]), positives_ql, n_images=5, tokens_per_image=2, first_patch=0, n_patches=2)
    np.testing.assert_allclose(label_average_precision(empty, targets), [[0.25]] * 3)


def test_top_tokens_beside_a_latent_that_never_fires() -> None:
    block = BlockNonzeros(3, np.array([0, 0, 2]), np.array([4, 7, 1]), np.array([1.0, 3.0, 2.0], np.float32))
    rows_bk, values_bk = top_tokens(block, 2)
    np.testing.assert_array_equal(rows_bk, [[7, 4], [-1, -1], [1, -1]])
    np.testing.assert_array_equal(values_bk, [[3.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
