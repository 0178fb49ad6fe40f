"""One checkpoint per finished epoch of a training loop: the model's weights and its optimizer's
state in one safetensors file (never pickle), and ``state.json`` naming it, written after it.

A run killed and started again loads the last finished epoch and, the loop being a function of
its seed, ends with the weights of an uninterrupted run. A checkpoint of another configuration
is refused rather than continued.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.errors import TraitlensError
from traitlens.optim_state import load_optimizer_tensors, optimizer_tensors
from traitlens.output_folder import claim_output_folder

STATE = "state.json"
CHECKPOINT = "checkpoint"
"""The folder of a training's checkpoints inside its output folder."""
_WEIGHTS = re.compile(r"epoch-\d{4,}\.safetensors")


class Checkpointed(Protocol):
    """What a checkpoint saves and restores: a module, or the trained part of one."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any: ...


class EpochCheckpoints:
    """The checkpoints in ``folder`` of the run ``identity`` describes (everything that decides
    its weights: a checkpoint is continued only for the same); errors are ``error``."""

    def __init__(self, folder: Path, identity: dict[str, Any], error: type[TraitlensError] = TraitlensError) -> None:
        self.folder = folder
        self.identity = identity
        self.error = error

    def save(self, epoch: int, model: Checkpointed, optimizer: torch.optim.Optimizer) -> None:
        weights = self.folder / f"epoch-{epoch:04d}.safetensors"
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | optimizer_tensors(optimizer, "optim")
        save_tensors(weights, tensors)
        atomic_write_json(self.folder / STATE, {"epoch": epoch, "weights": weights.name, "config": self.identity})
        for old in self.folder.glob("epoch-*.safetensors"):
            if old != weights:
                old.unlink()

    def load(self, model: Checkpointed, optimizer: torch.optim.Optimizer, epochs: int) -> int:
        """The number of finished epochs (of at most ``epochs``) restored; 0 without a checkpoint."""
        path = self.folder / STATE
        if not path.is_file():
            return 0
        try:
            state = json.loads(path.read_text())
            epoch, weights, identity = state["epoch"], state["weights"], state["config"]
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise self.error(f"damaged checkpoint {path}: {str(error).splitlines()[0][:200]}") from error
        if identity != self.identity:
            raise self.error(f"the checkpoint in {self.folder} is from a different configuration; use another --out "
                             "(or --overwrite to start again)")
        # the weights file is named by the checkpoint itself, so it must be one of its own files
        if not isinstance(weights, str) or _WEIGHTS.fullmatch(weights) is None \
                or isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= epochs:
            raise self.error(f"damaged checkpoint {path}: epoch {epoch!r} and weights {weights!r}")
        try:
            tensors = load_file(str(self.folder / weights))
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            load_optimizer_tensors(optimizer, "optim", tensors)
        except Exception as error:  # safetensors and load_state_dict raise several types for damaged files
            raise self.error(f"damaged checkpoint in {self.folder}: {str(error).splitlines()[0][:200]}") from error
        return epoch

    def remove(self) -> None:
        if self.folder.is_dir():
            for file in self.folder.glob("*"):
                file.unlink()
            self.folder.rmdir()


def claim_training_folder(out: Path, command: str, result_file: str, identity: dict[str, Any], what: str, *,
                          overwrite: bool, error: type[TraitlensError]) -> bool:
    """Claim ``out`` for a resumable training whose result is ``result_file`` recording its
    ``identity`` under ``training``, and checkpoints in ``out/checkpoint``; True when ``out``
    already holds that result (``what``, a name for it, words the refusal of another one)."""
    claim_output_folder(out, command, overwrite=overwrite, resumable=True, own_files=(result_file, f"{CHECKPOINT}/{STATE}"),
                        error=error)
    path = out / result_file
    if not path.is_file():
        return False
    try:
        trained = json.loads(path.read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        trained = None
    if trained != identity:
        raise error(f"{out} already holds {what} trained with other settings; choose another --out, "
                    "or pass --overwrite to replace it")
    EpochCheckpoints(out / CHECKPOINT, {}).remove()  # a run killed after saving its result, before removing these
    return True
