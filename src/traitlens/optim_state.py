"""Optimizer state as flat named tensors, so checkpoints are safetensors (never pickle)."""

from __future__ import annotations

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix}.{param index}.{state name}`` for every per-parameter state tensor (Adam's step,
    moments, ...); the hyper-parameters are rebuilt from the config, not stored."""
    return {f"{prefix}.{index}.{key}": value for index, state in optimizer.state_dict()["state"].items()
            for key, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(f"{prefix}."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    state_dict = optimizer.state_dict()
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
