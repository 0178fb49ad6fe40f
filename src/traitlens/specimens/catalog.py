"""The specimens catalog: traits, the species built from them, and their look-alike pairs.

A constant, not drawn from a seed, so every benchmark shares it. Species come in look-alike pairs:
the two species of a pair differ in exactly one trait (each trait tells one pair apart), while
species of different pairs differ in at least two, so a pair is always the closest confusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

TraitKind = Literal["presence", "color", "shape"]
Plan = Literal["butterfly", "dragonfly"]

BACKGROUND_LABEL = 0
BODY_LABEL = 1
FIRST_TRAIT_LABEL = 2


@dataclass(frozen=True)
class Trait:
    """A localized trait: ``values[0]`` is the default; a presence trait draws nothing for it."""

    name: str
    kind: TraitKind
    values: tuple[str, ...]
    part: str

    def is_drawn(self, value: str) -> bool:
        """Whether an organism with this value has pixels of the trait."""
        return self.kind != "presence" or value != self.values[0]


@dataclass(frozen=True)
class Species:
    name: str
    plan: Plan
    values: tuple[str, ...]
    """One value per trait, in the order of :data:`TRAITS`."""

    def trait_values(self) -> dict[str, str]:
        return {trait.name: value for trait, value in zip(TRAITS, self.values, strict=True)}


@dataclass(frozen=True)
class Lookalike:
    """Two species that differ only by ``trait``."""

    a: str
    b: str
    trait: str


TRAITS: tuple[Trait, ...] = (
    Trait("crest", "presence", ("none", "crest"), "head"),
    Trait("antenna", "shape", ("straight", "clubbed"), "antennae"),
    Trait("collar", "presence", ("none", "collar"), "thorax"),
    Trait("wing_band", "color", ("red", "blue"), "forewings"),
    Trait("wing_tip", "presence", ("none", "dark"), "forewing tips"),
    Trait("wing_spots", "presence", ("none", "spots"), "hindwings"),
    Trait("body_texture", "presence", ("plain", "striped"), "abdomen"),
    Trait("tail", "shape", ("round", "forked"), "tail"),
)

# Row k holds look-alike pair k, which differs in trait k. The rows are codewords of the extended
# Hamming code (any two differ in 4 or more traits) with trait k flipped for the second species,
# so species of different pairs differ in at least 2 traits. Digits are value indices in TRAITS
# order; even pairs are butterflies, odd pairs dragonflies.
_PAIR_TABLE: tuple[tuple[Plan, str, str], ...] = (
    ("butterfly", "00001111", "10001111"),
    ("dragonfly", "01010101", "00010101"),
    ("butterfly", "01011010", "01111010"),
    ("dragonfly", "00000000", "00010000"),
    ("butterfly", "10100101", "10101101"),
    ("dragonfly", "11111111", "11111011"),
    ("butterfly", "11110000", "11110010"),
    ("dragonfly", "10101010", "10101011"),
)


def _species(name: str, plan: Plan, digits: str) -> Species:
    return Species(name, plan, tuple(trait.values[int(digit)] for trait, digit in zip(TRAITS, digits, strict=True)))


SPECIES: tuple[Species, ...] = tuple(
    _species(f"sp{2 * pair + member:02d}", plan, digits)
    for pair, (plan, *members) in enumerate(_PAIR_TABLE)
    for member, digits in enumerate(members)
)


def trait_differences(a: Species, b: Species) -> list[str]:
    """The names of the traits in which two species differ."""
    return [trait.name for trait, x, y in zip(TRAITS, a.values, b.values, strict=True) if x != y]


def find_lookalikes(species: tuple[Species, ...]) -> tuple[Lookalike, ...]:
    """Every pair of species of the same plan that differs in exactly one trait."""
    return tuple(
        Lookalike(a.name, b.name, differences[0])
        for a, b in combinations(species, 2)
        if a.plan == b.plan and len(differences := trait_differences(a, b)) == 1
    )


LOOKALIKES: tuple[Lookalike, ...] = find_lookalikes(SPECIES)


def lookalike_of(species: Species) -> tuple[Species, str]:
    """The species that differs from ``species`` only by one trait, and that trait's name."""
    for pair in LOOKALIKES:
        if species.name in (pair.a, pair.b):
            other = pair.b if species.name == pair.a else pair.a
            return next(candidate for candidate in SPECIES if candidate.name == other), pair.trait
    raise KeyError(f"{species.name} has no look-alike")


def trait_label(trait_index: int) -> int:
    """The label-map value of the trait at ``trait_index`` in :data:`TRAITS`."""
    return FIRST_TRAIT_LABEL + trait_index


def label_names() -> list[str]:
    """Line j names label j: background, body, then the traits in catalog order."""
    return ["background", "body", *(trait.name for trait in TRAITS)]


def catalog_dict() -> dict[str, Any]:
    """The catalog as JSON-able data: traits with their labels, species, look-alike pairs."""
    return {
        "traits": [
            {"name": trait.name, "kind": trait.kind, "values": list(trait.values), "part": trait.part,
             "label": trait_label(index)}
            for index, trait in enumerate(TRAITS)
        ],
        "species": [{"name": species.name, "plan": species.plan, "traits": species.trait_values()}
                    for species in SPECIES],
        "lookalikes": [{"a": pair.a, "b": pair.b, "trait": pair.trait} for pair in LOOKALIKES],
    }
