"""Linear probes on a real store: separable classes, determinism, the saved format, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fuzz.harness import assert_refused
from traitlens.cli import main
from traitlens.heads import HeadError, ProbeConfig, load_head, train_probe
from traitlens.heads.pooling import pool_tokens
from traitlens.heads.probe import pooled_store_features
from traitlens.store import ActivationStore, store_from_arrays

from .conftest import PER_CLASS


def test_probe_cli_learns_separable_classes_deterministically(capsys: pytest.CaptureFixture[str], colour_store: Path,
                                                              tmp_path: Path) -> None:
    for out in ("first", "second"):
        assert main(["probe", "--acts", str(colour_store), "--layer", "blocks.1", "--out", str(tmp_path / out)]) == 0
    printed = capsys.readouterr().out
    assert "saved probe" in printed and "(cls pooling)" in printed and "--head" in printed
    for name in ("head.safetensors", "head.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))

    saved = json.loads((tmp_path / "first" / "head.json").read_text())
    store = ActivationStore(colour_store)
    assert saved["format"] == "traitlens.head" and saved["kind"] == "linear_probe"
    assert saved["layer"] == "blocks.1" and saved["pooling"] == "cls" and saved["width"] == 32
    assert saved["class_names"] == ["blue", "green", "red"]
    assert saved["model"]["weights_fingerprint"] == store.manifest["model"]["weights_fingerprint"]
    metrics = saved["metrics"]
    assert metrics["n_train"] + metrics["n_val"] == 3 * PER_CLASS and metrics["n_val"] == round(0.2 * 3 * PER_CLASS)
    assert metrics["train_accuracy"] >= 0.9 and metrics["val_accuracy"] >= 0.8  # chance is 1/3


def test_saved_head_reproduces_its_logits_and_accuracies(colour_store: Path, tmp_path: Path) -> None:
    head = train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "probe", layer="blocks.0", pooling="mean", seed=3))
    loaded = load_head(tmp_path / "probe")
    store = ActivationStore(colour_store)
    features_nd = pooled_store_features(store, store.layer("blocks.0"), "mean")
    assert torch.equal(head.logits(features_nd), loaded.logits(features_nd))
    assert loaded.class_names == head.class_names and loaded.info == json.loads(json.dumps(head.info))

    # the accuracies reported are those of the saved weights on the stored images
    labels_n = torch.tensor([loaded.class_names.index(str(image.label)) for image in store.images])
    correct_n = loaded.logits(features_nd).argmax(-1) == labels_n
    metrics = loaded.info["metrics"]
    reported = metrics["train_accuracy"] * metrics["n_train"] + metrics["val_accuracy"] * metrics["n_val"]
    assert int(correct_n.sum()) == round(reported)
    assert loaded.info["config"]["seed"] == 3 and "out" not in loaded.info["config"]


def test_pooling_reads_the_cls_token_or_the_patch_mean(colour_store: Path, patch_store: Path) -> None:
    store = ActivationStore(colour_store)
    layer = store.layer("blocks.1")
    tokens_btd = torch.from_numpy(store.image_tokens("blocks.1", 5)[None].astype(np.float32))
    assert torch.equal(pool_tokens(tokens_btd, layer.layout, "all", "cls"), tokens_btd[:, 0])
    assert torch.allclose(pool_tokens(tokens_btd, layer.layout, "all", "mean"), tokens_btd[:, 1:].mean(1))
    # the same images stored as patch tokens only (float32) give the same mean to fp16 precision
    patch = ActivationStore(patch_store)
    from_patches_nd = pooled_store_features(patch, patch.layer("blocks.1"), "mean")
    from_all_nd = pooled_store_features(store, layer, "mean")
    assert torch.allclose(from_patches_nd, from_all_nd, atol=1e-2, rtol=1e-2)


def test_bad_inputs_are_one_line_errors(colour_store: Path, patch_store: Path, tmp_path: Path) -> None:
    store_from_arrays(tmp_path / "unlabelled", {"layer": np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)})
    shutil.copytree(colour_store, tmp_path / "nan")
    store = ActivationStore(colour_store)
    shard = tmp_path / "nan" / store.layer("blocks.1").shard_files[0]
    tokens = np.load(shard)
    positions = store.row_order.stored_positions(0, len(tokens))  # where each image-order row is stored
    tokens[3 if positions is None else positions[3], 0] = np.nan  # image 0's first patch token
    np.save(shard, tokens)
    train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "taken"))
    cases = {
        "is not in the store": ["--acts", str(colour_store), "--layer", "blocks.7"],
        "have no labels": ["--acts", str(tmp_path / "unlabelled")],
        "CLS pooling needs a store extracted with --tokens cls or all": ["--acts", str(patch_store), "--pooling", "cls"],
        "already holds a traitlens probe result; pass --overwrite": ["--acts", str(colour_store), "--out", str(tmp_path / "taken")],
        "argument --val-fraction: a number in [0, 1) expected": ["--acts", str(colour_store), "--val-fraction", "1.5"],
        "no activation store": ["--acts", str(tmp_path / "nowhere")],
    }
    for message, args in cases.items():
        argv = ["probe", *args] if "--out" in args else ["probe", *args, "--out", str(tmp_path / "new")]
        assert_refused(argv, colour_store, tmp_path / "taken", says=message)
    # refused for its inputs, before it claimed the folder: the corrected command needs no --overwrite
    assert not (tmp_path / "new").exists()
    assert_refused(["probe", "--acts", str(tmp_path / "nan"), "--pooling", "mean", "--out", str(tmp_path / "nan-probe")],
                   tmp_path / "nan", says="1 images have NaN/Inf tokens at layer blocks.1")
    assert not (tmp_path / "nan-probe" / "head.json").exists()
    with pytest.raises(HeadError, match="has no CLS token"):
        train_probe(ProbeConfig(acts=tmp_path / "unlabelled", out=tmp_path / "new", pooling="cls"))
    for bad in ({"val_fraction": 1.0}, {"l2": -1.0}, {"max_iter": 0}, {"seed": -1}, {"pooling": "max"}, {"l2": float("nan")}):
        with pytest.raises(HeadError):
            ProbeConfig(acts=colour_store, out=tmp_path / "new", **bad)


def test_probe_never_touches_another_folder_and_overwrites_only_its_own(colour_store: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "head.safetensors").write_bytes(b"the user's own file")
    assert_refused(["probe", "--acts", str(colour_store), "--out", str(mine), "--overwrite"], mine, says="not empty")
    first = train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "probe", val_fraction=0.5))
    again = train_probe(ProbeConfig(acts=colour_store, out=tmp_path / "probe", overwrite=True))
    assert first.info["metrics"]["n_val"] != again.info["metrics"]["n_val"]
    assert load_head(tmp_path / "probe").info["metrics"] == again.info["metrics"]
