"""Saved SAEs: ``sae.safetensors`` (weights) + ``config.json`` (architecture and provenance).

No pickle anywhere. A damaged file gives one line naming it: the config is checked field by
field, and the weights file's header (names and shapes) against the config before any tensor is
read or allocated, so a config claiming a width of 10^12 costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.backbones.layout import TOKEN_SELECTIONS, TokenSelection
from traitlens.errors import TraitlensError, first_line
from traitlens.json_config import read_json_config
from traitlens.sae.config import SAEConfig, SAEConfigError
from traitlens.sae.model import SparseAutoencoder

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
FORMAT = "traitlens.sae"


class SAELoadError(TraitlensError):
    """A saved SAE is missing, damaged, or not an SAE."""


def save_sae(sae: SparseAutoencoder, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the weights, then the config (so a directory with a config has its weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, dict(sae.state_dict()))
    atomic_write_json(directory / CONFIG, {"format": FORMAT, "sae": sae.config.to_dict(), **(extra or {})})


@dataclass(frozen=True)
class SAEProvenance:
    """What a saved SAE's config records about where its training tokens came from (written by
    ``traitlens train`` and ``import-sae --layer``; any of it may be missing in an imported SAE)."""

    layer: str | None
    acts: str | None
    model: str | None
    weights_fingerprint: str | None
    tokens_kind: TokenSelection | None


def sae_provenance(saved: dict[str, Any], directory: Path) -> SAEProvenance:
    """The typed provenance of the config ``saved`` of the SAE at ``directory`` (one line when damaged)."""
    texts = {key: saved.get(key) for key in ("layer", "acts", "model", "weights_fingerprint")}
    bad = [key for key, value in texts.items() if value is not None and not isinstance(value, str)]
    tokens = saved.get("tokens_kind")
    if tokens is not None and tokens not in TOKEN_SELECTIONS:
        bad.append("tokens_kind")
    if bad:
        raise SAELoadError(f"damaged SAE config in {directory}: {', '.join(f'{key} {saved.get(key)!r}' for key in bad)} "
                           f"(layer, acts, model and weights_fingerprint are text; tokens_kind one of {', '.join(TOKEN_SELECTIONS)})")
    return SAEProvenance(texts["layer"], texts["acts"], texts["model"], texts["weights_fingerprint"] or None, tokens)


def read_sae_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    data = read_json_config(path, FORMAT, "SAE config", SAELoadError, f"no saved SAE at {directory}: {CONFIG} missing")
    if not isinstance(data.get("sae"), dict):
        raise SAELoadError(f"{path} is not a traitlens SAE config")
    return data


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE saved in ``directory`` (``traitlens train`` or ``import-sae`` output), ready to
    ``encode``/``decode``; its whole saved config is :func:`load_sae_with_config`'s second value."""
    return load_sae_with_config(directory, device)[0]


def _check_header(path: Path, config: SAEConfig) -> None:
    """The weights file holds exactly the tensors of ``config``'s SAE, by its header alone."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # safetensors raises several types for missing, truncated or foreign files
        raise SAELoadError(f"cannot read SAE weights {path}: {first_line(error)}") from error
    try:
        expected = SparseAutoencoder.state_shapes(config)
    except SAEConfigError as error:
        raise SAELoadError(f"{path.parent / CONFIG}: {error}") from error
    if found.keys() != expected.keys():
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        what = "; ".join(f"{label} {', '.join(names)}" for label, names in (("missing", missing), ("unexpected", unexpected)) if names)
        raise SAELoadError(f"SAE weights {path} do not match its config: tensors {what}")
    for name, shape in expected.items():
        if found[name] != shape:
            raise SAELoadError(f"SAE weights {path} do not match its config: {name} has shape {found[name]}, "
                               f"the config ({config.activation}, d_in {config.d_in}, width {config.width}) needs {shape}")


def check_finite(where: str, tensors: dict[str, torch.Tensor], error: type[TraitlensError]) -> None:
    """NaN or infinite weights would give NaN latents silently; ``-inf`` is allowed in
    ``log_threshold`` only, where it is a zero threshold (an imported ReLU-like latent)."""
    for name, tensor in tensors.items():
        values = tensor.masked_fill(tensor == float("-inf"), 0.0) if name == "log_threshold" else tensor
        if values.is_floating_point() and not torch.isfinite(values).all():
            raise error(f"{where}: tensor {name} holds NaN or infinite values")


def load_sae_with_config(directory: str | Path, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE saved in ``directory`` and its whole config (provenance: layer, model, metrics)."""
    directory = Path(directory)
    data = read_sae_config(directory)
    try:
        config = SAEConfig.from_dict(data["sae"])
    except SAEConfigError as error:
        raise SAELoadError(f"{directory / CONFIG}: {error}") from error
    weights = directory / WEIGHTS
    _check_header(weights, config)
    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as error:  # safetensors raises several types for damaged data
        raise SAELoadError(f"cannot read SAE weights {weights}: {first_line(error)}") from error
    check_finite(f"SAE weights {weights}", tensors, SAELoadError)
    sae = SparseAutoencoder(config).to(device)
    sae.load_state_dict(tensors, strict=True)  # names and shapes were checked against the config
    return sae, data
