"""Drawing one specimen: an organism of a species in a random scene, and its exact label map.

The organism is built from polygons in a canonical frame (head up, x to the right, the body within
about [-1, 1]^2); one affine transform per image (the pose) maps them to pixels. The image is drawn
at ``SUPERSAMPLE`` times its size and box-filtered down for anti-aliasing; the label map is drawn
from the same polygons at the final size, through the same transform expressed in final pixels, so
image and labels line up. Labels: 0 background (clutter and occluders included), 1 body, and
``trait_label(i)`` for the visible pixels of trait i.

Nuisances (all drawn from the generator passed in): pose (rotation, scale, squash, position), wing
and body colours, background texture and clutter, an occluder in half the images, lighting, colour
gains, contrast and sensor noise. None of them takes a trait's colour, and an occluder never
hides more than ``MAX_OCCLUDED_FRACTION`` of the organism nor ``MAX_REGION_OCCLUSION`` of the region
where any value of a trait would be drawn, so every drawn trait stays visible and every absent one
visibly absent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from traitlens.specimens.catalog import (
    BACKGROUND_LABEL,
    BODY_LABEL,
    TRAITS,
    Plan,
    Species,
    lookalike_of,
    trait_label,
)

_TRAIT_INDEX = {trait.name: index for index, trait in enumerate(TRAITS)}

SUPERSAMPLE = 2
MAX_ROTATION_DEG = 35.0
UNIT_RANGE = (0.36, 0.46)
"""Pixels per canonical unit, as a fraction of the image size (the organism spans about 2 units)."""
SQUASH_RANGE = (0.8, 1.0)
"""Horizontal scale relative to vertical, as if the organism were seen slightly from the side."""
OCCLUDER_PROBABILITY = 0.5
MAX_OCCLUDED_FRACTION = 0.15
MAX_REGION_OCCLUSION = 0.35
BRIGHTNESS_RANGE = (0.75, 1.2)
CHANNEL_GAIN_RANGE = (0.93, 1.07)
"""Per-channel gains: a colour cast far too weak to turn red into blue."""
CONTRAST_RANGE = (0.8, 1.15)
MAX_LIGHT_GRADIENT = 0.25
MAX_NOISE_SIGMA = 6.0

Color = tuple[int, int, int]
Points = np.ndarray
"""A polygon as an (n, 2) float array of x, y."""

# Trait colours are fixed up to a small jitter; nuisance colours (wings, body, scene) are earthy,
# green or grey, so no nuisance can pass for a trait.
_TRAIT_COLORS: dict[str, Color] = {
    "crest": (240, 130, 30),
    "collar": (250, 225, 50),
    "red": (205, 35, 35),
    "blue": (40, 80, 215),
    "tip": (22, 20, 20),
    "spots": (248, 248, 240),
    "stripes": (235, 225, 175),
}
_TRAIT_COLOR_JITTER = 12
# Mid-light wing colours, so white spots and dark tips stand out on every one of them.
_WING_COLORS: tuple[Color, ...] = (
    (205, 175, 125), (210, 165, 85), (165, 150, 130), (178, 168, 112), (150, 160, 150), (190, 150, 110),
)
_BODY_COLORS: tuple[Color, ...] = ((58, 42, 32), (44, 38, 38), (78, 58, 42))
_OUTLINE_COLOR: Color = (35, 28, 22)
_GROUND_COLORS: tuple[Color, ...] = (
    (80, 115, 55), (100, 130, 70), (60, 90, 45), (115, 115, 65), (120, 120, 115), (115, 100, 80), (85, 72, 58),
)
_GRASS_COLORS: tuple[Color, ...] = ((70, 110, 40), (110, 140, 60), (140, 140, 80), (90, 80, 50), (60, 80, 35))
_STONE_COLORS: tuple[Color, ...] = ((140, 138, 130), (120, 100, 80), (100, 100, 95), (150, 140, 115))
_LEAF_COLORS: tuple[Color, ...] = ((70, 120, 45), (95, 135, 55), (60, 95, 40))
_TWIG_COLORS: tuple[Color, ...] = ((100, 75, 50), (85, 68, 52), (120, 95, 65))


@dataclass(frozen=True)
class Specimen:
    image_hw3: np.ndarray
    """RGB, uint8."""
    labels_hw: np.ndarray
    """uint8: 0 background, 1 body, ``trait_label(i)`` where trait i is visible."""
    occluded_fraction: float
    """Share of the organism's pixels hidden by the occluder (0 when there is none)."""
    footprints_thw: np.ndarray
    """(traits, h, w) bool: for trait i, the pixels its drawn value covers, seen or under another
    part of the organism (a crest's root under the head), not under the occluder; empty for a
    value that draws nothing. The only pixels where this specimen and its twin can differ."""


