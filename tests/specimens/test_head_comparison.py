"""``traitlens specimens score heads``: heads trained on the embedded ViT, scored side by side on a
twin benchmark (accuracy, reliance, localization with the oracle, faithfulness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fuzz.harness import assert_refused, run_cli
from traitlens.heads.training import HeadTrainConfig, train_head

MODEL = "traitlens:specimens-vit"


@pytest.fixture(scope="module")
def trained_heads(twin_bench: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("heads")
    options = {"linear": {}, "intr": {"decoder_layers": 1, "decoder_width": 32, "decoder_heads": 2}}
    heads = []
    for kind, settings in options.items():
        train_head(HeadTrainConfig(kind=kind, model=MODEL, data=twin_bench / "images", out=root / kind, options=settings,
                                   epochs=1, batch_size=8, device="cpu"), show_progress=False)
        heads.append(root / kind)
    return heads


def test_each_head_is_scored_with_its_own_maps_and_oracle(twin_bench: Path, trained_heads: list[Path], tmp_path: Path) -> None:
    argv = ["specimens", "score", "heads", "--model", MODEL, "--data", str(twin_bench), "--out", str(tmp_path / "scores"),
            "--n-faithfulness", "4", "--device", "cpu"]
    for head in trained_heads:
        argv += ["--head", str(head)]
    code, out, err = run_cli(argv)
    assert code == 0, err
    result = json.loads((tmp_path / "scores" / "heads.json").read_text())
    assert [row["head"] for row in result["accuracy"]] == ["linear", "intr"]
    for row in result["accuracy"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["reliance"] <= 1 and row["layer"] == "blocks.3"
    methods = {(row["head"], row["method"]) for row in result["localization"]}
    # every head gets Grad-CAM and Finer-CAM of its logits; only the class-query head has maps of its own
    assert {head for head, _ in methods} == {"linear", "intr"}
    assert any(head == "intr" and "INTR" in method for head, method in methods)
    assert not any(head == "linear" and "INTR" in method for head, method in methods)
    for row in result["faithfulness"]:
        assert row["n_images"] == 4 and 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
    assert {row["method"] for row in result["faithfulness"] if row["head"] == "intr"} >= {"INTR", "Grad-CAM"}
    assert (tmp_path / "scores" / "intr" / "reliance" / "reliance.json").is_file()
    assert "| intr |" in out


def test_bad_requests_are_one_line(twin_bench: Path, trained_heads: list[Path], tmp_path: Path) -> None:
    base = ["specimens", "score", "heads", "--model", MODEL, "--data", str(twin_bench)]
    twice = [*base, "--head", str(trained_heads[0]), "--head", str(trained_heads[0]), "--out", str(tmp_path / "never")]
    assert_refused(twice, twin_bench, says="folder name")
    assert_refused([*base, "--head", str(tmp_path / "missing"), "--out", str(tmp_path / "never")], twin_bench)
    # a head whose weights are damaged is refused before --out is claimed, whatever its position
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_heads[1], damaged)
    (damaged / "head.safetensors").write_bytes(b"not tensors")
    assert_refused([*base, "--head", str(trained_heads[0]), "--head", str(damaged), "--out", str(tmp_path / "never")], twin_bench,
                   says="damaged head weights")
    assert not (tmp_path / "never").exists()


def test_a_class_query_method_may_come_first_among_contrasted_ones(twin_bench: Path, trained_heads: list[Path]) -> None:
    # the closest-logit references come from the first method that takes references, whichever is first
    from traitlens.backbones import load_backbone
    from traitlens.data import open_image_source
    from traitlens.heads import load_head_backbone
    from traitlens.specimens.cam_localization import lookalike_localization
    from traitlens.specimens.reliance import read_twin_benchmark

    backbone = load_head_backbone(load_backbone(MODEL), trained_heads[1])
    result = lookalike_localization(backbone, open_image_source(twin_bench), read_twin_benchmark(twin_bench), ("intr", "grad-cam"),
                                    references=("lookalike", "closest"))
    methods = [row["method"] for row in result.rows]
    assert methods[0].startswith("INTR") and any("closest" in method for method in methods), methods
