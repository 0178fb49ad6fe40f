"""Steering: an edit that changes nothing changes nothing (the error term makes the splice exact),
and zeroing a planted feature changes exactly the logit that reads it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.fuzz.harness import assert_refused
from tests.resume import file_bytes, kill_at_call, outputs
from tests.store.conftest import TINY_VIT
from traitlens.backbones import Backbone, Preprocess, load_backbone
from traitlens.backbones.probe import probe_layers
from traitlens.cli import main
from traitlens.features import FeaturesConfig, LatentFeatures, analyze_features
from traitlens.interventions import LatentEdit, change_rates, latent_edit, steer_batch
from traitlens.sae.config import SAEConfig
from traitlens.sae.evaluation import splice
from traitlens.sae.io import save_sae
from traitlens.sae.model import SparseAutoencoder
from traitlens.store import ExtractConfig, extract

GRID = 4
steer_module = importlib.import_module("traitlens.interventions.steer")  # the package exports a function steer


class PlantedTraitModel(nn.Module):
    """Pixels (b, 3, 4, 4) read through an identity feature map: logit 0 ("marked") is 4 x the mean
    of channel 0 (the planted trait), logit 1 ("plain") is the constant 1, logit 2 is 4 x the mean
    of channel 1 minus 1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        means_bc = self.features(pixels_bchw).mean((2, 3))
        return torch.stack([4 * means_bc[:, 0], torch.ones_like(means_bc[:, 0]), 4 * means_bc[:, 1] - 1], dim=1)


def planted_backbone() -> Backbone:
    model = PlantedTraitModel()
    layers = probe_layers([("features", model.features)], model, (GRID, GRID))
    return Backbone("toy:planted", model, layers, Preprocess(size_hw=(GRID, GRID), resize=GRID), model, ["marked", "plain", "other"])