# -- canonical geometry ----------------------------------------------------------------------------


def _ellipse(center: npt.ArrayLike, rx: float, ry: float, angle_deg: float = 0.0, n: int = 32) -> Points:
    cx, cy = np.asarray(center, np.float64)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _oval(part: tuple[float, float, float, float]) -> Points:
    """The ellipse of a body part given as x, y, half-width, half-height."""
    x, y, rx, ry = part
    return _ellipse((x, y), rx, ry)


def _segment(start: Sequence[float], end: Sequence[float], width: float) -> Points:
    """A straight stroke as a quadrilateral."""
    start_2, end_2 = np.asarray(start, float), np.asarray(end, float)
    direction = (end_2 - start_2) / np.linalg.norm(end_2 - start_2)
    side = np.array([-direction[1], direction[0]]) * width / 2
    return np.stack([start_2 + side, end_2 + side, end_2 - side, start_2 - side])


def _smooth(points: Points, rounds: int = 3) -> Points:
    """Chaikin corner cutting: a hand-placed outline becomes a rounded one."""
    for _ in range(rounds):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1).reshape(-1, 2)
    return points


def _mirror(points: Points) -> Points:
    return points * np.array([-1.0, 1.0])


def _clip(points: Points, normal: npt.ArrayLike, offset: float) -> Points:
    """The part of a polygon where ``normal . p >= offset`` (Sutherland-Hodgman, one half-plane)."""
    if len(points) == 0:
        return points
    side = points @ np.asarray(normal, float) - offset
    kept: list[np.ndarray] = []
    for i in range(len(points)):
        j = (i + 1) % len(points)
        if side[i] >= 0:
            kept.append(points[i])
        if (side[i] >= 0) != (side[j] >= 0):
            kept.append(points[i] + (points[j] - points[i]) * side[i] / (side[i] - side[j]))
    return np.array(kept).reshape(-1, 2)


def _strip(points: Points, normal: npt.ArrayLike, low: float, high: float) -> Points:
    """The part of a polygon where ``low <= normal . p <= high``."""
    return _clip(_clip(points, normal, low), -np.asarray(normal, float), -high)


@dataclass(frozen=True)
class _Anatomy:
    """Where a body plan puts its parts; the right-hand wings and antenna are mirrored to the left."""

    head: tuple[float, float, float]
    """x, y, radius."""
    thorax: tuple[float, float, float, float]
    """x, y, half-width, half-height."""
    abdomen: tuple[float, float, float, float]
    forewing: Points
    hindwing: Points
    forewing_axis: tuple[tuple[float, float], tuple[float, float]]
    """Root and apex: the band and the dark tip sit at fixed fractions along this line."""
    spots: tuple[tuple[float, float], ...]
    """Spot centres on the right hindwing, clear of the forewing."""
    spot_radius: float
    antenna: tuple[tuple[float, float], tuple[float, float]]
    """Base and tip of the right antenna."""
    crest_height: float
    tail_length: float


