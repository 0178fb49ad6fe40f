"""The saved head format: round trip, and damaged directories as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from traitlens.heads import HeadError, LinearHead, load_head, save_head


def _head() -> LinearHead:
    generator = torch.Generator().manual_seed(0)
    return LinearHead(torch.randn(3, 5, generator=generator), torch.randn(3, generator=generator), "blocks.1", "mean",
                      ("ant", "bee", "cat"), {"spec": "timm:x", "weights_fingerprint": "abc"}, {"kind": "linear_probe"})


def test_round_trip(tmp_path: Path) -> None:
    head = _head()
    save_head(tmp_path / "head", head)
    loaded = load_head(tmp_path / "head")
    features_bd = torch.randn(4, 5)
    assert torch.equal(loaded.logits(features_bd), features_bd @ head.weight_cd.T + head.bias_c)
    assert (loaded.layer, loaded.pooling, loaded.class_names, loaded.model, loaded.info) == \
        (head.layer, head.pooling, head.class_names, head.model, head.info)
    assert loaded.logits(features_bd.double()).dtype == torch.float64


def _damage(directory: Path, **changes: object) -> None:
    data = json.loads((directory / "head.json").read_text())
    (directory / "head.json").write_text(json.dumps({**data, **changes}))


def test_damaged_heads_are_one_line_errors(tmp_path: Path) -> None:
    for name in ("json", "classes", "pooling", "format", "weights", "width"):
        save_head(tmp_path / name, _head())
    (tmp_path / "json" / "head.json").write_text("{not json")
    _damage(tmp_path / "classes", class_names=["ant", "bee"])
    _damage(tmp_path / "pooling", pooling="max")
    _damage(tmp_path / "format", format="traitlens.sae")
    (tmp_path / "weights" / "head.safetensors").write_bytes(b"\x00" * 10)
    _damage(tmp_path / "width", width=None)
    cases = {"json": "damaged head config", "classes": "do not fit 2 classes of width 5", "pooling": "unknown pooling 'max'",
             "format": "is not a traitlens head config", "weights": "cannot read head weights",
             "width": "missing or malformed", "nowhere": "head.json missing"}
    for name, message in cases.items():
        with pytest.raises(HeadError, match=message) as caught:
            load_head(tmp_path / name)
        assert "\n" not in str(caught.value)
