"""``traitlens finetune``: every method trains only its own parameters (and the classifier), the
folder loads as a model the other verbs use, a killed run resumes to the same bytes, and bad
requests are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.finetune.conftest import CNN, MODEL
from tests.fuzz.harness import assert_refused, run_cli
from tests.resume import file_bytes, kill_at_call
from traitlens.backbones import load_backbone
from traitlens.checkpoints import EpochCheckpoints
from traitlens.finetune import FinetuneConfig, finetune

OWN = {"linear": lambda name: False, "full": lambda name: True, "bitfit": lambda name: name.endswith(".bias"),
       "vpt-shallow": lambda name: name.startswith("traitlens_prompts."),
       "vpt-deep": lambda name: name.startswith("traitlens_prompts."),
       "lora": lambda name: "lora_" in name, "adapter": lambda name: name.startswith("traitlens_adapters.")}


def _config(method: str, data: Path, out: Path, **changes: object) -> FinetuneConfig:
    settings: dict[str, object] = {"model": MODEL, "data": data, "method": method, "out": out, "pretrained": False,
                                   "epochs": 2, "batch_size": 8, "lr": 0.05, "device": "cpu"}
    return FinetuneConfig(**(settings | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(OWN))
def test_a_method_trains_its_own_parameters_and_the_classifier_only(method: str, colours: Path, tmp_path: Path) -> None:
    saved = finetune(_config(method, colours, tmp_path / method), show_progress=False)
    trained = load_file(str(tmp_path / method / "finetuned.safetensors"))
    assert trained and {name for name in trained if name.startswith("head.")} == {"head.weight", "head.bias"}
    assert all(name.startswith("head.") or OWN[method](name) for name in trained), sorted(trained)
    assert saved["metrics"]["n_trained_parameters"] == sum(tensor.numel() for tensor in trained.values())
    base = dict(load_backbone(MODEL, pretrained=False).model.named_parameters())
    adapted = load_backbone(f"traitlens:{tmp_path / method}")
    assert adapted.class_names == ["blue", "cyan", "green", "red", "yellow"]  # a new head: the model had no class names
    changed = 0
    for name, parameter in adapted.model.named_parameters():
        if name in trained:
            assert torch.equal(parameter.detach(), trained[name])
            changed += int(name in base and not torch.equal(parameter.detach(), base[name].detach()))
        else:  # untouched: the base model's own weight (peft keeps it as base_layer)
            assert torch.equal(parameter.detach(), base[name.replace(".base_layer", "")].detach()), name
    assert changed or method in ("vpt-shallow", "vpt-deep", "lora", "adapter")  # those train new parameters only
    assert adapted.forward(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("method", ["vpt-shallow", "lora", "adapter"])
def test_a_killed_run_resumes_to_the_same_files(method: str, colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finetune(_config(method, colours, tmp_path / "whole", epochs=3), show_progress=False)
    kill_at_call(monkeypatch, EpochCheckpoints, "save", 2)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(method, colours, tmp_path / "killed", epochs=3), show_progress=False)
    monkeypatch.undo()
    finetune(_config(method, colours, tmp_path / "killed", epochs=3), show_progress=False)
    whole, killed = file_bytes(tmp_path / "whole"), file_bytes(tmp_path / "killed")
    assert whole["finetuned.safetensors"] == killed["finetuned.safetensors"]
    assert not (tmp_path / "killed" / "checkpoint").exists()


def test_the_adapted_model_is_explained_extracted_and_steered_like_any(colours: Path, tmp_path: Path) -> None:
    finetune(_config("vpt-deep", colours, tmp_path / "model", classes=("blue", "red")), show_progress=False)
    spec = f"traitlens:{tmp_path / 'model'}"
    code, _, err = run_cli(["explain", "--model", spec, "--data", str(colours / "red"), "--method", "grad-cam",
                            "--out", str(tmp_path / "maps"), "--device", "cpu"])
    assert code == 0, err
    code, _, err = run_cli(["extract", "--model", spec, "--data", str(colours), "--layers", "-1", "--out", str(tmp_path / "acts"),
                            "--device", "cpu"])
    assert code == 0, err
    from tests.interventions.test_attribution import random_sae
    from traitlens.sae import save_sae

    save_sae(random_sae(), tmp_path / "sae", {"layer": "blocks.0", "tokens_kind": "patch", "model": spec})
    code, _, err = run_cli(["steer", "--model", spec, "--sae", str(tmp_path / "sae"), "--data", str(colours / "red"),
                            "--edit", "0=zero", "--out", str(tmp_path / "steer"), "--device", "cpu"])
    assert code == 0, err
    predicted = {line.split(",")[1] for line in (tmp_path / "steer" / "predictions.csv").read_text().splitlines()[1:]}
    assert predicted <= {"blue", "cyan", "green", "red", "yellow"}  # the adapted model's classes
    # the prompts took part: the adapted model's tokens are not the base model's
    with torch.no_grad():
        pixels = torch.rand(1, 3, 32, 32)
        adapted, base = load_backbone(spec), load_backbone(MODEL, pretrained=False)
        assert not torch.allclose(adapted.tokens(pixels, ["blocks.1"])["blocks.1"], base.tokens(pixels, ["blocks.1"])["blocks.1"])


def test_bad_requests_are_one_line_and_claim_nothing(colours: Path, tmp_path: Path) -> None:
    base = ["finetune", "--data", str(colours), "--random-init", "--out", str(tmp_path / "never")]
    assert_refused([*base, "--model", CNN, "--method", "vpt-deep"], colours, says="cannot apply")
    assert_refused([*base, "--model", MODEL, "--method", "lora", "--classes", "red,pink"], colours, says="pink")
    assert_refused([*base, "--model", MODEL, "--method", "bitfit", "--lora-rank", "4"], colours, says="--lora-rank does not apply")
    from tests.backbones.builders import tiny_open_clip_spec

    assert_refused([*base, "--model", tiny_open_clip_spec(), "--method", "linear"], colours, says="no classifier head")
    for local in (f"traitlens:{colours}", f"hf:{colours}", "open_clip:local-dir:/somewhere"):  # paths stay out of finetune.json
        assert_refused([*base, "--model", local, "--method", "linear"], colours, says="local path")
    assert not (tmp_path / "never").exists()


def test_loading_refuses_a_damaged_folder_in_one_line(colours: Path, tmp_path: Path) -> None:
    finetune(_config("adapter", colours, tmp_path / "model"), show_progress=False)
    config = (tmp_path / "model" / "finetune.json").read_text()
    (tmp_path / "model" / "finetune.json").write_text(config.replace('"weights": null', '"weights": "/etc/passwd"'))
    assert_refused(["specimens", "accuracy", "--model", f"traitlens:{tmp_path / 'model'}", "--data", str(colours)], colours,
                   says="base weights must be")
    for damage, says in ((('"seed": 0', '"seed": 1180591620717411303424'), "seed must be"),
                         (('"n_per_class": null', '"n_per_class": "all"'), "n_per_class must be")):
        (tmp_path / "model" / "finetune.json").write_text(config.replace(*damage))
        assert_refused(["specimens", "accuracy", "--model", f"traitlens:{tmp_path / 'model'}", "--data", str(colours)], colours,
                       says=says)
    # the base rebuilt from its spec must be the one fine-tuned
    (tmp_path / "model" / "finetune.json").write_text(config.replace('"weights_fingerprint": "', '"weights_fingerprint": "0'))
    assert_refused(["specimens", "accuracy", "--model", f"traitlens:{tmp_path / 'model'}", "--data", str(colours)], colours,
                   says="other weights")
    (tmp_path / "model" / "finetune.json").write_text(config)
    # every trained parameter must be in the weights file
    from safetensors.torch import save_file

    trained = load_file(str(tmp_path / "model" / "finetuned.safetensors"))
    save_file({name: tensor for name, tensor in trained.items() if not name.startswith("head.")},
              str(tmp_path / "model" / "finetuned.safetensors"))
    assert_refused(["specimens", "accuracy", "--model", f"traitlens:{tmp_path / 'model'}", "--data", str(colours)], colours,
                   says="do not fit")
    (tmp_path / "model" / "finetuned.safetensors").write_bytes(b"not tensors")
    assert_refused(["specimens", "accuracy", "--model", f"traitlens:{tmp_path / 'model'}", "--data", str(colours)], colours,
                   says="damaged fine-tuned weights")
