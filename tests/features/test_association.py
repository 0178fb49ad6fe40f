"""Average precision from nonzeros only, against the dense computation, ties and signs included."""

from __future__ import annotations

import numpy as np

from traitlens.features.association import sparse_average_precision
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