_ANATOMY: dict[Plan, _Anatomy] = {
    "butterfly": _Anatomy(
        head=(0.0, -0.5, 0.11),
        thorax=(0.0, -0.24, 0.14, 0.2),
        abdomen=(0.0, 0.27, 0.11, 0.38),
        forewing=_smooth(np.array([(0.1, -0.38), (0.4, -0.62), (0.8, -0.78), (0.97, -0.62), (0.84, -0.26),
                                   (0.5, -0.04), (0.12, -0.1)])),
        hindwing=_smooth(np.array([(0.1, -0.14), (0.45, -0.1), (0.74, 0.1), (0.72, 0.44), (0.46, 0.64),
                                   (0.2, 0.57), (0.08, 0.3)])),
        forewing_axis=((0.12, -0.24), (0.92, -0.68)),
        spots=((0.33, 0.36), (0.56, 0.2)),
        spot_radius=0.09,
        antenna=((0.04, -0.58), (0.32, -0.97)),
        crest_height=0.36,
        tail_length=0.36,
    ),
    "dragonfly": _Anatomy(
        head=(0.0, -0.68, 0.14),
        thorax=(0.0, -0.4, 0.15, 0.18),
        abdomen=(0.0, 0.25, 0.085, 0.5),
        forewing=_ellipse((0.55, -0.47), 0.45, 0.14, angle_deg=-6),
        hindwing=_ellipse((0.53, -0.15), 0.44, 0.15, angle_deg=8),
        forewing_axis=((0.1, -0.43), (1.0, -0.52)),
        spots=((0.45, -0.14), (0.72, -0.1)),
        spot_radius=0.08,
        antenna=((0.06, -0.78), (0.3, -1.0)),
        crest_height=0.28,
        tail_length=0.34,
    ),
}

_BAND_SPAN = (0.44, 0.62)
"""Where the band crosses the forewing, as fractions of the root-to-apex axis."""
_TIP_SPAN = (0.74, 2.0)
"""The dark tip: from 74% of the forewing axis to past the apex."""
_ANTENNA_WIDTH = 0.06
_CLUB_RADIUS = 0.17
_TAIL_WIDTH = 0.1
_STRIPE_PERIOD = 0.17
_STRIPE_WIDTH = 0.08


@dataclass(frozen=True)
class _Shape:
    points: Points
    color: str
    """A key of the image's palette."""
    label: int
    outlined: bool = False


Marks = list[tuple[Points, str]]
"""Polygons with the palette key of their colour."""


def _both_sides(points: Points, color: str) -> Marks:
    return [(points, color), (_mirror(points), color)]


def _antenna(anatomy: _Anatomy, value: str) -> Marks:
    base, tip = anatomy.antenna
    marks = _both_sides(_segment(base, tip, _ANTENNA_WIDTH), "body")
    if value == "clubbed":
        marks += _both_sides(_ellipse(tip, _CLUB_RADIUS, _CLUB_RADIUS, n=16), "body")
    return marks


def _crest(anatomy: _Anatomy, value: str) -> Marks:
    x, y, radius = anatomy.head
    return [(np.array([(x - 0.12, y - 0.6 * radius), (x + 0.12, y - 0.6 * radius),
                       (x, y - radius - anatomy.crest_height)]), "crest")]


def _tail(anatomy: _Anatomy, value: str) -> Marks:
    _, abdomen_y, _, abdomen_ry = anatomy.abdomen
    base_y, length = abdomen_y + abdomen_ry - 0.04, anatomy.tail_length
    if value == "round":
        disk_r = 0.6 * length
        return [(_segment((0, base_y), (0, base_y + length - disk_r), _TAIL_WIDTH), "body"),
                (_ellipse((0, base_y + length - disk_r), disk_r, disk_r, n=20), "body")]
    # long prongs spread wide: the fork reaches pixels the round tail never covers
    return _both_sides(_segment((0, base_y), (1.3 * length, base_y + 1.2 * length), _TAIL_WIDTH), "body")


def _spots(anatomy: _Anatomy, value: str) -> Marks:
    return [mark for center in anatomy.spots
            for mark in _both_sides(_ellipse(center, anatomy.spot_radius, anatomy.spot_radius, n=16), "spots")]


