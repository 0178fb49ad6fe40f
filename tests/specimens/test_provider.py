"""The embedded specimens zoo: every ``traitlens:NAME`` loads, stays small, and classifies specimens."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.backbones import load_backbone
from traitlens.specimens.catalog import SPECIES
from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy
from traitlens.specimens.model_dir import WEIGHTS
from traitlens.specimens.provider import EMBEDDED, model_directory


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_an_embedded_model_is_small_knows_every_species_and_classifies_fresh_specimens(name: str, twin_bench: Path) -> None:
    assert (model_directory(name) / WEIGHTS).stat().st_size <= 10_000_000  # the zoo's size bound (issue 13)
    backbone = load_backbone(f"traitlens:{name}")
    assert backbone.class_names == [species.name for species in SPECIES]
    # 32 twin-safe images of a seed no model was trained on; the zoo is >= 90% accurate on such images,
    # so this bound leaves room for chance on 32 images while catching broken weights or preprocessing
    accuracy = model_accuracy(AccuracyConfig(model=f"traitlens:{name}", data=twin_bench / "images"), show_progress=False)
    assert accuracy["accuracy"] >= 0.75
