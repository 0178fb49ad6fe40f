"""traitlens: find which visual traits a vision model uses, where they are, and whether it depends on them.

The Python API in one import (each name loads its package on first use, so ``import traitlens``
stays fast)::

    import traitlens

    backbone = traitlens.load_backbone("timm:vit_small_patch16_224.augreg_in21k")   # any model as tokens at layers
    store = traitlens.ActivationStore("acts")                                        # a stored layer's tokens
    sae = traitlens.load_sae("saes/x")                                               # a saved sparse autoencoder
    features = traitlens.LatentFeatures("features/x")                                # what each latent fires on

See README.md ("From Python") for each verb's functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from traitlens.version import __version__ as __version__

# name -> module that defines it
_EXPORTS = {
    "load_backbone": "traitlens.backbones",
    "Backbone": "traitlens.backbones",
    "TokenLayout": "traitlens.backbones",
    "ActivationStore": "traitlens.store",
    "ExtractConfig": "traitlens.store",
    "ShuffleConfig": "traitlens.store",
    "extract": "traitlens.store",
    "store_from_arrays": "traitlens.store",
    "SAEConfig": "traitlens.sae",
    "SparseAutoencoder": "traitlens.sae",
    "TrainConfig": "traitlens.sae",
    "RunConfig": "traitlens.sae",
    "train": "traitlens.sae",
    "load_sae": "traitlens.sae",
    "load_sae_with_config": "traitlens.sae",
    "save_sae": "traitlens.sae",
    "FeaturesConfig": "traitlens.features",
    "analyze_features": "traitlens.features",
    "LatentFeatures": "traitlens.features",
    "ExplainConfig": "traitlens.explain",
    "explain": "traitlens.explain",
    "LatentEdit": "traitlens.interventions",
    "latent_edit": "traitlens.interventions",
    "TraitlensError": "traitlens.errors",
}

__all__ = [
    "ActivationStore",
    "Backbone",
    "ExplainConfig",
    "ExtractConfig",
    "FeaturesConfig",
    "LatentEdit",
    "LatentFeatures",
    "RunConfig",
    "SAEConfig",
    "ShuffleConfig",
    "SparseAutoencoder",
    "TokenLayout",
    "TrainConfig",
    "TraitlensError",
    "analyze_features",
    "explain",
    "extract",
    "latent_edit",
    "load_backbone",
    "load_sae",
    "load_sae_with_config",
    "save_sae",
    "store_from_arrays",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'traitlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from traitlens.backbones import Backbone, TokenLayout, load_backbone
    from traitlens.errors import TraitlensError
    from traitlens.explain import ExplainConfig, explain
    from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features
    from traitlens.interventions import LatentEdit, latent_edit
    from traitlens.sae import (
        RunConfig,
        SAEConfig,
        SparseAutoencoder,
        TrainConfig,
        load_sae,
        load_sae_with_config,
        save_sae,
        train,
    )
    from traitlens.store import (
        ActivationStore,
        ExtractConfig,
        ShuffleConfig,
        extract,
        store_from_arrays,
    )
