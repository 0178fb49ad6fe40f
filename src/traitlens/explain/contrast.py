"""The explained score: a target class, optionally minus its reference classes (Finer-CAM).

Every method explains ``score_b = sum_c coef_bc * logits_bc``. Without references ``coef`` is the
one-hot target; with references it is ``onehot(target) - gamma * mean(onehot(ref))``, the
comparative score of Finer-CAM taken before any ReLU. Because it is one scalar per image, one
backward pass of its batch sum gives every image's gradients, however many references there are.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from traitlens.explain.config import DEFAULT_N_REFS, ClassKey, ExplainError


def resolve_class(key: ClassKey, class_names: Sequence[str] | None, what: str = "class") -> int:
    """A class name or index -> index. A text that is a class name is that class even when it
    looks like a number; other numbers are indices (checked against the head's width later)."""
    if isinstance(key, str) and class_names is not None and key in class_names:
        return list(class_names).index(key)
    text = str(key).strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if class_names is None:
        raise ExplainError(f"{what} {key!r} is not a class index, and the model has no class names; give an index")
    close = difflib.get_close_matches(text, class_names, n=3)
    hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    raise ExplainError(f"unknown {what} {key!r}: not one of the model's {len(class_names)} class names{hint}")


def check_class_indices(indices: torch.Tensor, n_classes: int, what: str) -> None:
    """Refuse indices outside the head's ``n_classes`` outputs."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_classes):
        bad = int(indices.max()) if int(indices.max()) >= n_classes else int(indices.min())
        raise ExplainError(f"{what} {bad} is out of range: the head has {n_classes} classes (0..{n_classes - 1})")


def check_n_refs(n_refs: int | None, n_classes: int) -> None:
    """Refuse asking for more automatic references than the head has classes besides the target."""
    if n_refs is not None and n_refs > n_classes - 1:
        raise ExplainError(f"{n_refs} reference classes asked for, but the head has only {n_classes - 1} classes "
                           "besides the target; ask for fewer")


def auto_references(logits_bc: torch.Tensor, targets_b: torch.Tensor, n_refs: int | None = None) -> torch.Tensor:
    """Each image's ``n_refs`` highest-scoring classes other than its target, (b, n_refs) int64:
    the classes the model finds closest to the target. ``None`` takes :data:`DEFAULT_N_REFS`, or
    every other class of a head with fewer; asking for more than there are is an error (clamping
    would quietly explain something else than asked)."""
    others = logits_bc.shape[1] - 1
    check_n_refs(n_refs, logits_bc.shape[1])
    masked_bc = logits_bc.detach().clone()
    masked_bc.scatter_(1, targets_b[:, None], float("-inf"))
    return masked_bc.topk(min(DEFAULT_N_REFS, others) if n_refs is None else n_refs, dim=1).indices


def kept_references(refs_bk: torch.Tensor, targets_b: torch.Tensor) -> torch.Tensor:
    """(b, k) bool: the references that count for each image (a reference equal to the image's
    target is left out, so a fixed reference list also works when the target is the prediction)."""
    return refs_bk != targets_b[:, None]


def class_coefficients(targets_b: torch.Tensor, refs_bk: torch.Tensor, gamma: float, n_classes: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(b, n_classes) coefficients of the explained score; exactly one-hot when ``gamma == 0``."""
    coef_bc = torch.zeros(len(targets_b), n_classes, dtype=dtype, device=targets_b.device)
    coef_bc.scatter_(1, targets_b[:, None], 1.0)
    if refs_bk.shape[1]:
        keep_bk = kept_references(refs_bk, targets_b).to(dtype)
        share_bk = keep_bk / keep_bk.sum(1, keepdim=True).clamp_min(1.0)
        coef_bc.scatter_add_(1, refs_bk, -gamma * share_bk)
    return coef_bc
