"""Comparative latent attribution on tiny random-init ViTs and random SAEs: the splice changes
nothing, the numbers are gradient x activation (checked against finite differences, the layer's own
gradient and an exact decomposition), the contrast is linear, and the command's files and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import traitlens.interventions.attribution as attribution_module
from tests.fuzz.harness import assert_refused
from tests.heads.conftest import write_colour_folder
from tests.resume import file_bytes, kill_at_call, outputs
from traitlens.backbones import Backbone, TokenSelection, load_backbone
from traitlens.cli import main
from traitlens.data import open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.explain.contrast import class_coefficients
from traitlens.heads import LinearHead, head_backbone
from traitlens.interventions import LatentEdit, apply_edits, latent_attribution
from traitlens.sae import SAEConfig, SparseAutoencoder, load_sae_with_config, save_sae
from traitlens.sae.evaluation import splice
from traitlens.specimens.model_dir import SavedModel, ViTShape, save_model_dir

VIT = "timm:vit_tiny_patch16_224?img_size=64&depth=3&embed_dim=32&num_heads=2&num_classes=4"
LAYER = "blocks.1"
WIDTH = 48


def random_sae(d_in: int = 32, width: int = WIDTH, seed: int = 0) -> SparseAutoencoder:
    """A TopK SAE with every term of encode/decode non-trivial: biases, input mean and scale."""
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, activation="topk", k=6))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
        sae.input_mean.normal_(0, 0.2)
        sae.input_scale.uniform_(0.5, 2.0)
    return sae.eval()


def random_pixels(backbone: Backbone, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *backbone.preprocess.size_hw, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit() -> Backbone:
    return load_backbone(VIT, pretrained=False)


def _classes(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), -1)


def _attribute(backbone: Backbone, sae: SparseAutoencoder, pixels: torch.Tensor, target: int, refs: list[int],
               gamma: float = 1.0, selection: TokenSelection = "all", layer: str = LAYER):
    b = len(pixels)
    return latent_attribution(backbone, sae, layer, selection, pixels, torch.full((b,), target),
                              torch.tensor([refs] * b, dtype=torch.int64).reshape(b, len(refs)), gamma)


def _score(backbone: Backbone, pixels: torch.Tensor, target: int, refs: list[int], gamma: float) -> torch.Tensor:
    b, logits_bc = len(pixels), backbone.forward(pixels)
    refs_bk = torch.tensor([refs] * b, dtype=torch.int64).reshape(b, len(refs))
    return (logits_bc * class_coefficients(torch.full((b,), target), refs_bk, gamma, 4, logits_bc.dtype)).sum(1)


def test_the_splice_leaves_the_model_exactly_as_it_was(vit: Backbone) -> None:
    pixels, sae = random_pixels(vit), random_sae()
    for target, refs in ((0, [1]), (2, [0, 3]), (3, [])):
        result = _attribute(vit, sae, pixels, target, refs)
        with torch.no_grad():
            assert torch.equal(result.score_b, _score(vit, pixels, target, refs, 1.0))
    assert result.attribution_bw.shape == (3, WIDTH) and result.error_b.shape == result.bias_b.shape == (3,)
    assert not any(module._forward_hooks for module in vit.model.modules())


def test_latent_attributions_are_first_order_changes_of_the_score() -> None:
    """Scaling a latent by (1 + eps) on every token changes S by eps times its attribution (float64)."""
    backbone, sae = load_backbone(VIT, pretrained=False), random_sae().double()
    backbone.model.double()
    pixels = random_pixels(backbone, 2).double()
    result = _attribute(backbone, sae, pixels, 1, [2, 3], gamma=0.7)
    layout, eps = backbone.layer(LAYER).layout, 1e-6
    strongest = result.attribution_bw.abs().sum(0).topk(4).indices.tolist()

    def scaled(latent: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def shift(x_nd: torch.Tensor) -> torch.Tensor:  # in float64, unlike the float32 steering edits
            latents_nw = sae.encode(x_nd)
            return x_nd + sae.decode(apply_edits(latents_nw, [LatentEdit(latent, "scale", 1 + eps)])) - sae.decode(latents_nw)

        return lambda tokens_btd: splice(tokens_btd, layout, "all", shift)

    with torch.no_grad():
        clean_b = _score(backbone, pixels, 1, [2, 3], 0.7)
        for latent in strongest:
            with backbone.edit(LAYER, scaled(latent)):
                change_b = (_score(backbone, pixels, 1, [2, 3], 0.7) - clean_b) / eps
            assert torch.allclose(change_b, result.attribution_bw[:, latent], rtol=1e-4, atol=1e-7), latent
    assert result.attribution_bw[:, strongest].abs().min() > 1e-3
    assert torch.equal(result.attribution_bw[~result.active_bw], torch.zeros(int((~result.active_bw).sum()), dtype=torch.float64))


@pytest.mark.parametrize("selection", ["all", "patch"])
def test_latents_error_and_bias_add_up_to_the_layers_gradient_times_input(vit: Backbone, selection: TokenSelection) -> None:
    pixels, sae = random_pixels(vit), random_sae()
    result = _attribute(vit, sae, pixels, 0, [3], selection=selection)
    layout = vit.layer(LAYER).layout
    with vit.capture(LAYER, detach=False) as captured:
        score_b = _score(vit, pixels, 0, [3], 1.0)
    tokens_btd = captured[LAYER]
    (grads_btd,) = torch.autograd.grad(score_b.sum(), tokens_btd)
    x_btd, g_btd = layout.select(tokens_btd.detach(), selection), layout.select(grads_btd, selection)
    # patch tokens reach a ViT's CLS head only through LayerNorms, so their sum is ~0: compare with the terms' size
    expected_b, size = (x_btd * g_btd).sum((1, 2)), float((x_btd * g_btd).abs().sum())
    total_b = result.attribution_bw.sum(1) + result.error_b + result.bias_b
    assert torch.allclose(total_b, expected_b, rtol=0, atol=1e-5 * size)
    with torch.no_grad():
        latents_btw = sae.encode(x_btd.flatten(0, 1)).view(3, -1, WIDTH)
        error_btd = x_btd - sae.decode(latents_btw.flatten(0, 1)).view_as(x_btd)
        expected_bw = (latents_btw * ((g_btd / sae.input_scale) @ sae.W_dec.T)).sum(1)
    assert torch.allclose(result.attribution_bw, expected_bw, rtol=1e-4, atol=1e-5 * float(expected_bw.abs().max()))
    assert torch.allclose(result.error_b, (error_btd * g_btd).sum((1, 2)), rtol=1e-4, atol=1e-5)
    assert torch.equal(result.active_bw, (latents_btw != 0).any(1))


def test_with_a_linear_head_on_the_layer_the_decomposition_is_the_score(vit: Backbone) -> None:
    """S = latents + error + decoder bias + the head bias's share, exactly (float32 rounding)."""
    generator = torch.Generator().manual_seed(1)
    head = LinearHead(torch.randn(4, 32, generator=generator), torch.randn(4, generator=generator), LAYER, "mean",
                      ("a", "b", "c", "d"), {"weights_fingerprint": vit.weights_fingerprint()})
    with_head = head_backbone(vit, head)
    pixels, sae = random_pixels(vit, 4), random_sae()
    result = _attribute(with_head, sae, pixels, 2, [0, 1], gamma=0.5, selection="patch")
    head_bias = float(head.bias_c[2] - 0.5 * (head.bias_c[0] + head.bias_c[1]) / 2)
    decomposed_b = result.attribution_bw.sum(1) + result.error_b + result.bias_b + head_bias
    assert torch.allclose(decomposed_b, result.score_b, rtol=0, atol=1e-4 * float(result.score_b.abs().max()))
    assert float(result.attribution_bw.abs().sum()) > 1e-2 * float(result.score_b.abs().sum())


