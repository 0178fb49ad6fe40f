"""Saved SAEs: ``sae.safetensors`` (weights) + ``config.json`` (architecture and provenance).

No pickle anywhere. A damaged file gives one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from traitlens.errors import TraitlensError
from traitlens.json_config import read_json_config
from traitlens.sae.config import SAEConfig, SAEConfigError
from traitlens.sae.model import SparseAutoencoder
from traitlens.store.atomic import atomic_write_json, commit, temp_path

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
FORMAT = "traitlens.sae"


class SAELoadError(TraitlensError):
    """A saved SAE is missing, damaged, or not an SAE."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    temp = temp_path(path)
    save_file(cpu, str(temp), metadata=metadata)
    commit(temp, path)


def save_sae(sae: SparseAutoencoder, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the weights, then the config (so a directory with a config has its weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, dict(sae.state_dict()))
    atomic_write_json(directory / CONFIG, {"format": FORMAT, "sae": sae.config.to_dict(), **(extra or {})})


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


def load_sae_with_config(directory: str | Path, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE saved in ``directory`` and its whole config (provenance: layer, model, metrics)."""
    directory = Path(directory)
    data = read_sae_config(directory)
    try:
        config = SAEConfig.from_dict(data["sae"])
    except SAEConfigError as error:
        raise SAELoadError(f"{directory / CONFIG}: {error}") from error
    try:
        tensors = load_file(str(directory / WEIGHTS), device=str(device))
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise SAELoadError(f"cannot read SAE weights {directory / WEIGHTS}: {str(error).splitlines()[0][:200]}") from error
    sae = SparseAutoencoder(config).to(device)
    try:
        sae.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise SAELoadError(f"SAE weights {directory / WEIGHTS} do not match its config: {str(error).splitlines()[0][:200]}") from error
    return sae, data
