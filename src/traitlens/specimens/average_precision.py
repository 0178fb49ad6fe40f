"""Average precision of many feature columns against many boolean targets at once."""

from __future__ import annotations

import numpy as np
import torch

from traitlens.specimens.benchmark import ScoringError

_AP_BLOCK_ELEMENTS = 1 << 23  # average precision sorts blocks of (patches x features); ~20 bytes an element

ArrayOrTensor = np.ndarray | torch.Tensor


def average_precision_by_target(scores_nf: ArrayOrTensor, positives_nt: ArrayOrTensor) -> torch.Tensor:
    """Average precision of every feature for every target, (t, f) float64.

    AP as scikit-learn's ``average_precision_score`` defines it: over the distinct score thresholds
    in decreasing order, ``sum_k (R_k - R_{k-1}) * P_k``, where tokens tied at a threshold enter
    together, so the result does not depend on how ties are ordered. A target with no positives
    gets NaN.

    Computed as the mean over positives ``j`` of the precision at threshold ``s_j``: (positives
    scoring ``>= s_j``) / (tokens scoring ``>= s_j``), both counted by binary search in sorted
    scores. Each feature column is sorted once for all targets; columns go in blocks so memory
    stays bounded (about 150 MB of temporaries whatever ``f`` is).

    Args:
        scores_nf: (n, f) scores, higher meaning more of the feature; no NaN.
        positives_nt: (n, t) booleans, True where the token shows the target.
    """
    scores_nf = torch.as_tensor(scores_nf)
    positives_nt = torch.as_tensor(positives_nt, device=scores_nf.device)
    if scores_nf.ndim != 2 or positives_nt.ndim != 2 or len(scores_nf) != len(positives_nt) or not len(scores_nf):
        raise ScoringError(f"average precision needs scores (n, f) and positives (n, t) with the same n >= 1, "
                           f"got {tuple(scores_nf.shape)} and {tuple(positives_nt.shape)}")
    if positives_nt.dtype != torch.bool:
        raise ScoringError(f"positives must be boolean, got {positives_nt.dtype}")
    if not scores_nf.is_floating_point():
        scores_nf = scores_nf.to(torch.float64)
    n, n_features = scores_nf.shape
    hits_by_target = [positives_n.nonzero()[:, 0] for positives_n in positives_nt.T]
    ap_tf = torch.full((len(hits_by_target), n_features), torch.nan, dtype=torch.float64, device=scores_nf.device)
    step = max(1, _AP_BLOCK_ELEMENTS // n)
    for start in range(0, n_features, step):
        block_cn = scores_nf[:, start : start + step].T.contiguous()
        if torch.isnan(block_cn).any():
            raise ScoringError(f"scores of features {start}..{start + len(block_cn) - 1} contain NaN")
        ascending_cn = block_cn.sort(dim=1).values
        for target, hits_p in enumerate(hits_by_target):
            if not len(hits_p):
                continue
            hit_scores_cp = block_cn[:, hits_p].contiguous()
            hits_above_cp = len(hits_p) - torch.searchsorted(hit_scores_cp.sort(dim=1).values, hit_scores_cp)
            tokens_above_cp = n - torch.searchsorted(ascending_cn, hit_scores_cp)
            ap_tf[target, start : start + len(block_cn)] = (hits_above_cp.to(torch.float64) / tokens_above_cp).mean(1)
    return ap_tf


def average_precision(scores_nf: ArrayOrTensor, positives_n: ArrayOrTensor) -> torch.Tensor:
    """Average precision (f,) float64 of each feature column against one boolean target (n,).
    See :func:`average_precision_by_target`."""
    positives_n = torch.as_tensor(positives_n)
    if positives_n.ndim != 1:
        raise ScoringError(f"positives must be (n,), got shape {tuple(positives_n.shape)}")
    return average_precision_by_target(scores_nf, positives_n[:, None])[0]