def test_gamma_zero_is_the_target_alone_and_the_contrast_is_linear(vit: Backbone) -> None:
    pixels, sae = random_pixels(vit), random_sae()
    alone = {c: _attribute(vit, sae, pixels, c, []).attribution_bw for c in range(4)}
    assert torch.equal(_attribute(vit, sae, pixels, 0, [1], gamma=0.0).attribution_bw, alone[0])
    a_vs_b = _attribute(vit, sae, pixels, 0, [1]).attribution_bw
    assert torch.allclose(_attribute(vit, sae, pixels, 1, [0]).attribution_bw, -a_vs_b, atol=1e-6)
    assert torch.allclose(a_vs_b, alone[0] - alone[1], atol=1e-5)
    two_refs = _attribute(vit, sae, pixels, 3, [1, 2], gamma=0.6).attribution_bw
    assert torch.allclose(two_refs, alone[3] - 0.3 * (alone[1] + alone[2]), atol=1e-5)


def test_images_are_attributed_independently_of_their_batch(vit: Backbone) -> None:
    pixels, sae = random_pixels(vit), random_sae()
    together = _attribute(vit, sae, pixels, 2, [1])
    one_by_one = [_attribute(vit, sae, pixels[i : i + 1], 2, [1]) for i in range(3)]
    assert torch.allclose(together.attribution_bw, torch.cat([r.attribution_bw for r in one_by_one]), atol=1e-5)
    assert torch.allclose(together.error_b, torch.cat([r.error_b for r in one_by_one]), atol=1e-5)