def _forewing_part(anatomy: _Anatomy, start: float, end: float) -> Points:
    """The right forewing between two fractions of its root-to-apex axis."""
    root, apex = np.asarray(anatomy.forewing_axis, float)
    along = (apex - root) / np.sum((apex - root) ** 2)
    return _strip(anatomy.forewing, along, root @ along + start, root @ along + end)


def _band(anatomy: _Anatomy, value: str) -> Marks:
    return _both_sides(_forewing_part(anatomy, *_BAND_SPAN), value)


def _tip(anatomy: _Anatomy, value: str) -> Marks:
    return _both_sides(_forewing_part(anatomy, *_TIP_SPAN), "tip")


def _collar(anatomy: _Anatomy, value: str) -> Marks:
    _, y, _, ry = anatomy.thorax
    return [(_strip(_oval(anatomy.thorax), (0, 1), y - 0.7 * ry, y - 0.1 * ry), "collar")]


def _stripes(anatomy: _Anatomy, value: str) -> Marks:
    _, y, _, ry = anatomy.abdomen
    starts = np.arange(y - ry + 0.2, y + ry - 0.06 - _STRIPE_WIDTH, _STRIPE_PERIOD)
    return [(_strip(_oval(anatomy.abdomen), (0, 1), start, start + _STRIPE_WIDTH), "stripes") for start in starts]


_MARKS: dict[str, Callable[[_Anatomy, str], Marks]] = {
    "crest": _crest, "antenna": _antenna, "collar": _collar, "wing_band": _band, "wing_tip": _tip,
    "wing_spots": _spots, "body_texture": _stripes, "tail": _tail,
}
"""How each trait of the catalog draws a value (only called for values that are drawn)."""


@cache
def _organism(plan: Plan, values: tuple[tuple[str, ...], ...]) -> tuple[_Shape, ...]:
    """The organism's polygons in drawing order; ``values[i]`` are the values of trait i to draw.

    One value per trait draws a specimen; all values of every trait draw the region any value could
    cover, which is what an occluder must leave mostly visible. Cached: a species' polygons never
    change, only the pose they are drawn in.
    """
    anatomy = _ANATOMY[plan]

    def traits(*names: str) -> list[_Shape]:
        return [_Shape(points, color, trait_label(index))
                for index, trait in enumerate(TRAITS) if trait.name in names
                for value in values[index] if trait.is_drawn(value)
                for points, color in _MARKS[trait.name](anatomy, value)]

    def wings(points: Points) -> list[_Shape]:
        return [_Shape(side, "wing", BODY_LABEL, outlined=True) for side in (points, _mirror(points))]

    head_x, head_y, head_r = anatomy.head
    # Appendages first so the body covers their roots; wing markings after their wing; the body
    # over the wings; a marking on a body part after that part, and the head last.
    return (
        *traits("antenna", "crest", "tail"),
        *wings(anatomy.hindwing), *traits("wing_spots"),
        *wings(anatomy.forewing), *traits("wing_band", "wing_tip"),
        _Shape(_oval(anatomy.abdomen), "body", BODY_LABEL), *traits("body_texture"),
        _Shape(_oval(anatomy.thorax), "body", BODY_LABEL), *traits("collar"),
        _Shape(_ellipse((head_x, head_y), head_r, head_r, n=20), "body", BODY_LABEL),
    )


# -- pose and drawing ------------------------------------------------------------------------------


def _pose(shapes: Sequence[_Shape], size: int, rng: np.random.Generator) -> np.ndarray:
    """A (2, 3) affine map from canonical units to final-image pixels (pixel centres at integers),
    keeping the whole organism inside the image."""
    angle = np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    unit = rng.uniform(*UNIT_RANGE) * size
    squash = rng.uniform(*SQUASH_RANGE)
    c, s = np.cos(angle), np.sin(angle)
    linear = np.array([[c, -s], [s, c]]) @ np.diag([squash * unit, unit])
    points = np.concatenate([shape.points for shape in shapes]) @ linear.T
    low, high = points.min(axis=0), points.max(axis=0)
    # shrink what would not fit (a wide pose at a large scale), then place it anywhere it fits
    fit = min(1.0, (size - 4.0) / float(np.max(high - low)))
    linear, low, high = linear * fit, low * fit, high * fit
    offset = np.array([rng.uniform(1.0 - lo, size - 2.0 - hi) for lo, hi in zip(low, high, strict=True)])
    return np.concatenate([linear, offset[:, None]], axis=1)


