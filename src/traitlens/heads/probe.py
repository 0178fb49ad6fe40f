"""``traitlens probe``: a linear probe trained on one stored layer's pooled tokens.

Each stored image becomes one feature vector (its CLS token, or the mean of its patch tokens) and
its label one class. A seeded split holds out a validation share; multinomial logistic regression
(:mod:`traitlens.heads.logistic`) is fitted on the rest. The result is a :class:`LinearHead`
directory that :func:`traitlens.heads.load_head_backbone` attaches to the store's model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens.backbones.layout import TokenSelection
from traitlens.checks import check_float, check_int
from traitlens.heads.errors import HeadError
from traitlens.heads.linear_head import LinearHead, save_head
from traitlens.heads.logistic import fit_logistic_regression
from traitlens.heads.pooling import POOLINGS, Pooling, check_pooling, pool_tokens
from traitlens.output_folder import check_output_folder, claim_output_folder
from traitlens.splits import train_val_split
from traitlens.store import ActivationStore
from traitlens.store.manifest import StoredLayer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """What to train. ``layer`` defaults to the store's last layer; ``pooling`` to ``cls`` when the
    store holds the layer's CLS token, else ``mean``. ``l2`` weighs ||W||²/2 against the mean
    cross-entropy on standardized features. ``overwrite`` replaces an earlier probe in ``out``."""

    acts: Path
    out: Path
    layer: str | None = None
    pooling: Pooling | None = None
    val_fraction: float = 0.2
    seed: int = 0
    l2: float = 1e-3
    max_iter: int = 500
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise HeadError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        check_float(self.val_fraction, "--val-fraction", HeadError, below=1)
        check_int(self.seed, "--seed", HeadError, minimum=0)
        check_float(self.l2, "--l2", HeadError)
        check_int(self.max_iter, "--max-iter", HeadError)

    def to_dict(self) -> dict[str, Any]:
        # ``out`` and ``overwrite`` are left out: the same probe written to two places is the same bytes
        data = asdict(self)
        del data["out"], data["overwrite"]
        data["acts"] = str(self.acts)
        return data


def default_pooling(layer: StoredLayer, selection: TokenSelection) -> Pooling:
    return "cls" if layer.layout.has_cls and selection != "patch" else "mean"


def _check_store_pooling(store: ActivationStore, layer: StoredLayer, pooling: Pooling) -> None:
    check_pooling(layer.layout, store.tokens, pooling, f"layer {layer.name} of the store at {store.root}")


def pooled_store_features(store: ActivationStore, layer: StoredLayer, pooling: Pooling) -> torch.Tensor:
    """(n_images, width) float32 features of every stored image, in store order, one shard at a time."""
    selection: TokenSelection = store.tokens
    _check_store_pooling(store, layer, pooling)
    # a float32 copy of one shard at a time (the memory maps are read-only and may be float16), of
    # only the CLS token when that is all the pooling reads
    kept = slice(0, 1) if pooling == "cls" else slice(None)
    parts = [pool_tokens(torch.from_numpy(np.array(tokens_btd[:, kept], dtype=np.float32)), layer.layout, selection, pooling)
             for _images, tokens_btd in store.iter_images(layer.name)]
    return torch.cat(parts) if parts else torch.zeros(0, layer.width)


def _labels(store: ActivationStore) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Class index per stored image (-1 when unlabelled) and the class names, the dataset's own
    order when it has one, else sorted."""
    labels = [image.label for image in store.images]
    present = sorted({label for label in labels if label is not None})
    if not present:
        raise HeadError(f"the images of the store at {store.root} have no labels; a probe needs a labelled source "
                        "(a class folder, or a table with a label column)")
    names = store.class_names if store.class_names is not None and set(present) <= set(store.class_names) else present
    if len(names) < 2:
        raise HeadError(f"the store at {store.root} has a single class ({names[0]!r}); a probe needs at least two")
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[label] if label is not None else -1 for label in labels]), tuple(names)


def _accuracy(head: LinearHead, features_nd: torch.Tensor, labels_n: torch.Tensor) -> float | None:
    return float((head.logits(features_nd).argmax(-1) == labels_n).double().mean()) if len(labels_n) else None


def train_probe(config: ProbeConfig) -> LinearHead:
    """Fit the probe, save it to ``config.out`` (atomically, JSON last) and return it."""
    check_output_folder(config.out, HeadError)
    store = ActivationStore(config.acts)
    layer = store.layer(config.layer if config.layer is not None else -1)
    selection: TokenSelection = store.tokens
    pooling = config.pooling or default_pooling(layer, selection)
    _check_store_pooling(store, layer, pooling)  # before reading any shard
    labels_n, class_names = _labels(store)
    labelled_n = (labels_n >= 0).nonzero().squeeze(1)
    train_n, val_n = (labelled_n[part] for part in train_val_split(len(labelled_n), config.val_fraction, config.seed))
    if len(train_n) < len(class_names):
        raise HeadError(f"{len(train_n)} labelled training images for {len(class_names)} classes in {config.acts}; "
                        "a probe needs more (or a smaller --val-fraction)")
    # claimed once the request is checked: --overwrite clears an earlier probe only for one that can run
    claim_output_folder(config.out, "probe", overwrite=config.overwrite, error=HeadError)
    features_nd = pooled_store_features(store, layer, pooling)
    n_nonfinite = int((~torch.isfinite(features_nd[labelled_n]).all(1)).sum())
    if n_nonfinite:
        raise HeadError(f"{n_nonfinite} images have NaN/Inf tokens at layer {layer.name} of {config.acts}; a probe needs finite features")
    if len(labelled_n) < len(labels_n):
        log.warning("%d of %d stored images have no label and are left out", len(labels_n) - len(labelled_n), len(labels_n))
    fit = fit_logistic_regression(features_nd[train_n], labels_n[train_n], len(class_names), config.l2, config.max_iter)
    model = {key: getattr(store.model, key) for key in ("spec", "weights", "pretrained", "weights_fingerprint")}
    head = LinearHead(fit.weight_cd, fit.bias_c, layer.name, pooling, class_names, model)
    metrics = {
        "train_accuracy": _accuracy(head, features_nd[train_n], labels_n[train_n]),
        "val_accuracy": _accuracy(head, features_nd[val_n], labels_n[val_n]),
        "n_train": len(train_n), "n_val": len(val_n), "n_unlabelled": len(labels_n) - len(labelled_n),
        "train_loss": fit.loss, "iterations": fit.iterations,
    }
    info = {"kind": "linear_probe", "acts": {"path": str(config.acts), "tokens": selection, "n_images": store.n_images},
            "metrics": metrics, "config": config.to_dict()}
    head = replace(head, info=info)
    save_head(config.out, head)
    return head
