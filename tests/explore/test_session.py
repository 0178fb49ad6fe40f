"""What the explorer answers, checked against the model, the SAE and ``traitlens steer``'s own
functions on the same pixels."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from traitlens.errors import TraitlensError
from traitlens.explore import ExploreError, Explorer
from traitlens.interventions import LatentEdit, latent_edit, steer_source


def test_predictions_are_the_models_top_five(explorer: Explorer) -> None:
    predicted = explorer.predict("d0")
    pixels = explorer.backbone.preprocess.image(explorer.image("d0"))[None]
    with torch.no_grad():
        probs_c = explorer.backbone.forward(pixels).double().softmax(1)[0]
    expected = probs_c.argsort(descending=True)[:5]
    assert [row["index"] for row in predicted["predictions"]] == expected.tolist()
    assert [row["probability"] for row in predicted["predictions"]] == pytest.approx(probs_c[expected].tolist())
    assert predicted["grid_hw"] == list(explorer.layout.grid_hw)
    assert explorer.backbone.preprocess.view(explorer.image("d0")).size[::-1] == explorer.backbone.preprocess.size_hw


def test_the_latents_of_a_patch_are_those_firing_there_strongest_first(explorer: Explorer) -> None:
    listed = explorer.latents_at("d3", [10])
    activations = [row["activation"] for row in listed]
    assert listed and activations == sorted(activations, reverse=True) and min(activations) > 0
    for row in listed:
        assert explorer.latent_map("d3", row["latent"])["values"][10] == pytest.approx(row["activation"])
    # with a features directory each latent comes with its associations and top images
    assert all(row["top_images"] > 0 for row in listed)
    assert explorer.top_image(listed[0]["latent"], 0).startswith(b"\x89PNG")


def test_an_edit_gives_what_steer_computes(explorer: Explorer) -> None:
    latent = explorer.latents_at("d5", [9, 10])[0]["latent"]
    shown = explorer.steer("d5", [f"{latent}=zero"], [9, 10])
    edit = latent_edit(explorer.sae, [LatentEdit.parse(f"{latent}=zero")], explorer.layout, explorer.tokens, [9, 10])
    assert explorer.source is not None
    steered = steer_source(explorer.backbone, explorer.layer, edit, explorer.source, [5])
    after_c = steered.probs_after_nc[0]
    assert [row["probability"] for row in shown["after"]] == pytest.approx(after_c.sort(descending=True).values[:5].tolist(),
                                                                            abs=1e-12)
    assert f"--edit={latent}=zero" in shown["command"] and "--patches 9,10" in shown["command"]


@pytest.mark.parametrize(("call", "says"), [
    (lambda e: e.predict("d999"), "no image 'd999'"),
    (lambda e: e.predict("../../etc/passwd"), "no image"),
    (lambda e: e.latents_at("d0", [10_000]), "patches must be"),
    (lambda e: e.latents_at("d0", []), "patches must be"),
    (lambda e: e.latent_map("d0", 96), "no latent 96"),
    (lambda e: e.steer("d0", ["3=nonsense"], None), "cannot read the edit"),
    (lambda e: e.steer("d0", [], None), "no edit given"),
    (lambda e: e.cam("d0", "no-such-cam", None, None), "unknown method"),
    (lambda e: e.cam("d0", "grad-cam", "not a class", None), "not a class"),
    (lambda e: e.add_upload(b"not an image at all"), "not an image this server reads"),
])
def test_bad_requests_are_one_line(explorer: Explorer, call: object, says: str) -> None:
    with pytest.raises(TraitlensError, match=says) as refused:
        call(explorer)  # type: ignore[operator]
    assert "\n" not in str(refused.value)


def test_an_upload_is_explored_like_any_image(explorer: Explorer) -> None:
    buffer = io.BytesIO()
    explorer.image("d2").save(buffer, format="PNG")
    image_id = explorer.add_upload(buffer.getvalue())
    assert explorer.predict(image_id) == explorer.predict("d2")
    assert "YOUR_IMAGE.png" in explorer.steer(image_id, ["1*0.5"], None)["command"]


def test_a_decompression_bomb_is_refused(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # Pillow refuses over twice this
    with pytest.raises(ExploreError, match="DecompressionBombError"):
        explorer.add_upload(buffer.getvalue())
