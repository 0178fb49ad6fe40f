"""The training recipe shared by the loops that train parameters on labelled images held in memory
(``heads train``, ``finetune``): SGD with momentum and weight decay, a linear warm-up then cosine
decay, a seeded train/validation split and a seeded order per epoch, one checkpoint per epoch.

The defaults are Prompt-CAM's (SGD, momentum 0.9, learning rate 5e-3, weight decay 1e-3, batch 16).
Deterministic: the order of every epoch is a function of the seed, so a run killed and started
again continues from its last epoch checkpoint to the weights of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from traitlens.checkpoints import Checkpointed, EpochCheckpoints
from traitlens.checks import check_float, check_int
from traitlens.cli_args import fraction, non_negative_float, non_negative_int, positive_float, positive_int
from traitlens.errors import TraitlensError
from traitlens.lr_schedule import warmup_cosine


@dataclass(frozen=True, kw_only=True)
class SGDRecipe:
    """The numbers of the recipe (a base of the configs that train with it)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_epochs: float = 1.0
    val_fraction: float = 0.1
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """What fixes the trained weights: every field but ``out``, ``device`` and ``overwrite``
        (paths as text), compared before a checkpoint or a finished result is taken as this run's."""
        fields = {name: value for name, value in asdict(self).items() if name not in ("out", "device", "overwrite")}
        return json.loads(json.dumps(fields, default=str))

    def check_recipe(self, error: type[TraitlensError]) -> None:
        check_int(self.epochs, "--epochs", error)
        check_int(self.batch_size, "--batch-size", error)
        check_int(self.seed, "--seed", error, minimum=0)
        check_float(self.lr, "--lr", error, above=True)
        check_float(self.momentum, "--momentum", error, below=1)
        check_float(self.weight_decay, "--weight-decay", error)
        check_float(self.warmup_epochs, "--warmup-epochs", error)
        check_float(self.val_fraction, "--val-fraction", error, below=1)


RECIPE_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "val_fraction", "seed")


def add_recipe_args(parser: argparse.ArgumentParser, what: str) -> None:
    """The recipe's options, one vocabulary for every command that trains with it."""
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the training images (default 10)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per step (default 16, Prompt-CAM's)")
    parser.add_argument("--lr", type=positive_float, default=5e-3, help="peak SGD learning rate (default 5e-3, Prompt-CAM's)")
    parser.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=1e-3, help="SGD weight decay (default 1e-3)")
    parser.add_argument("--val-fraction", type=fraction, default=0.1, help="share of images held out for validation (default 0.1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help=f"seed of {what}, the split and the order")


def recipe_options(args: argparse.Namespace) -> dict[str, float | int]:
    """The recipe's fields from parsed options (:func:`add_recipe_args`)."""
    return {name: getattr(args, name) for name in RECIPE_FIELDS if hasattr(args, name)}


def train_epochs(recipe: SGDRecipe, parameters: Iterable[nn.Parameter], trained: Checkpointed, checkpoints: EpochCheckpoints,
                 logits_fn: Callable[[torch.Tensor], torch.Tensor], labels_n: torch.Tensor, train_idx: torch.Tensor,
                 error: type[TraitlensError], desc: str, show_progress: bool = True) -> None:
    """Train ``parameters`` with the recipe from the last checkpoint of ``checkpoints`` (which
    saves ``trained``): ``logits_fn`` maps a batch of image indices to (b, classes) logits on the
    training device, ``labels_n`` are the images' labels."""
    optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    first_epoch = checkpoints.load(trained, optimizer, recipe.epochs)
    steps_per_epoch = math.ceil(len(train_idx) / recipe.batch_size)
    total_steps, warmup_steps = recipe.epochs * steps_per_epoch, round(recipe.warmup_epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(first_epoch, recipe.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch))]
        progress = tqdm(order.split(recipe.batch_size), unit="batch", desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}",
                        disable=not show_progress)
        for step_in_epoch, batch in enumerate(progress):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(recipe.lr, epoch * steps_per_epoch + step_in_epoch, warmup_steps, total_steps)
            logits_bc = logits_fn(batch)
            loss = loss_fn(logits_bc, labels_n[batch].to(logits_bc.device))
            if not bool(torch.isfinite(loss)):
                raise error(f"training diverged at epoch {epoch + 1} (loss {float(loss)}); try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        checkpoints.save(epoch + 1, trained, optimizer)
