"""Per-latent statistics of a block of latents, from their sparse columns.

Every function takes the block's nonzeros as :meth:`SparseColumns.block` returns them (latent
index within the block, token row, activation; ordered by latent then row) and returns arrays with
one row per latent of the block. The one dense intermediate is (latents in block, images): the
caller sizes blocks so it stays bounded. Average precision is computed from the nonzeros alone
(:func:`sparse_average_precision`), so its cost grows with how often latents fire rather than with
the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
DoubleArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BlockNonzeros:
    """The nonzeros of ``n_latents`` consecutive latents, ordered by latent then token row."""

    n_latents: int
    local_n: IntArray
    rows_n: IntArray
    values_n: FloatArray


@dataclass(frozen=True)
class PatchTargets:
    """Patch tokens with mask labels, for patch-label average precision.

    ``images_m`` are the images with a mask; ``positives_ql`` (n_masked * n_patches, n_labels)
    marks patch ``p`` of masked image ``m`` (row ``m * n_patches + p``) as showing label ``l``.
    Patch ``p`` of image ``i`` is store row ``i * tokens_per_image + first_patch + p``.
    """

    images_m: IntArray
    positives_ql: npt.NDArray[np.bool_]
    n_images: int
    tokens_per_image: int
    first_patch: int
    n_patches: int


def token_statistics(block: BlockNonzeros) -> tuple[IntArray, DoubleArray, FloatArray]:
    """(nonzero count (b,), sum of activations (b,) float64, max activation (b,), 0 when none)."""
    counts_b = np.bincount(block.local_n, minlength=block.n_latents).astype(np.int64)
    # bincount's weighted sums are float64 (its stubs say integer)
    sums_b = np.bincount(block.local_n, weights=block.values_n.astype(np.float64), minlength=block.n_latents).astype(np.float64)
    max_b = np.zeros(block.n_latents, dtype=np.float32)
    alive_b = counts_b > 0
    if alive_b.any():
        starts = (np.cumsum(counts_b) - counts_b)[alive_b]
        max_b[alive_b] = np.maximum.reduceat(block.values_n, starts)
    return counts_b, sums_b, max_b


def _top_k_sorted(order_n: IntArray, local_n: IntArray, n_latents: int, k: int) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """For entries sorted by latent (``order_n``), the (b, k) positions of each latent's first k
    entries and a (b, k) mask of which exist."""
    sorted_local = local_n[order_n]
    counts_b = np.bincount(local_n, minlength=n_latents)
    rank_n = np.arange(len(order_n)) - (np.cumsum(counts_b) - counts_b)[sorted_local]
    keep = rank_n < k
    slots_bk = np.full((n_latents, k), -1, dtype=np.int64)
    slots_bk[sorted_local[keep], rank_n[keep]] = order_n[keep]
    return slots_bk, slots_bk >= 0


def top_tokens(block: BlockNonzeros, k: int) -> tuple[IntArray, FloatArray]:
    """The k tokens where each latent is largest, ties to the lower row: (rows (b, k), values
    (b, k)), padded with -1 and 0."""
    order_n = np.lexsort((block.rows_n, -block.values_n, block.local_n))
    slots_bk, found_bk = _top_k_sorted(order_n, block.local_n, block.n_latents, k)
    rows_bk = np.full((block.n_latents, k), -1, dtype=np.int64)
    values_bk = np.zeros((block.n_latents, k), dtype=np.float32)
    # only found slots are read: a block whose latents never fire has no entry for -1 to index
    rows_bk[found_bk] = block.rows_n[slots_bk[found_bk]]
    values_bk[found_bk] = block.values_n[slots_bk[found_bk]]
    return rows_bk, values_bk


def image_activations(block: BlockNonzeros, n_images: int, tokens_per_image: int) -> FloatArray:
    """Each latent's largest activation over each image's stored tokens, (b, n_images)."""
    keys_n = block.local_n * n_images + block.rows_n // tokens_per_image
    dense = np.zeros(block.n_latents * n_images, dtype=np.float32)
    if len(keys_n):
        # keys are non-decreasing (latent, then ascending rows), so each image's tokens are a run
        starts = np.flatnonzero(np.concatenate([[True], keys_n[1:] != keys_n[:-1]]))
        dense[keys_n[starts]] = np.maximum.reduceat(block.values_n, starts)
    return dense.reshape(block.n_latents, n_images)


def top_images(activations_bi: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
    """The k images each latent activates most, ties to the lower index: (images (b, k), values
    (b, k)), padded with -1 and 0 past the images where it fires."""
    k_taken = min(k, activations_bi.shape[1])
    order_bk = np.argsort(-activations_bi, axis=1, kind="stable")[:, :k_taken]
    values_bk = np.take_along_axis(activations_bi, order_bk, axis=1)
    images_bk = np.full((len(activations_bi), k), -1, dtype=np.int64)
    padded_values_bk = np.zeros((len(activations_bi), k), dtype=np.float32)
    fired_bk = values_bk > 0
    images_bk[:, :k_taken] = np.where(fired_bk, order_bk, -1)
    padded_values_bk[:, :k_taken] = np.where(fired_bk, values_bk, 0)
    return images_bk, padded_values_bk


def class_means(activations_bi: FloatArray, class_i: IntArray, n_classes: int) -> DoubleArray:
    """Mean image activation over each class's images, (b, n_classes) float64; NaN for a class
    without images. ``class_i`` holds each image's class index, -1 for none."""
    labelled = class_i >= 0
    one_hot_ic = np.zeros((int(labelled.sum()), n_classes), dtype=np.float64)
    one_hot_ic[np.arange(len(one_hot_ic)), class_i[labelled]] = 1
    sums_bc = activations_bi[:, labelled].astype(np.float64) @ one_hot_ic
    counts_c = one_hot_ic.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts_c > 0, sums_bc / counts_c, np.nan)


