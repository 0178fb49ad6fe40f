"""The saved head format: round trip, and damaged directories as one-line errors."""

from __future__ import annotations

import json
import re
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
    damage = {"classes": {"class_names": ["ant", "bee"]}, "pooling": {"pooling": "max"}, "format": {"format": "traitlens.sae"},
              "width": {"width": None}, "bool_width": {"width": True}, "layer": {"layer": ["blocks.1"]},
              "twice": {"class_names": ["ant", "ant", "cat"]}, "model": {"model": "timm:x"}}
    for name in ("json", "weights", *damage):
        save_head(tmp_path / name, _head())
    for name, changes in damage.items():
        _damage(tmp_path / name, **changes)
    (tmp_path / "json" / "head.json").write_text("{not json")
    (tmp_path / "weights" / "head.safetensors").write_bytes(b"\x00" * 10)
    nan_head = _head()
    nan_head.weight_cd[0, 0] = float("nan")
    save_head(tmp_path / "nan", nan_head)
    cases = {"json": "damaged head config", "classes": "must hold float weight (2, 5) and bias (2,)",
             "pooling": "pooling must be one of cls, mean, got 'max'", "format": "is not a traitlens head config",
             "weights": "cannot read head weights", "width": "width must be an integer", "bool_width": "width must be an integer",
             "layer": "layer must be a layer name", "twice": "distinct", "model": "model must be an object",
             "nan": "NaN or infinite weights", "nowhere": "head.json missing"}
    for name, message in cases.items():
        with pytest.raises(HeadError, match=re.escape(message)) as caught:
            load_head(tmp_path / name)
        assert "\n" not in str(caught.value)
