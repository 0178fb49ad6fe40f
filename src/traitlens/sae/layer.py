"""Which stored layer a saved SAE reads (shared by ``traitlens evaluate`` and ``traitlens features``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlens.errors import LayerError, TraitlensError
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ActivationStore
from traitlens.store.manifest import StoredLayer


def stored_sae_layer(store: ActivationStore, saved: dict[str, Any], sae: SparseAutoencoder, sae_dir: Path,
                     layer: str | None = None, error: type[TraitlensError] = LayerError) -> StoredLayer:
    """The layer of ``store`` the SAE saved at ``sae_dir`` (its config ``saved``) reads: ``layer``
    when given, else the layer its config says it was trained on. An SAE that names no layer, or
    whose input width is not the layer's, is one ``error`` line; an unknown layer is the store's
    own one-line :class:`~traitlens.errors.StoreError`."""
    key = layer if layer is not None else saved.get("layer")
    if key is None:
        raise error(f"the SAE at {sae_dir} does not say which layer it was trained on; pass --layer")
    resolved = store.layer(key)
    if resolved.width != sae.config.d_in:
        raise error(f"the SAE at {sae_dir} reads {sae.config.d_in}-dim tokens but layer {resolved.name} of {store.root} "
                    f"is {resolved.width}-dim; pick the SAE's layer")
    return resolved
