"""Edits of SAE latents, and the token edit that splices them into a forward pass.

A token is encoded, its latents edited, and the token replaced by ``x + decode(z') - decode(z)``:
the edited reconstruction plus the SAE's reconstruction error ``x - decode(z)``. Only the edit
itself moves the token, so an edit that changes nothing leaves the model's output exactly as it
was, however imperfect the SAE.
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from traitlens.backbones import TokenEdit, TokenSelection
from traitlens.backbones.layout import TokenLayout
from traitlens.checks import check_int
from traitlens.errors import TraitlensError
from traitlens.sae.evaluation import splice
from traitlens.sae.model import SparseAutoencoder

EditOp = Literal["set", "scale", "zero", "max"]
EDIT_OPS: tuple[EditOp, ...] = get_args(EditOp)
EDIT_SYNTAX = "LATENT=zero, LATENT=VALUE (set), LATENT*FACTOR (scale) or LATENT=FACTORmax (a multiple of its observed max)"
# each digit run can be matched one way only: "\d+\.?\d*" splits a run of digits in n ways and
# backtracks quadratically on a long non-matching edit (the explorer takes edits from the network)
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
MAX_EDIT_LENGTH = 64
_EDIT = re.compile(rf"^\s*(\d+)\s*(?:=\s*(zero|{_NUMBER})\s*(max)?|\*\s*({_NUMBER}))\s*$")


class InterventionError(TraitlensError):
    """An intervention cannot be run as asked."""


@dataclass(frozen=True)
class LatentEdit:
    """One latent's new value: ``set`` to ``value``, ``scale`` by ``value``, ``zero``, or ``max``:
    set to ``value`` times the latent's observed maximum activation."""

    latent: int
    op: EditOp
    value: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.latent, "a latent", InterventionError, minimum=0)
        if self.op not in EDIT_OPS:
            raise InterventionError(f"unknown edit {self.op!r}; choose one of {', '.join(EDIT_OPS)}")
        # an infinite or NaN value would put NaN into every edited token and every prediction
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real) or not math.isfinite(self.value):
            raise InterventionError(f"the edit of latent {self.latent} needs a finite number, got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> LatentEdit:
        """``12=zero``, ``12=3.5``, ``12*0.5`` or ``12=2max``."""
        shown = repr(text if len(text) <= 40 else text[:37] + "...")
        unreadable = InterventionError(f"cannot read the edit {shown}; write {EDIT_SYNTAX}")
        if len(text) > MAX_EDIT_LENGTH:
            raise InterventionError(f"the edit {shown} is longer than {MAX_EDIT_LENGTH} characters; write {EDIT_SYNTAX}")
        match = _EDIT.match(text)
        if match is None:
            raise unreadable
        latent_text, assigned, is_max, factor = match.groups()
        try:
            latent = int(latent_text)
        except ValueError:  # more digits than Python converts
            raise unreadable from None
        if factor is not None:
            return cls(latent, "scale", float(factor))
        if assigned == "zero":
            if is_max:
                raise unreadable
            return cls(latent, "zero")
        return cls(latent, "max" if is_max else "set", float(assigned))

    @staticmethod
    def argument(text: str) -> LatentEdit:
        """:meth:`parse` as an argparse type, so a malformed ``--edit`` fails before any model loads."""
        try:
            return LatentEdit.parse(text)
        except InterventionError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    def __str__(self) -> str:
        return {"zero": f"{self.latent}=zero", "set": f"{self.latent}={self.value:g}",
                "scale": f"{self.latent}*{self.value:g}", "max": f"{self.latent}={self.value:g}max"}[self.op]


def check_edits(edits: Sequence[LatentEdit], width: int, observed_max_w: torch.Tensor | None) -> None:
    """Refuse latents outside the SAE, a latent edited twice, and ``max`` edits without maxima."""
    if not edits:
        raise InterventionError("no latent edits given")
    seen: set[int] = set()
    for edit in edits:
        if not 0 <= edit.latent < width:
            raise InterventionError(f"latent {edit.latent} is out of range: the SAE has {width} latents (0..{width - 1})")
        if edit.latent in seen:
            raise InterventionError(f"latent {edit.latent} is edited twice")
        seen.add(edit.latent)
    if observed_max_w is None and any(edit.op == "max" for edit in edits):
        raise InterventionError("an edit relative to a latent's observed max needs the observed maxima "
                                "(pass the features directory written by `traitlens features`)")
    if observed_max_w is not None and observed_max_w.shape != (width,):
        raise InterventionError(f"observed maxima hold {tuple(observed_max_w.shape)} values, the SAE has {width} latents")


def apply_edits(latents_nw: torch.Tensor, edits: Sequence[LatentEdit], observed_max_w: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``latents_nw`` with the edits applied to every row."""
    edited_nw = latents_nw.clone()
    for edit in edits:
        column = edited_nw[:, edit.latent]
        if edit.op == "zero":
            column.zero_()
        elif edit.op == "set":
            column.fill_(edit.value)
        elif edit.op == "scale":
            column.mul_(edit.value)
        else:
            assert observed_max_w is not None
            column.fill_(edit.value * float(observed_max_w[edit.latent]))
    return edited_nw


def token_positions(layout: TokenLayout, selection: TokenSelection, patches: Sequence[int] | None) -> list[int] | None:
    """Positions, within the tokens ``selection`` keeps, of the chosen patches (row-major grid
    indices); None (every selected token) when no patches are chosen."""
    if patches is None:
        return None
    if selection == "cls":
        raise InterventionError("the SAE reads CLS tokens only; it cannot edit chosen patches")
    bad = [patch for patch in patches if not 0 <= patch < layout.n_patches]
    if bad:
        raise InterventionError(f"patch {bad[0]} is out of range: the layer has a {layout.grid_hw[0]}x{layout.grid_hw[1]} grid "
                                f"(patches 0..{layout.n_patches - 1})")
    offset = layout.n_prefix if selection == "all" else 0
    return sorted({offset + patch for patch in patches})


def _moved_by_latents(sae: SparseAutoencoder, x_nd: torch.Tensor,
                      edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x_nd`` moved by the decoded change ``edit`` makes to its latents: ``x + (decode(z') - decode(z))``,
    the difference taken first so that an edit that changes no latent changes no bit."""
    x32_nd = x_nd.to(sae.W_enc.device, torch.float32)
    latents_nw = sae.encode(x32_nd)
    return (x32_nd + (sae.decode(edit(latents_nw)) - sae.decode(latents_nw))).to(x_nd.device)


def latent_edit(sae: SparseAutoencoder, edits: Sequence[LatentEdit], layout: TokenLayout, selection: TokenSelection,
                patches: Sequence[int] | None = None, observed_max_w: torch.Tensor | None = None) -> TokenEdit:
    """A token edit for :meth:`Backbone.edit`: the tokens of ``selection`` (only the chosen
    ``patches`` of them, when given) move by the decoded change of their edited latents."""
    check_edits(edits, sae.config.width, observed_max_w)
    positions = token_positions(layout, selection, patches)

    def shift(x_nd: torch.Tensor) -> torch.Tensor:
        return _moved_by_latents(sae, x_nd, lambda latents_nw: apply_edits(latents_nw, edits, observed_max_w))

    def replace(chosen_nd: torch.Tensor) -> torch.Tensor:
        if positions is None:
            return shift(chosen_nd)
        chosen_btd = chosen_nd.reshape(-1, layout.tokens_per_image(selection), chosen_nd.shape[-1])
        edited_btd = chosen_btd.clone()
        edited_btd[:, positions] = shift(chosen_btd[:, positions].reshape(-1, chosen_nd.shape[-1])).reshape(
            len(chosen_btd), len(positions), -1).to(chosen_btd.dtype)
        return edited_btd.reshape(chosen_nd.shape)

    return lambda tokens_btd: splice(tokens_btd, layout, selection, replace)


def latent_patch(sae: SparseAutoencoder, latents: Sequence[int], source_btd: torch.Tensor, layout: TokenLayout,
                 selection: TokenSelection) -> TokenEdit:
    """A token edit for :meth:`Backbone.edit` that patches ``latents`` in from other images: each
    selected token's chosen latents take their values on the same token of ``source_btd`` (the
    layer's tokens of one source image per image of the batch, e.g. each image's counterfactual
    twin). The token moves by the decoded change only, as for :func:`latent_edit`, so its other
    latents and its reconstruction error stay; patching in the image's own tokens changes nothing."""
    check_edits([LatentEdit(latent, "zero") for latent in latents], sae.config.width, None)
    columns = torch.tensor(list(latents), dtype=torch.int64, device=sae.W_enc.device)
    source_nd = layout.select(source_btd, selection)
    source_nd = source_nd.reshape(-1, source_nd.shape[-1])
    # the source is encoded once, however many forward passes the edit is spliced into
    source_values_nl = sae.encode(source_nd.to(sae.W_enc.device, torch.float32))[:, columns]

    def patched(latents_nw: torch.Tensor) -> torch.Tensor:
        patched_nw = latents_nw.clone()
        patched_nw[:, columns] = source_values_nl
        return patched_nw

    def replace(chosen_nd: torch.Tensor) -> torch.Tensor:
        if chosen_nd.shape != source_nd.shape:
            raise InterventionError(f"the source tokens are {tuple(source_nd.shape)}, the batch's {tuple(chosen_nd.shape)}: "
                                    "patching needs one source image per image, at the same layer")
        return _moved_by_latents(sae, chosen_nd, patched)

    return lambda tokens_btd: splice(tokens_btd, layout, selection, replace)