def channel_sae() -> SparseAutoencoder:
    """ReLU SAE whose latent c is relu(channel c): encoder and decoder are the identity."""
    sae = SparseAutoencoder(SAEConfig(d_in=3, width=3, activation="relu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted_pixels() -> torch.Tensor:
    """Image 0 carries the trait (channel 0 = 0.5, some patches negative), image 1 lacks it
    (channel 0 negative), image 2 carries it but is dominated by channel 1."""
    pixels = torch.zeros(3, 3, GRID, GRID)
    pixels[0, 0] = 0.5
    pixels[0, 0, 3, :2] = -0.25
    pixels[1, 0] = -0.5
    pixels[2, 0] = 0.5
    pixels[2, 1] = 1.0
    return pixels


def test_zeroing_the_planted_latent_changes_exactly_its_logit() -> None:
    backbone, pixels = planted_backbone(), planted_pixels()
    edit = latent_edit(channel_sae(), [LatentEdit(0, "zero")], backbone.layer("features").layout, "all")
    clean_bc, edited_bc, _, _ = steer_batch(backbone, "features", edit, pixels)
    # the trait's positive part is removed, its negative part (the SAE's error) stays
    expected_0 = 4 * pixels[:, 0].clamp(max=0).mean((1, 2))
    torch.testing.assert_close(edited_bc[:, 0], expected_0)
    assert torch.equal(edited_bc[:, 1:], clean_bc[:, 1:])
    assert clean_bc.argmax(1).tolist() == [0, 1, 2]
    assert edited_bc.argmax(1).tolist() == [1, 1, 2]  # only the marked image loses its class
    assert change_rates(clean_bc.argmax(1), edited_bc.argmax(1), target=0) == {
        "n_images": 3, "n_changed": 1, "change_rate": 1 / 3, "target_change_rate": 1 / 3, "other_change_rate": 0.0,
        "n_to_target": 0, "n_from_target": 1}


def test_zeroing_on_chosen_patches_removes_only_their_share() -> None:
    backbone, pixels = planted_backbone(), planted_pixels()
    patches = (0, 1, 14, 15)  # two patches of the first row, two of the last
    edit = latent_edit(channel_sae(), [LatentEdit(0, "zero")], backbone.layer("features").layout, "all", patches=patches)
    clean_bc, edited_bc, _, _ = steer_batch(backbone, "features", edit, pixels)
    removed_b = 4 * pixels[:, 0].flatten(1)[:, list(patches)].clamp(min=0).sum(1) / GRID**2
    torch.testing.assert_close(edited_bc[:, 0], clean_bc[:, 0] - removed_b)
    assert torch.equal(edited_bc[:, 1:], clean_bc[:, 1:])


def test_editing_another_latent_leaves_the_trait_logit_alone() -> None:
    backbone, pixels = planted_backbone(), planted_pixels()
    edit = latent_edit(channel_sae(), [LatentEdit(1, "scale", 3.0)], backbone.layer("features").layout, "all")
    clean_bc, edited_bc, _, _ = steer_batch(backbone, "features", edit, pixels)
    assert torch.equal(edited_bc[:, :2], clean_bc[:, :2])
    torch.testing.assert_close(edited_bc[:, 2], clean_bc[:, 2] + 2 * 4 * pixels[:, 1].clamp(min=0).mean((1, 2)))


def test_an_identity_edit_leaves_a_real_vit_exactly_unchanged() -> None:
    torch.manual_seed(0)
    backbone = load_backbone(TINY_VIT, pretrained=False)
    layer = backbone.layer("blocks.0")
    sae = SparseAutoencoder(SAEConfig(d_in=layer.width, width=64, activation="topk", k=4))
    pixels = torch.randn(4, 3, 32, 32)
    for edit in (LatentEdit(5, "scale", 1.0), LatentEdit(7, "scale", 1.0)):
        clean_bc, edited_bc, _, _ = steer_batch(backbone, "blocks.0", latent_edit(sae, [edit], layer.layout, "all"), pixels)
        assert torch.equal(clean_bc, edited_bc)
    # without the error term the same SAE changes the output: the exactness above is the error term's
    with torch.no_grad(), backbone.edit("blocks.0", lambda t: splice(t, layer.layout, "all", lambda x: sae(x)[1])):
        assert not torch.allclose(backbone.forward(pixels), clean_bc, atol=1e-4)


def _steer(capsys: pytest.CaptureFixture[str], data: Path, sae: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["steer", "--model", "traitlens:specimens-vit", "--sae", str(sae), "--data", str(data), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_steer_command_writes_predictions_and_effect(capsys: pytest.CaptureFixture[str], specimens_with_sae: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    data, sae = specimens_with_sae
    out = tmp_path / "steer"
    code, printed, _ = _steer(capsys, data, sae, "--edit", "3=40", "--edit", "9*0", "--target", "sp01", "--out", str(out))
    assert code == 0
    effect = json.loads((out / "effect.json").read_text())
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "source,before,after,label,p_before,p_after" and len(rows) == 25
    parsed = [row.split(",") for row in rows[1:]]
    changed = [(before, after) for _, before, after, *_ in parsed if before != after]
    assert changed, "an edit this large must change some prediction"
    assert effect["n_changed"] == len(changed) and effect["config"]["edits"] == ["3=40", "9*0"]
    involving = sum("sp01" in pair for pair in changed)
    assert effect["target_change_rate"] == pytest.approx(involving / 24)
    assert effect["other_change_rate"] == pytest.approx((len(changed) - involving) / 24)
    assert f"prediction changed on {len(changed)}" in printed and "target sp01" in printed


def test_steer_identity_on_specimens_changes_no_prediction(capsys: pytest.CaptureFixture[str], specimens_with_sae: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    data, sae = specimens_with_sae
    code, printed, _ = _steer(capsys, data, sae, "--edit", "3*1", "--max-images", "4", "--out", str(tmp_path / "s"))
    assert code == 0 and "changed on 0 (0.0%)" in printed
    effect = json.loads((tmp_path / "s" / "effect.json").read_text())
    assert all(change == 0.0 for change in effect["mean_probability_change"].values())


def test_a_max_edit_sets_the_observed_max_of_the_features_of_this_sae(capsys: pytest.CaptureFixture[str],
                                                                     specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    data, sae = specimens_with_sae
    extract(ExtractConfig(model="traitlens:specimens-vit", data=data, layers=("blocks.1",), out=tmp_path / "acts", tokens="all"),
            show_progress=False)
    analyze_features(FeaturesConfig(sae=sae, acts=tmp_path / "acts", out=tmp_path / "features", show_progress=False))
    observed = float(LatentFeatures(tmp_path / "features").max_activation[3])
    assert observed > 0
    _steer(capsys, data, sae, "--edit", "3=-2max", "--features", str(tmp_path / "features"), "--out", str(tmp_path / "max"))
    _steer(capsys, data, sae, "--edit", f"3={-2 * observed!r}", "--out", str(tmp_path / "set"))
    assert (tmp_path / "max" / "predictions.csv").read_bytes() == (tmp_path / "set" / "predictions.csv").read_bytes()
    other = SparseAutoencoder(SAEConfig(d_in=128, width=96, activation="topk", k=8))
    save_sae(other, tmp_path / "other_sae", {"layer": "blocks.1", "tokens_kind": "all", "model": "traitlens:specimens-vit"})
    code, _, err = _steer(capsys, data, tmp_path / "other_sae", "--edit", "3=2max", "--features", str(tmp_path / "features"))
    assert code == 2 and "computed for another SAE" in err
    code, _, err = _steer(capsys, data, sae, "--edit", "3=2max", "--features", str(tmp_path / "features"), "--layer", "blocks.0")
    assert code == 2 and "not on the all tokens of blocks.0" in err


def test_an_sae_of_another_model_is_refused(capsys: pytest.CaptureFixture[str], specimens_with_sae: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    data, sae = specimens_with_sae
    code = main(["steer", "--model", TINY_VIT, "--random-init", "--sae", str(sae), "--data", str(data), "--edit", "3=zero",
                 "--layer", "blocks.1", "--tokens", "all"])
    err = capsys.readouterr().err
    assert code == 2 and "was trained on traitlens:specimens-vit" in err
    extract(ExtractConfig(model="traitlens:specimens-vit", data=data, layers=("blocks.1",), out=tmp_path / "acts", tokens="all"),
            show_progress=False)
    with_store = SparseAutoencoder(SAEConfig(d_in=128, width=96, activation="topk", k=8))
    save_sae(with_store, tmp_path / "sae", {"layer": "blocks.1", "tokens_kind": "all", "acts": str(tmp_path / "acts"),
                                            "model": "traitlens:specimens-vit"})
    code, _, err = _steer(capsys, data, tmp_path / "sae", "--random-init", "--edit", "3=zero")
    assert code == 2 and "was trained on activations of traitlens:specimens-vit" in err
    # the fingerprint training records decides even when the store is gone
    save_sae(with_store, tmp_path / "recorded", {"layer": "blocks.1", "tokens_kind": "all", "acts": str(tmp_path / "gone"),
                                                 "model": "traitlens:specimens-vit", "weights_fingerprint": "0" * 64})
    code, _, err = _steer(capsys, data, tmp_path / "recorded", "--edit", "3=zero")
    assert code == 2 and "weights 000000000000" in err


def test_a_head_without_class_names_reports_class_indices(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.store.conftest import make_class_folder

    images = make_class_folder(tmp_path / "images", per_class=2)
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, width=48, activation="topk", k=4)), tmp_path / "sae",
             {"layer": "blocks.1", "tokens_kind": "all", "model": TINY_VIT})
    argv = ["steer", "--model", TINY_VIT, "--random-init", "--sae", str(tmp_path / "sae"), "--data", str(images), "--edit", "2=30"]
    assert main([*argv, "--target", "1", "--out", str(tmp_path / "out")]) == 0
    effect = json.loads((tmp_path / "out" / "effect.json").read_text())
    assert effect["target"] == "1" and sorted(effect["mean_probability_change"]) == ["0", "1", "2"]
    capsys.readouterr()
    assert main([*argv, "--target", "5"]) == 2
    assert "target class 5 is out of range: the head has 3 classes" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "fragment"), [
    (("--edit", "3=lots"), "cannot read the edit"),
    (("--edit", "999=zero"), "out of range"),
    (("--edit", "3=2max"), "observed max"),
    (("--edit", "3=zero", "--target", "sp99"), "unknown target class"),
    (("--edit", "3=zero", "--patches", "0,64"), "patch 64 is out of range"),
    (("--edit", "3=zero", "--layer", "blocks.9"), "blocks.9"),
    (("--edit", "3=1e999"), "finite number"),
    (("--edit", "3=zero", "--max-images", "0"), "--max-images: an integer of at least 1"),
    (("--edit", "3=zero", "--max-images", "-1"), "--max-images: an integer of at least 1"),
    (("--edit", "3=zero", "--out", __file__), "is a file"),
    (("--edit", "3=zero", "--out", __file__ + "/inside"), "cannot be created"),
])
def test_bad_steering_requests_get_one_line(specimens_with_sae: tuple[Path, Path], extra: tuple[str, ...], fragment: str) -> None:
    data, sae = specimens_with_sae
    assert_refused(["steer", "--model", "traitlens:specimens-vit", "--sae", str(sae), "--data", str(data), *extra], data, sae,
                   says=fragment)


def test_a_patch_probe_reports_patch_predictions_that_move_with_the_edit(capsys: pytest.CaptureFixture[str],
                                                                          specimens_with_sae: tuple[Path, Path], tmp_path: Path) -> None:
    from traitlens.heads.linear_head import LinearHead, save_head

    data, sae = specimens_with_sae
    backbone = load_backbone("traitlens:specimens-vit")
    generator = torch.Generator().manual_seed(0)
    head = LinearHead(torch.randn(4, 128, generator=generator), torch.zeros(4), "blocks.2", "mean", ("a", "b", "c", "d"),
                      {"spec": backbone.spec, "weights_fingerprint": backbone.weights_fingerprint()})
    save_head(tmp_path / "probe", head)
    runs = {}
    for name, edit in (("identity", "3*1"), ("push", "3=80")):
        out = tmp_path / name
        code, printed, _ = _steer(capsys, data, sae, "--edit", edit, "--patch-probe", str(tmp_path / "probe"),
                                  "--max-images", "4", "--out", str(out))
        assert code == 0 and "patch probe:" in printed
        runs[name] = json.loads((out / "effect.json").read_text())["patch_change_rate"]
    assert runs["identity"] == 0.0 < runs["push"]


def test_a_killed_steer_resumes_to_the_same_files(capsys: pytest.CaptureFixture[str], specimens_with_sae: tuple[Path, Path],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlens.heads.linear_head import LinearHead, save_head

    data, sae = specimens_with_sae
    backbone = load_backbone("traitlens:specimens-vit")
    head = LinearHead(torch.randn(4, 128, generator=torch.Generator().manual_seed(0)), torch.zeros(4), "blocks.2", "mean",
                      ("a", "b", "c", "d"), {"spec": backbone.spec, "weights_fingerprint": backbone.weights_fingerprint()})
    save_head(tmp_path / "probe", head)  # so that the patch predictions are saved and read back too
    argv = ["--edit", "3=40", "--patch-probe", str(tmp_path / "probe"), "--max-images", "10", "--batch-size", "4"]
    assert _steer(capsys, data, sae, *argv, "--out", str(tmp_path / "whole"))[0] == 0
    kill_at_call(monkeypatch, steer_module, "steer_batch", 2)
    assert _steer(capsys, data, sae, *argv, "--out", str(tmp_path / "killed"))[0] == 130
    assert [path.name for path in (tmp_path / "killed" / ".traitlens-progress").iterdir()] == ["batch-000000.safetensors"]
    probe_bytes = (tmp_path / "probe" / "head.safetensors").read_bytes()
    save_head(tmp_path / "probe", LinearHead(-head.weight_cd, head.bias_c, head.layer, head.pooling, head.class_names, head.model))
    code, _, err = _steer(capsys, data, sae, *argv, "--out", str(tmp_path / "killed"))
    assert code == 2 and "patch_probe_sha256" in err  # the same path, another probe: not this job
    (tmp_path / "probe" / "head.safetensors").write_bytes(probe_bytes)
    kill_at_call(monkeypatch, steer_module, "steer_batch", 3)  # the resumed run computes the last two batches only
    assert _steer(capsys, data, sae, *argv, "--out", str(tmp_path / "killed"))[0] == 0

    assert outputs(tmp_path / "killed", "effect.json") == outputs(tmp_path / "whole", "effect.json")
    assert sorted(file_bytes(tmp_path / "killed")) == ["effect.json", "predictions.csv", "traitlens-output.json"]
