"""Which layer a saved SAE reads: the one resolver, for a store's layers (``evaluate``,
``features``) and for a model's (``steer``, ``attribute``, the specimens scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlens.errors import LayerError, TraitlensError
from traitlens.sae.io import sae_provenance
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.manifest import StoredLayer


def sae_layer_key(saved: dict[str, Any], sae_dir: Path, layer: str | None = None,
                  error: type[TraitlensError] = LayerError) -> str:
    """The layer (name or index) the SAE saved at ``sae_dir`` reads: ``layer`` when given, else
    the one its config ``saved`` says it was trained on."""
    key = layer if layer is not None else sae_provenance(saved, sae_dir).layer
    if key is None:
        raise error(f"the SAE at {sae_dir} does not say which layer it was trained on; pass --layer")
    return key


def check_sae_width(sae: SparseAutoencoder, sae_dir: Path, width: int, layer: str, where: str,
                    error: type[TraitlensError] = LayerError) -> None:
    """Refuse a layer whose tokens are not the SAE's input width."""
    if width != sae.config.d_in:
        raise error(f"the SAE at {sae_dir} reads {sae.config.d_in}-dim tokens but layer {layer} of {where} "
                    f"is {width}-dim; pick the SAE's layer")


def stored_sae_layer(store: ActivationStore, saved: dict[str, Any], sae: SparseAutoencoder, sae_dir: Path,
                     layer: str | None = None, error: type[TraitlensError] = LayerError) -> StoredLayer:
    """The layer of ``store`` the SAE saved at ``sae_dir`` (its config ``saved``) reads: ``layer``
    when given, else the layer its config says it was trained on. An SAE that names no layer, or
    whose input width is not the layer's, is one ``error`` line; an unknown layer is the store's
    own one-line :class:`~traitlens.errors.StoreError`."""
    resolved = store.layer(sae_layer_key(saved, sae_dir, layer, error))
    check_sae_width(sae, sae_dir, resolved.width, resolved.name, str(store.root), error)
    return resolved