def _to_pixels(points: Points, transform: np.ndarray) -> list[float]:
    return (points @ transform[:, :2].T + transform[:, 2]).ravel().tolist()


# From final-image pixels to the supersampled canvas, whose pixels k*S .. k*S+S-1 make final pixel k.
_TO_HIRES = np.array([[SUPERSAMPLE, 0, (SUPERSAMPLE - 1) / 2], [0, SUPERSAMPLE, (SUPERSAMPLE - 1) / 2]])


def _then(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The (2, 3) affine map applying ``first`` and then ``second``."""
    composed = second[:, :2] @ first
    composed[:, 2] += second[:, 2]
    return composed


def _draw_labels(shapes: Sequence[_Shape], transform: np.ndarray, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), BACKGROUND_LABEL)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        if len(shape.points) >= 3:
            draw.polygon(_to_pixels(shape.points, transform), fill=shape.label)
    return np.asarray(canvas)


def _footprint(shapes: Sequence[_Shape], transform: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: every final pixel that one of ``shapes`` touches, drawn at the final size
    (as the label map is) or at the supersampled size the image is drawn at (anti-aliased edges)."""
    side = size * SUPERSAMPLE
    canvas = Image.new("1", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        if len(shape.points) >= 3:
            draw.polygon(_to_pixels(shape.points, _then(transform, _TO_HIRES)), fill=1)
    supersampled = np.asarray(canvas).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).any(axis=(1, 3))
    return supersampled | (_draw_labels(shapes, transform, size) > 0)


def _covered(points: Points, size: int) -> np.ndarray:
    """(size, size) bool: the final pixels a polygon (final-pixel coordinates) covers whole at the
    supersampled size, so nothing under it shows through an anti-aliased edge."""
    side = size * SUPERSAMPLE
    canvas = Image.new("1", (side, side), 0)
    ImageDraw.Draw(canvas).polygon(_to_pixels(points, _TO_HIRES), fill=1)
    return np.asarray(np.asarray(canvas).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).all(axis=(1, 3)), dtype=bool)


def _jitter(rng: np.random.Generator, colors: Sequence[Color], amount: float) -> Color:
    base = np.asarray(colors[int(rng.integers(len(colors)))], np.float64)
    r, g, b = np.clip(base + rng.uniform(-amount, amount, 3), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _palette(rng: np.random.Generator) -> dict[str, Color]:
    palette = {key: _jitter(rng, [color], _TRAIT_COLOR_JITTER) for key, color in _TRAIT_COLORS.items()}
    palette["wing"] = _jitter(rng, _WING_COLORS, 15)
    palette["body"] = _jitter(rng, _BODY_COLORS, 10)
    return palette


def _smooth_noise(rng: np.random.Generator, cells: int, channels: int, side: int) -> np.ndarray:
    """(side, side, channels) noise, smooth over ``side / cells`` pixels."""
    coarse = rng.standard_normal((channels, cells, cells)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(layer, mode="F").resize((side, side), Image.Resampling.BICUBIC))
                     for layer in coarse], axis=-1)


