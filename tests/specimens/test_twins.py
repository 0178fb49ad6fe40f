"""Counterfactual twins: a species and its look-alike drawn from the same generator state are the
same organism in the same scene, differing only inside the separating trait's footprint."""

from __future__ import annotations

import numpy as np
import pytest

from traitlens.specimens.catalog import LOOKALIKES, SPECIES, TRAITS, trait_label
from traitlens.specimens.render import render_specimen

_BY_NAME = {species.name: species for species in SPECIES}


@pytest.mark.parametrize("pair", LOOKALIKES, ids=lambda pair: pair.trait)
def test_twins_differ_exactly_inside_the_trait(pair) -> None:
    trait = [t.name for t in TRAITS].index(pair.trait)
    for index in range(12):
        image = render_specimen(_BY_NAME[pair.a], 96, np.random.default_rng([11, index]))
        twin = render_specimen(_BY_NAME[pair.b], 96, np.random.default_rng([11, index]))
        footprint = image.footprints_thw[trait] | twin.footprints_thw[trait]
        differs = (image.image_hw3 != twin.image_hw3).any(2)
        assert differs.any()
        assert not (differs & ~footprint).any(), f"pixels outside the {pair.trait} footprint changed"
        # every other trait's footprint, and every label outside this trait, are shared
        others = [t for t in range(len(TRAITS)) if t != trait]
        assert (image.footprints_thw[others] == twin.footprints_thw[others]).all()
        relabelled = image.labels_hw != twin.labels_hw
        assert not (relabelled & ~footprint).any()
        # the visible trait is inside its footprint
        assert not ((image.labels_hw == trait_label(trait)) & ~image.footprints_thw[trait]).any()


def test_a_presence_trait_absent_has_an_empty_footprint() -> None:
    plain = next(species for species in SPECIES if species.trait_values()["crest"] == "none")
    specimen = render_specimen(plain, 64, np.random.default_rng(0))
    assert not specimen.footprints_thw[0].any()