# -- the command ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init ``traitlens:DIR`` model with classes blue/green/red, an SAE on its first
    block's patch tokens, and 12 images of each colour."""
    root = tmp_path_factory.mktemp("attribute")
    torch.manual_seed(0)
    saved = SavedModel(ViTShape(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
                       ("blue", "green", "red"))
    save_model_dir(root / "model", saved.build(), saved)
    save_sae(random_sae(), root / "sae", {"layer": "blocks.0", "tokens_kind": "patch", "model": f"traitlens:{root / 'model'}"})
    return {"model": root / "model", "sae": root / "sae", "data": write_colour_folder(root / "images")}


def _args(run: dict[str, Path], *extra: str) -> list[str]:
    return ["attribute", "--model", f"traitlens:{run['model']}", "--sae", str(run["sae"]), "--data", str(run["data"]),
            "--device", "cpu", *extra]


def test_the_command_ranks_latents_over_the_target_images(colour_run: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(_args(colour_run, "--target", "red", "--refs", "blue,green", "--top", "5", "--max-images", "7",
                      "--batch-size", "3", "--out", str(out))) == 0
    assert "evidence for red" in capsys.readouterr().out
    result = json.loads((out / "attribution.json").read_text())
    assert (result["target"], result["refs"], result["layer"], result["tokens"]) == ("red", ["blue", "green"], "blocks.0", "patch")
    assert result["n_images"] == 7 and "Evidence for red" in (out / "attribution.md").read_text()

    backbone, (sae, _) = load_backbone(f"traitlens:{colour_run['model']}"), load_sae_with_config(colour_run["sae"])
    source = open_image_source(colour_run["data"])
    red = [i for i, record in enumerate(source.records) if record.label == "red"][:7]
    (batch,) = pixel_batches(source, backbone.preprocess, 7, red)
    expected = latent_attribution(backbone, sae, "blocks.0", "patch", batch.pixels_bchw, torch.full((7,), 2),
                                  torch.tensor([[0, 1]] * 7), 1.0)
    mean_w = torch.tensor(result["latents"]["mean_attribution"], dtype=torch.float64)
    assert torch.allclose(mean_w, expected.attribution_bw.double().mean(0), atol=1e-5)
    assert result["mean_score"] == pytest.approx(float(expected.score_b.double().mean()), abs=1e-5)
    for side, sign in (("for_target", 1), ("for_refs", -1)):
        ranked = [row["latent"] for row in result[side]]
        assert ranked == (-sign * mean_w).argsort()[: len(ranked)].tolist() and 0 < len(ranked) <= 5
        assert all(sign * row["mean_attribution"] > 0 for row in result[side])
    share_w, activation_w = expected.active_bw.double().mean(0), expected.activation_bw.double().mean(0)
    for row in result["for_target"] + result["for_refs"]:
        assert (row["active_share"], row["mean_activation"]) == pytest.approx(
            (float(share_w[row["latent"]]), float(activation_w[row["latent"]])), abs=1e-6)


def test_all_images_and_class_indices(colour_run: dict[str, Path], tmp_path: Path) -> None:
    assert main(_args(colour_run, "--target", "0", "--refs", "2", "--average-over", "all", "--out", str(tmp_path))) == 0
    result = json.loads((tmp_path / "attribution.json").read_text())
    assert (result["n_images"], result["target"], result["refs"]) == (36, "blue", ["red"])


@pytest.mark.parametrize(("extra", "message"), [
    (("--target", "purple", "--refs", "red"), "unknown target class 'purple'"),
    (("--target", "red", "--refs", "blue,rde"), "did you mean 'red'"),
    (("--target", "red", "--refs", "red"), "also among the references"),
    (("--target", "red", "--refs", "blue", "--gamma", "-1"), "gamma"),
    (("--target", "red", "--refs", "7"), "reference class 7 is out of range"),
])
def test_bad_requests_are_one_line_errors(colour_run: dict[str, Path], extra: tuple[str, ...], message: str) -> None:
    assert_refused(_args(colour_run, *extra), colour_run["model"], colour_run["sae"], says=message)


def test_a_killed_attribution_resumes_to_the_same_files(colour_run: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _args(colour_run, "--target", "red", "--refs", "blue,green", "--average-over", "all", "--batch-size", "4")
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    kill_at_call(monkeypatch, attribution_module, "latent_attribution", 3)
    assert main([*argv, "--out", str(tmp_path / "killed")]) == 130
    assert sorted(path.name for path in (tmp_path / "killed" / ".traitlens-progress").iterdir()) == [
        "batch-000000.safetensors", "batch-000001.safetensors"]
    monkeypatch.undo()
    kill_at_call(monkeypatch, attribution_module, "latent_attribution", 8)  # 36 images: 7 batches are left
    assert main([*argv, "--out", str(tmp_path / "killed")]) == 0

    # the sums read back add up to the same bits
    assert outputs(tmp_path / "killed", "attribution.json") == outputs(tmp_path / "whole", "attribution.json")
    assert sorted(file_bytes(tmp_path / "killed")) == ["attribution.json", "attribution.md", "traitlens-output.json"]
