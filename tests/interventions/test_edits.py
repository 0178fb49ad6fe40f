"""Latent edits: parsing, applying, and splicing them so only the edit moves a token."""

from __future__ import annotations

import pytest
import torch

from traitlens.backbones.layout import TokenLayout
from traitlens.interventions.edits import (
    InterventionError,
    LatentEdit,
    apply_edits,
    latent_edit,
    latent_patch,
    token_positions,
)
from traitlens.sae.config import SAEConfig
from traitlens.sae.model import SparseAutoencoder


@pytest.mark.parametrize(("text", "edit"), [
    ("12=zero", LatentEdit(12, "zero")),
    ("3=2.5", LatentEdit(3, "set", 2.5)),
    ("3 = -1e-1", LatentEdit(3, "set", -0.1)),
    ("7*0.5", LatentEdit(7, "scale", 0.5)),
    ("0=-2max", LatentEdit(0, "max", -2.0)),
])
def test_edits_parse_and_print_back(text: str, edit: LatentEdit) -> None:
    assert LatentEdit.parse(text) == edit
    assert LatentEdit.parse(str(edit)) == edit


@pytest.mark.parametrize("text", ["zero", "12", "12=", "12=zeromax", "-1=zero", "a*2", "12=3x"])
def test_unreadable_edits_name_the_syntax(text: str) -> None:
    with pytest.raises(InterventionError, match="LATENT=zero"):
        LatentEdit.parse(text)


def test_apply_edits_changes_only_the_edited_columns() -> None:
    latents_nw = torch.tensor([[1.0, 2.0, 0.0, 4.0], [0.0, 3.0, 5.0, 1.0]])
    edits = [LatentEdit(0, "zero"), LatentEdit(1, "scale", -2.0), LatentEdit(2, "set", 7.0), LatentEdit(3, "max", 0.5)]
    edited_nw = apply_edits(latents_nw, edits, observed_max_w=torch.tensor([9.0, 9.0, 9.0, 10.0]))
    assert torch.equal(edited_nw, torch.tensor([[0.0, -4.0, 7.0, 5.0], [0.0, -6.0, 7.0, 5.0]]))
    assert torch.equal(latents_nw[0], torch.tensor([1.0, 2.0, 0.0, 4.0]))  # the input is left alone


def test_bad_edits_are_refused_before_any_forward() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=4, width=8, activation="relu"))
    layout = TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True)
    with pytest.raises(InterventionError, match="out of range"):
        latent_edit(sae, [LatentEdit(8, "zero")], layout, "all")
    with pytest.raises(InterventionError, match="edited twice"):
        latent_edit(sae, [LatentEdit(1, "zero"), LatentEdit(1, "set", 2.0)], layout, "all")
    with pytest.raises(InterventionError, match="observed max"):
        latent_edit(sae, [LatentEdit(1, "max", 2.0)], layout, "all")
    with pytest.raises(InterventionError, match="patch 4 is out of range"):
        latent_edit(sae, [LatentEdit(1, "zero")], layout, "all", patches=(0, 4))
    with pytest.raises(InterventionError, match="CLS tokens only"):
        latent_edit(sae, [LatentEdit(1, "zero")], layout, "cls", patches=(0,))


def test_patch_positions_skip_the_prefix_only_when_it_is_read() -> None:
    layout = TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True)
    assert token_positions(layout, "all", (3, 0)) == [1, 4]
    assert token_positions(layout, "patch", (3, 0)) == [0, 3]
    assert token_positions(layout, "all", None) is None


def test_only_chosen_patches_move_and_by_the_decoded_change() -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=12, activation="relu"))
    layout = TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True)
    tokens_btd = torch.randn(3, 5, 6)
    with torch.no_grad():
        edited_btd = latent_edit(sae, [LatentEdit(2, "set", 3.0)], layout, "all", patches=(1,))(tokens_btd)
        expected_nd = tokens_btd[:, 2] + 3.0 * sae.W_dec[2] / sae.input_scale - \
            sae.encode(tokens_btd[:, 2])[:, 2:3] * sae.W_dec[2] / sae.input_scale
    untouched = [0, 1, 3, 4]
    assert torch.equal(edited_btd[:, untouched], tokens_btd[:, untouched])
    torch.testing.assert_close(edited_btd[:, 2], expected_nd)
    assert not torch.allclose(edited_btd[:, 2], tokens_btd[:, 2])


def test_a_long_edit_is_refused_before_it_is_matched() -> None:
    """Edits come from the network in the explorer: a long one is one line, never a long match."""
    with pytest.raises(InterventionError, match="longer than 64 characters"):
        LatentEdit.parse("1=" + "1" * 100_000 + "x")
    # the longest accepted edit that does not match fails as fast as a short one: every run of
    # digits in the number pattern can be matched one way only
    for text in ("1=" + "1" * 61 + "x", "1*" + "9" * 61 + "!", "1=" + "2" * 30 + "." + "3" * 29 + "?"):
        with pytest.raises(InterventionError, match="cannot read the edit"):
            LatentEdit.parse(text)
    assert LatentEdit.parse("7=" + "1" * 20 + ".5max") == LatentEdit(7, "max", float("1" * 20 + ".5"))


def test_patching_sets_the_chosen_latents_to_the_source_tokens_values_and_nothing_else() -> None:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=12, activation="relu"))
    layout = TokenLayout(n_prefix=1, grid_hw=(2, 2), has_cls=True)
    tokens_btd, source_btd = torch.randn(3, 5, 6), torch.randn(3, 5, 6)
    with torch.no_grad():
        # the image's own tokens as the source: nothing moves, exactly
        assert torch.equal(latent_patch(sae, [1, 4], tokens_btd, layout, "all")(tokens_btd), tokens_btd)
        edited_btd = latent_patch(sae, [1, 4], source_btd, layout, "patch")(tokens_btd)
        z_nw, z_source_nw = (sae.encode(x_btd[:, 1:].reshape(-1, 6)) for x_btd in (tokens_btd, source_btd))
        expected_nw = z_nw.clone()
        expected_nw[:, [1, 4]] = z_source_nw[:, [1, 4]]
        expected_nd = tokens_btd[:, 1:].reshape(-1, 6) + (sae.decode(expected_nw) - sae.decode(z_nw))
    assert torch.equal(edited_btd[:, 0], tokens_btd[:, 0])  # the CLS token is not read, so it stays
    torch.testing.assert_close(edited_btd[:, 1:].reshape(-1, 6), expected_nd)
    with pytest.raises(InterventionError, match="one source image per image"):
        latent_patch(sae, [1], source_btd[:2], layout, "all")(tokens_btd)
    with pytest.raises(InterventionError, match="out of range"):
        latent_patch(sae, [12], source_btd, layout, "all")