def _ground(rng: np.random.Generator, side: int) -> Image.Image:
    """Textured ground with grass strokes and stones: colours and shapes no trait uses."""
    base = np.asarray(_jitter(rng, _GROUND_COLORS, 15), np.float32)
    shade = 1 + 0.14 * _smooth_noise(rng, 4, 1, side) + 0.07 * _smooth_noise(rng, 16, 1, side)
    tint = 4 * _smooth_noise(rng, 4, 3, side)
    canvas = Image.fromarray(np.clip(base * shade + tint, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 5)):
        center = rng.uniform(0, side, 2)
        radius = rng.uniform(0.03, 0.1) * side
        stone = _ellipse(center, radius, radius * rng.uniform(0.5, 1), rng.uniform(0, 180), n=20)
        draw.polygon(stone.ravel().tolist(), fill=_jitter(rng, _STONE_COLORS, 15))
    for _ in range(rng.integers(6, 30)):
        start = rng.uniform(0, side, 2)
        angle = np.radians(rng.uniform(-60, 60))
        length = rng.uniform(0.1, 0.35) * side
        bend = rng.uniform(-0.15, 0.15) * length
        middle = start + 0.5 * length * np.array([np.sin(angle), -np.cos(angle)]) + [bend, 0]
        end = start + length * np.array([np.sin(angle), -np.cos(angle)]) + [2 * bend, 0]
        # 0.6 to 1.6 pixels wide in a 96-pixel image, in proportion at other sizes
        draw.line(np.stack([start, middle, end]).ravel().tolist(), fill=_jitter(rng, _GRASS_COLORS, 15),
                  width=max(1, round(rng.uniform(0.6, 1.6) * side / 96)), joint="curve")
    return canvas


def _occluder(rng: np.random.Generator, center: np.ndarray, size: int, shrink: float) -> tuple[Points, Color]:
    """A leaf, stone or twig around ``center`` (final-image pixels), scaled by ``shrink``."""
    kind = rng.integers(3)
    angle = rng.uniform(0, 180)
    if kind == 2:
        length, width = rng.uniform(0.5, 0.9) * size * shrink, rng.uniform(0.035, 0.06) * size * shrink
        return _ellipse(center, length / 2, width / 2, angle, n=8), _jitter(rng, _TWIG_COLORS, 12)
    radius = rng.uniform(0.1, 0.2) * size * shrink
    aspect = rng.uniform(0.3, 0.6) if kind == 0 else rng.uniform(0.6, 1.0)
    colors = _LEAF_COLORS if kind == 0 else _STONE_COLORS
    return _ellipse(center, radius, radius * aspect, angle, n=24), _jitter(rng, colors, 12)


