"""What the explorer answers, checked against the model, the SAE and ``traitlens steer``'s own
functions on the same pixels."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from tests.explore.conftest import MODEL, ExploreInputs
from traitlens.errors import DataError, TraitlensError
from traitlens.explore import ExploreConfig, ExploreError, Explorer, session
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


def test_an_upload_too_large_is_refused_from_its_header(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, format="PNG")
    monkeypatch.setattr(session, "MAX_UPLOAD_PIXELS", 300 * 200 - 1)
    with pytest.raises(ExploreError, match="300x200 pixels, more than 59,999"):
        explorer.add_upload(buffer.getvalue())


def test_a_large_upload_is_kept_shrunk(explorer: Explorer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4 * session.UPLOAD_SIDE, session.UPLOAD_SIDE // 2), "olive").save(buffer, format="PNG")
    image_id = explorer.add_upload(buffer.getvalue())
    kept = explorer.image(image_id)
    assert kept.size == (session.UPLOAD_SIDE, session.UPLOAD_SIDE // 8) and kept.getpixel((0, 0)) == (128, 128, 0)


def test_top_images_are_left_out_when_the_store_is_gone(explore_inputs: ExploreInputs, monkeypatch: pytest.MonkeyPatch) -> None:
    def moved(path: object) -> None:
        raise DataError(f"no activation store at {path}")

    monkeypatch.setattr(session, "ActivationStore", moved)
    explorer = Explorer(ExploreConfig(model=MODEL, sae=explore_inputs.sae, data=explore_inputs.data,
                                      features=explore_inputs.features, device="cpu"))
    rows = explorer.latents_at("d1", [0, 1, 2])
    assert rows and all(row["top_images"] == 0 for row in rows)
    with pytest.raises(ExploreError, match="no top image"):
        explorer.top_image(rows[0]["latent"], 0)


def test_the_command_of_a_max_edit_names_the_features(explorer: Explorer) -> None:
    assert explorer.config.features is not None
    command = explorer.steer("d3", ["2=0.5max"], None)["command"]
    assert f"--features {explorer.config.features}" in command
    assert "--features" not in explorer.steer("d3", ["2*0.5"], None)["command"]
