"""``traitlens heads train``: each kind trains on a frozen tiny ViT, resumes to the same weights
after a kill, loads with ``--head`` (explain, accuracy), and class queries learn to look where a
class is decided when the answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.heads.conftest import HEAD_MODEL
from tests.resume import kill_at_call
from traitlens.backbones import load_backbone
from traitlens.checkpoints import EpochCheckpoints
from traitlens.cli import main
from traitlens.heads import load_head_backbone
from traitlens.heads.training import HeadTrainConfig, train_head

KINDS = ("linear", "intr", "prompt-cam")
SMALL_INTR = {"decoder_layers": 1, "decoder_width": 32, "decoder_heads": 2}


OPTIONS = {"linear": {"pooling": "mean"}, "intr": SMALL_INTR, "prompt-cam": {}}
LR = {"linear": 0.5, "intr": 0.05, "prompt-cam": 0.05}
"""A random-init model's pooled tokens are small: the linear probe needs a larger step."""


def _config(kind: str, data: Path, out: Path, **changes: object) -> HeadTrainConfig:
    settings: dict[str, object] = {"kind": kind, "model": HEAD_MODEL, "data": data, "out": out, "pretrained": False,
                                   "options": OPTIONS[kind], "epochs": 8, "batch_size": 8, "lr": LR[kind], "device": "cpu"}
    return HeadTrainConfig(**(settings | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_a_head_trains_on_the_frozen_model_and_loads_as_its_output(kind: str, colour_images: Path, tmp_path: Path) -> None:
    backbone = load_backbone(HEAD_MODEL, pretrained=False)
    before = backbone.weights_fingerprint()
    saved = train_head(_config(kind, colour_images, tmp_path / kind), show_progress=False)
    assert saved["kind"] == kind and saved["class_names"] == ["blue", "green", "red"]
    assert 0 <= saved["metrics"]["train_accuracy"] <= 1 and saved["metrics"]["n_train"] + saved["metrics"]["n_val"] == 36
    with_head = load_head_backbone(load_backbone(HEAD_MODEL, pretrained=False), tmp_path / kind)
    assert with_head.class_names == ["blue", "green", "red"] and with_head.weights_fingerprint() == before
    pixels = torch.stack([with_head.preprocess.image(Image.open(path).convert("RGB"))
                          for path in sorted(colour_images.glob("*/0*.png"))[:6]])
    logits = with_head.forward(pixels)
    assert logits.shape == (6, 3) and bool(torch.isfinite(logits).all())
    assert (with_head.class_attention is not None) == (kind != "linear")
    # the head moves with the model (jobs call .to(device) after loading it)
    with_head.to(torch.float64)
    assert torch.allclose(with_head.forward(pixels.double()).float(), logits, atol=1e-4)


@pytest.mark.parametrize("kind", ["intr", "prompt-cam"])
def test_a_killed_training_resumes_to_the_same_weights(kind: str, colour_images: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    train_head(_config(kind, colour_images, tmp_path / "whole", epochs=3), show_progress=False)
    kill_at_call(monkeypatch, EpochCheckpoints, "save", 2)
    with pytest.raises(KeyboardInterrupt):
        train_head(_config(kind, colour_images, tmp_path / "killed", epochs=3), show_progress=False)
    monkeypatch.undo()
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    train_head(_config(kind, colour_images, tmp_path / "killed", epochs=3), show_progress=False)
    assert (tmp_path / "killed" / "head.safetensors").read_bytes() == (tmp_path / "whole" / "head.safetensors").read_bytes()
    assert not (tmp_path / "killed" / "checkpoint").exists()
    finished = (tmp_path / "whole" / "head.json").read_bytes()
    train_head(_config(kind, colour_images, tmp_path / "whole", epochs=3), show_progress=False)  # kept as it is
    assert (tmp_path / "whole" / "head.json").read_bytes() == finished


DECISIVE = (2, 5)
"""The patch (row, column of the embedded ViT's 8x8 grid of 12-pixel patches) that decides the class."""


def _decisive_patch_classes(root: Path, per_class: int = 64) -> Path:
    """Two classes told apart only by the colour of one patch (red or green at ``DECISIVE``), with
    three equally bright blue squares at random patches as distractors on dim noise."""
    rng = np.random.default_rng(1)
    for name, rgb in {"red": (230, 30, 30), "green": (30, 230, 30)}.items():
        for index in range(per_class):
            pixels = rng.integers(0, 60, (96, 96, 3))
            for row, col in rng.choice(8, (3, 2)):
                if (row, col) != DECISIVE:
                    pixels[row * 12:(row + 1) * 12, col * 12:(col + 1) * 12] = (30, 30, 230)
            pixels[DECISIVE[0] * 12:(DECISIVE[0] + 1) * 12, DECISIVE[1] * 12:(DECISIVE[1] + 1) * 12] = rgb
            path = root / name / f"{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def _own_query_hits(model: str, head: Path, data: Path) -> dict[str, float]:
    """Per class, the share of its images whose own class query (mean over attention heads)
    attends most to the decisive patch."""
    with_head = load_head_backbone(load_backbone(model), head)
    assert with_head.class_attention is not None and with_head.class_names is not None
    hits: dict[str, list[bool]] = {}
    for path in sorted(data.glob("*/*.png")):
        pixels = with_head.preprocess.image(Image.open(path).convert("RGB"))[None]
        with torch.no_grad():
            _, attention_bhcp = with_head.class_attention.attend(pixels)
        own_p = attention_bhcp[0, :, with_head.class_names.index(path.parent.name)].mean(0)
        hits.setdefault(path.parent.name, []).append(int(own_p.argmax()) == DECISIVE[0] * 8 + DECISIVE[1])
    return {name: sum(found) / len(found) for name, found in hits.items()}


@pytest.mark.parametrize("kind", ["prompt-cam", "intr"])
def test_a_class_query_attends_where_its_class_is_decided(kind: str, tmp_path: Path) -> None:
    """On the embedded ViT (a frozen model whose tokens say what a patch holds), a head trained to
    tell red from green at one patch, among bright distractors, must look at that patch. Each
    Prompt-CAM prompt gathers its own class's evidence, so both classes' queries look there. INTR
    scores the queries against each other through a softmax, so one query that detects its colour
    decides both classes: at least one class's query must look there."""
    model, data = "traitlens:specimens-vit", _decisive_patch_classes(tmp_path / "images")
    saved = train_head(HeadTrainConfig(kind=kind, model=model, data=data, out=tmp_path / "head", epochs=20, batch_size=8, lr=0.2,
                                       options=SMALL_INTR if kind == "intr" else {}, val_fraction=0.0, device="cpu"),
                       show_progress=False)
    assert saved["metrics"]["train_accuracy"] >= 0.95
    hits = _own_query_hits(model, tmp_path / "head", data)
    assert (min(hits.values()) if kind == "prompt-cam" else max(hits.values())) >= 0.9, hits


def _lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("extra", "says"), [
    (["--kind", "intr", "--pooling", "cls"], "--pooling does not apply to --kind intr"),
    (["--kind", "linear", "--decoder-width", "8"], "--decoder-width does not apply to --kind linear"),
    (["--kind", "intr", "--decoder-width", "30", "--decoder-heads", "8"], "must be a multiple of its heads"),
    (["--kind", "prompt-cam", "--layer", "no-such-layer"], "unknown layer 'no-such-layer'"),
])
def test_bad_requests_are_one_line(extra: list[str], says: str, colour_images: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _lines(capsys, ["heads", "train", "--model", HEAD_MODEL, "--random-init", "--data", str(colour_images),
                                "--out", str(tmp_path / "head"), *extra])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "head").exists()


def test_prompt_cam_refuses_a_cnn_in_one_line_and_intr_trains_on_it(colour_images: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _lines(capsys, ["heads", "train", "--kind", "prompt-cam", "--model", "timm:resnet18?num_classes=3", "--random-init",
                                "--data", str(colour_images), "--out", str(tmp_path / "head")])
    assert code == 2 and "Prompt-CAM cannot apply" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "head").exists()
    # INTR reads any layer's tokens, a CNN's feature map included
    from traitlens.explain.maps import compute_cams

    cnn = "timm:resnet18?num_classes=3"
    train_head(_config("intr", colour_images, tmp_path / "intr", model=cnn, epochs=1), show_progress=False)
    with_head = load_head_backbone(load_backbone(cnn, pretrained=False), tmp_path / "intr")
    pixels = torch.stack([with_head.preprocess.image(Image.open(path).convert("RGB")) for path in sorted(colour_images.glob("*/00.png"))])
    result = compute_cams(with_head, pixels, "intr", torch.tensor([0, 1, 2]))
    assert result.maps_bhw.shape == (3, *pixels.shape[-2:]) and bool(torch.isfinite(result.maps_bhw).all())


def test_a_damaged_or_foreign_head_is_one_line(colour_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_head(_config("intr", colour_images, tmp_path / "head", epochs=1), show_progress=False)
    argv = ["specimens", "accuracy", "--data", str(colour_images), "--head", str(tmp_path / "head"), "--device", "cpu"]
    other_model = HEAD_MODEL.replace("num_classes=3", "num_classes=4")  # other weights than those it was trained on
    assert main([*argv, "--model", HEAD_MODEL, "--random-init", "--out", str(tmp_path / "accuracy")]) == 0
    assert "accuracy" in capsys.readouterr().out
    # refused before --out is claimed: the earlier result stays
    code, err = _lines(capsys, [*argv, "--model", other_model, "--random-init", "--out", str(tmp_path / "accuracy"), "--overwrite"])
    assert code == 2 and "was trained on activations of" in err
    assert (tmp_path / "accuracy" / "accuracy.json").is_file()
    config = json.loads((tmp_path / "head" / "head.json").read_text())
    (tmp_path / "head" / "head.json").write_text(json.dumps(config | {"settings": {"width": "wide"}}))
    code, err = _lines(capsys, [*argv, "--model", HEAD_MODEL, "--random-init"])
    assert code == 2 and "head setting width must be an integer" in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "head" / "head.json").write_text(json.dumps(config))
    (tmp_path / "head" / "head.safetensors").write_bytes(b"not tensors")
    code, err = _lines(capsys, [*argv, "--model", HEAD_MODEL, "--random-init"])
    assert code == 2 and "damaged head weights" in err


def test_explain_writes_class_query_maps_per_head_and_the_trait_ranking(colour_images: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    train_head(_config("prompt-cam", colour_images, tmp_path / "head", epochs=2), show_progress=False)
    some = tmp_path / "some"
    for path in sorted(colour_images.glob("*/00.png")):
        (some / path.parent.name).mkdir(parents=True)
        (some / path.parent.name / path.name).write_bytes(path.read_bytes())
    argv = ["explain", "--model", HEAD_MODEL, "--random-init", "--head", str(tmp_path / "head"), "--data", str(some),
            "--device", "cpu"]
    assert main([*argv, "--method", "prompt-cam", "--rank-traits", "2", "--out", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    for record in summary["images"]:
        heads = np.load(tmp_path / "maps" / record["head_maps"])
        assert heads.shape == (2, 32, 32) and record["n_heads"] == 2 and heads.max() <= 1
        assert [trait["rank"] for trait in record["traits"]] == [1, 2]
        assert sorted(trait["head"] for trait in record["traits"]) == [0, 1]
        assert all((tmp_path / "maps" / trait["overlay"]).is_file() for trait in record["traits"])
    capsys.readouterr()
    # a request the head cannot serve is refused before --out is claimed: --overwrite empties nothing
    for extra, says in ((["--method", "intr"], "needs a head of kind intr"),
                        (["--method", "prompt-cam", "--refs", "blue"], "reference classes do not apply"),
                        (["--method", "prompt-cam", "--layer", "blocks.0"], "maps cover the head's layer blocks.1"),
                        (["--method", "grad-cam", "--rank-traits", "2"], "--rank-traits needs a class-query method")):
        code, err = _lines(capsys, [*argv, *extra, "--out", str(tmp_path / "maps"), "--overwrite"])
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert (tmp_path / "maps" / "summary.json").is_file()
    # more traits than attention heads: all heads are ranked, and that is said
    assert main([*argv, "--method", "prompt-cam", "--rank-traits", "5", "--out", str(tmp_path / "five")]) == 0
    assert "the head has 2 attention heads" in capsys.readouterr().err
    summary = json.loads((tmp_path / "five" / "summary.json").read_text())
    assert all(len(record["traits"]) == 2 for record in summary["images"])
    # gradient CAMs work on a class-query head's output like on any head
    assert main([*argv, "--method", "grad-cam", "--layer", "blocks.0", "--out", str(tmp_path / "grad")]) == 0


@pytest.mark.parametrize("family", ["open_clip", "hf_vit", "hf_dinov2"])
@pytest.mark.parametrize("kind", ["prompt-cam", "intr"])
def test_class_query_heads_train_on_other_libraries_vits(family: str, kind: str, colour_images: Path, tmp_path: Path) -> None:
    # the same code path as timm's: prompts and attention go through the layer and token layout only
    from tests.backbones.builders import tiny_open_clip_spec, write_hf_config
    from traitlens.explain.maps import compute_cams

    hf = {"hf_vit": "vit_classifier", "hf_dinov2": "dinov2"}
    model = tiny_open_clip_spec() if family == "open_clip" else f"hf:{write_hf_config(tmp_path / family, hf[family])}"
    saved = train_head(_config(kind, colour_images, tmp_path / "head", model=model, epochs=1), show_progress=False)
    assert saved["kind"] == kind
    with_head = load_head_backbone(load_backbone(model, pretrained=False), tmp_path / "head")
    assert with_head.class_attention is not None
    pixels = torch.stack([with_head.preprocess.image(Image.open(path).convert("RGB"))
                          for path in sorted(colour_images.glob("*/00.png"))])
    result = compute_cams(with_head, pixels, kind, torch.tensor([0, 1, 2]))
    assert result.head_maps_bkhw is not None and result.head_maps_bkhw.shape[:2] == (3, 2)  # the tiny models' 2 heads
    assert result.maps_bhw.shape == (3, *pixels.shape[-2:]) and bool(torch.isfinite(result.maps_bhw).all())


def test_a_trained_class_query_head_is_the_output_steer_and_attribute_edit(colour_images: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tests.interventions.test_attribution import random_sae
    from traitlens.sae import save_sae

    train_head(_config("intr", colour_images, tmp_path / "head", epochs=1), show_progress=False)
    save_sae(random_sae(), tmp_path / "sae", {"layer": "blocks.0", "tokens_kind": "patch", "model": HEAD_MODEL})
    common = ["--model", HEAD_MODEL, "--random-init", "--sae", str(tmp_path / "sae"), "--head", str(tmp_path / "head"),
              "--data", str(colour_images), "--device", "cpu"]
    assert main(["steer", *common, "--edit", "0=zero", "--edit", "1=zero", "--out", str(tmp_path / "steer")]) == 0
    predicted = {line.split(",")[1] for line in (tmp_path / "steer" / "predictions.csv").read_text().splitlines()[1:]}
    assert predicted <= {"blue", "green", "red"}  # the head's classes, not the model's
    assert json.loads((tmp_path / "steer" / "effect.json").read_text())["job"]["head_sha256"]
    assert main(["attribute", *common, "--target", "red", "--refs", "blue", "--out", str(tmp_path / "attribute")]) == 0
    result = json.loads((tmp_path / "attribute" / "attribution.json").read_text())
    assert (result["target"], result["refs"], result["layer"]) == ("red", ["blue"], "blocks.0")
    capsys.readouterr()