def _place_occluder(rng: np.random.Generator, organism: np.ndarray, regions_hw: np.ndarray, n_allowed_pixels: int,
                    ) -> tuple[Points, Color, np.ndarray] | None:
    """An occluder over the organism that hides little of it and of every trait region, or None.

    ``organism`` is where its centre may fall and ``n_allowed_pixels`` what ``MAX_OCCLUDED_FRACTION``
    applies to: the organism itself, or for twins the species and its look-alike drawn together
    and what they share, so the choice is the same for both and bounds what it hides of either.
    ``regions_hw`` labels what any value of every trait could cover. Returns the polygon
    (final-image pixels), its colour and its (h, w) boolean mask.
    """
    size = regions_hw.shape[0]
    organism_pixels = np.flatnonzero(organism)
    row, column = np.unravel_index(organism_pixels[rng.integers(len(organism_pixels))], organism.shape)
    center = np.array([column, row], float)
    region_labels = np.unique(regions_hw[regions_hw > BODY_LABEL])
    region_sizes = np.bincount(regions_hw.ravel(), minlength=256)
    shrink = 1.0
    for _ in range(6):
        points, color = _occluder(rng, center, size, shrink)
        canvas = Image.new("1", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(points.ravel().tolist(), fill=1)
        mask = np.asarray(canvas)
        hidden = np.bincount(regions_hw[mask], minlength=256)
        if (np.count_nonzero(mask & organism) <= MAX_OCCLUDED_FRACTION * n_allowed_pixels
                and np.all(hidden[region_labels] <= MAX_REGION_OCCLUSION * region_sizes[region_labels])):
            return points, color, mask
        shrink *= 0.7
    return None


def _light(image_hw3: np.ndarray, rng: np.random.Generator, pivot: float | None) -> np.ndarray:
    """Global lighting, a light gradient, a weak colour cast, contrast about ``pivot`` (the
    image's mean when None) and sensor noise."""
    size = image_hw3.shape[0]
    image = image_hw3.astype(np.float32)
    centre = image.mean() if pivot is None else pivot
    image = (image - centre) * rng.uniform(*CONTRAST_RANGE) + centre
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * np.arange(size)[None, :] + np.sin(direction) * np.arange(size)[:, None]) / size
    gradient = 1 + rng.uniform(0, MAX_LIGHT_GRADIENT) * 2 * (ramp - ramp.mean())
    gain = rng.uniform(*BRIGHTNESS_RANGE) * rng.uniform(*CHANNEL_GAIN_RANGE, 3).astype(np.float32)
    image = image * gradient[:, :, None] * gain
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, MAX_NOISE_SIGMA)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_specimen(species: Species, size: int, rng: np.random.Generator, twin_safe: bool = False) -> Specimen:
    """Draw one specimen of ``species`` in a ``size`` x ``size`` scene; every random choice comes
    from ``rng``, so the result is a function of the generator's state.

    By default the organism is framed by its own extent, as a photographer would: the pose is
    fitted to it, the occluder placed on it and contrast pivots on the finished image. Then the
    framing carries a trace of the species (a forked tail or clubbed antennae widen the organism,
    so its species is drawn a little smaller or elsewhere on average), which a model can use.

    ``twin_safe`` removes every such trace between a species and its look-alike: the pose is
    fitted to, and the occluder placed on, the two drawn together, and contrast pivots on the
    empty scene. The two drawn from generators in the same state are then the same organism in
    the same scene, differing only inside the footprint of the trait that separates them
    (counterfactual twins, ``specimens generate --twins``).
    """
    shapes = _organism(species.plan, tuple((value,) for value in species.values))
    regions = _organism(species.plan, tuple(trait.values for trait in TRAITS))
    lookalike, separating = lookalike_of(species)
    # the species and its look-alike together: what a twin-safe pose and occluder are fitted to
    both = _organism(species.plan, tuple(tuple(dict.fromkeys(pair)) for pair in zip(species.values, lookalike.values, strict=True)))
    transform = _pose(both if twin_safe else shapes, size, rng)
    palette = _palette(rng)
    side = size * SUPERSAMPLE
    canvas = _ground(rng, side)
    pivot = float(np.asarray(canvas).mean()) if twin_safe else None
    draw = ImageDraw.Draw(canvas)
    hires = _then(transform, _TO_HIRES)
    for shape in shapes:
        if len(shape.points) >= 3:
            draw.polygon(_to_pixels(shape.points, hires), fill=palette[shape.color],
                         outline=_OUTLINE_COLOR if shape.outlined else None, width=SUPERSAMPLE)
    labels_hw = _draw_labels(shapes, transform, size)
    footprints_thw = np.stack([_footprint([shape for shape in shapes if shape.label == trait_label(index)], transform, size)
                               for index in range(len(TRAITS))])
    occluded_fraction = 0.0
    if rng.random() < OCCLUDER_PROBABILITY:
        if twin_safe:
            shared = [shape for shape in shapes if shape.label != trait_label(_TRAIT_INDEX[separating])]
            organism, n_allowed = _draw_labels(both, transform, size) > 0, int(np.count_nonzero(_draw_labels(shared, transform, size)))
        else:
            organism = labels_hw > 0
            n_allowed = int(np.count_nonzero(organism))
        placed = _place_occluder(rng, organism, _draw_labels(regions, transform, size), n_allowed)
        if placed is not None:
            points, color, mask_hw = placed
            occluded_fraction = float(np.count_nonzero(mask_hw & (labels_hw > 0)) / np.count_nonzero(labels_hw))
            draw.polygon(_to_pixels(points, _TO_HIRES), fill=color)
            labels_hw = np.where(mask_hw, BACKGROUND_LABEL, labels_hw).astype(np.uint8)
            footprints_thw &= ~(_covered(points, size) & mask_hw)
    image_hw3 = _light(np.asarray(canvas.reduce(SUPERSAMPLE)), rng, pivot)
    return Specimen(image_hw3, labels_hw, occluded_fraction, footprints_thw)