def sparse_average_precision(local_n: IntArray, values_n: FloatArray, positives_nt: npt.NDArray[np.bool_],
                             n_latents: int, n_total: int, n_positive_t: IntArray) -> DoubleArray:
    """Average precision of each latent's scores for each target, (b, t) float64, where a latent
    scores 0 on all ``n_total`` items but its nonzero entries; NaN for a target without positives.

    The same AP as :func:`traitlens.specimens.average_precision.average_precision_by_target`
    (scikit-learn's definition, tied scores entering together): the mean over positives of the
    precision among items scoring at least as high. The zeros of a latent form one tie, so only
    its nonzero entries are sorted.

    Args:
        local_n: (n,) latent of each nonzero entry (0..b-1).
        values_n: (n,) its score, nonzero.
        positives_nt: (n, t) whether the entry's item is a positive of each target.
        n_total: items each latent scores, zeros included.
        n_positive_t: (t,) positives of each target among all items.
    """
    counts_b = np.bincount(local_n, minlength=n_latents)
    zeros_b = n_total - counts_b
    order_n = np.lexsort((-values_n, local_n))
    local_s, values_s, positives_st = local_n[order_n], values_n[order_n], positives_nt[order_n]
    n = len(order_n)
    starts_run = np.ones(n, dtype=bool)
    starts_run[1:] = (local_s[1:] != local_s[:-1]) | (values_s[1:] != values_s[:-1])
    last_tied_s = np.flatnonzero(np.append(starts_run[1:], True))[np.cumsum(starts_run) - 1]
    first_s = (np.cumsum(counts_b) - counts_b)[local_s]
    reaches_zero_s = values_s < 0  # items scoring 0 rank above negative scores
    tokens_above_s = last_tied_s - first_s + 1 + np.where(reaches_zero_s, zeros_b[local_s], 0)
    nonnegative_b = np.bincount(local_s[~reaches_zero_s], minlength=n_latents)
    ap_bt = np.full((n_latents, positives_st.shape[1]), np.nan)
    for t, n_positive in enumerate(n_positive_t.tolist()):
        if n_positive == 0:
            continue
        hits_s = positives_st[:, t]
        running_s = np.cumsum(hits_s)
        before_s = running_s[first_s] - hits_s[first_s]  # hits of earlier latents
        zero_hits_b = n_positive - np.bincount(local_s, weights=hits_s, minlength=n_latents)
        hits_above_s = running_s[last_tied_s] - before_s + np.where(reaches_zero_s, zero_hits_b[local_s], 0)
        precision_sum_b = np.bincount(local_s[hits_s], weights=(hits_above_s / tokens_above_s)[hits_s], minlength=n_latents)
        # positives scoring 0: precision among everything scoring >= 0
        nonnegative_hits_b = np.bincount(local_s[hits_s & ~reaches_zero_s], minlength=n_latents)
        with np.errstate(invalid="ignore", divide="ignore"):
            zero_precision_b = np.where(zero_hits_b > 0, (nonnegative_hits_b + zero_hits_b) / (nonnegative_b + zeros_b), 0.0)
        ap_bt[:, t] = (precision_sum_b + zero_hits_b * zero_precision_b) / n_positive
    return ap_bt


def class_average_precision(activations_bi: FloatArray, class_i: IntArray, n_classes: int) -> DoubleArray:
    """How well each latent's image activation ranks each class's images among the labelled
    images (one vs rest), (b, n_classes) float64 average precision; NaN for a class without images."""
    labelled_i = class_i >= 0
    scores_bj = activations_bi[:, labelled_i]
    classes_j = class_i[labelled_i]
    local_n, image_n = np.nonzero(scores_bj)
    positives_nc = classes_j[image_n, None] == np.arange(n_classes)[None, :]
    return sparse_average_precision(local_n, scores_bj[local_n, image_n], positives_nc, len(activations_bi), len(classes_j),
                                    np.bincount(classes_j, minlength=n_classes))


def label_average_precision(block: BlockNonzeros, targets: PatchTargets) -> DoubleArray:
    """How well each latent's patch-token activations rank the patches showing each mask label,
    over the patches of masked images, (b, n_labels) float64; NaN for a label no patch shows."""
    masked_index_i = np.full(targets.n_images, -1, dtype=np.int64)
    masked_index_i[targets.images_m] = np.arange(len(targets.images_m))
    patch_n = block.rows_n % targets.tokens_per_image - targets.first_patch
    masked_n = masked_index_i[block.rows_n // targets.tokens_per_image]
    keep = (patch_n >= 0) & (patch_n < targets.n_patches) & (masked_n >= 0)
    patch_row_n = masked_n[keep] * targets.n_patches + patch_n[keep]
    return sparse_average_precision(block.local_n[keep], block.values_n[keep], targets.positives_ql[patch_row_n],
                                    block.n_latents, len(targets.positives_ql), targets.positives_ql.sum(0))
