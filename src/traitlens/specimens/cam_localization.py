"""CAM methods against their Finer-CAM versions on look-alike pairs, scored in memory.

Every benchmark image whose species has a look-alike is explained for its true species, once
plainly and once comparatively (Finer-CAM: ``y_species - gamma * y_reference``) for each way of
choosing the reference:

- ``lookalike`` — the species' look-alike, known from the benchmark (what a user who knows the
  pair would pass);
- ``closest`` — per image, the class with the highest logit other than the target
  (``traitlens explain --refs auto --n-refs 1``), which need not be the look-alike;
- ``confusion`` — per class, the class the model confuses it with most on held-out images
  (:func:`confusion_references`), chosen once, before the scored images are seen.

Each map is scored at pixel resolution against the distinguishing-trait mask
(:func:`traitlens.specimens.localization.localization_scores`) and on the model's own patch grid
(:mod:`traitlens.specimens.patch_scores`): mass on the trait's patches, patch AP, pointing with a
one-patch tolerance, and, when oracle maps are given (``specimens score reliance``), the rank
correlation with the oracle. Two more rows frame the table: ``chance`` and ``oracle`` (the
oracle map scored as a heatmap, the ceiling for a map of this model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from traitlens.backbones import Backbone
from traitlens.data import ImageSource
from traitlens.data.batches import pixel_batches
from traitlens.explain.config import DEFAULT_GAMMA
from traitlens.explain.contrast import auto_references
from traitlens.explain.maps import CamResult, compute_cams, default_layer
from traitlens.explain.methods import method_by_name
from traitlens.explain.trait_ranking import rank_heads
from traitlens.specimens.benchmark import Benchmark, ScoringError
from traitlens.specimens.flips import lookalike_map
from traitlens.specimens.localization import localization_scores
from traitlens.specimens.oracle import cell_bounds
from traitlens.specimens.patch_scores import pool_to_grid, score_patch_maps, trait_patches

REFERENCE_CHOICES = ("lookalike", "closest", "confusion")
PIXEL_COLUMNS = ["mass_inside", "pointing_game"]
PATCH_COLUMNS = ["patch_mass", "patch_ap", "patch_pointing", "oracle_spearman"]
LOCALIZATION_COLUMNS = ["method", "n_images", *PIXEL_COLUMNS, *PATCH_COLUMNS]
_DISPLAY_NAMES = {"cam": "CAM", "grad-cam": "Grad-CAM", "grad-cam++": "Grad-CAM++", "hirescam": "HiResCAM",
                  "layercam": "LayerCAM", "score-cam": "Score-CAM", "prompt-cam": "Prompt-CAM", "intr": "INTR"}
TOP_HEAD = "top head"
"""The variant of a class-query method scored on each image's top-ranked attention head alone
(Prompt-CAM's greedy head blurring) instead of the mean of the heads."""
_REFERENCE_LABELS = {"lookalike": "look-alike", "closest": "closest logit", "confusion": "most confused"}


def display_name(method: str) -> str:
    """A CAM method as papers spell it (``grad-cam`` → Grad-CAM)."""
    return _DISPLAY_NAMES.get(method_by_name(method).name, method)


@dataclass(frozen=True)
class LookalikeLocalization:
    rows: list[dict[str, Any]]
    """One per method and variant, then ``chance`` and (with oracle maps) ``oracle``."""
    layer: str
    grid_hw: tuple[int, int]
    reference_agreement: dict[str, float]
    """Per reference choice other than ``lookalike``: the share of scored images whose reference
    is the look-alike."""

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "layer": self.layer, "grid_hw": list(self.grid_hw),
                "reference_agreement": self.reference_agreement}


@torch.no_grad()
def confusion_references(backbone: Backbone, source: ImageSource, class_index: Mapping[str, int],
                         batch_size: int = 64) -> dict[int, int]:
    """Per class with labelled images in ``source``: the other class the model gives the most
    probability on them (its mean softmax over the class's images), i.e. the class it confuses it
    with most. ``source`` must be held out from the images the references are then used on."""
    n_classes = len(class_index)
    probability_sum = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    n_images_c = torch.zeros(n_classes, dtype=torch.int64)
    labels = [class_index.get(str(record.label)) for record in source.records]
    usable = [index for index, label in enumerate(labels) if label is not None]
    if not usable:
        raise ScoringError(f"no image of {source.root} is labelled with a class of the model")
    for batch in pixel_batches(source, backbone.preprocess, batch_size, usable):
        probabilities = backbone.forward(batch.pixels_bchw.to(backbone.device)).softmax(-1).to(torch.float64).cpu()
        for row, index in enumerate(batch.indices):
            probability_sum[labels[index]] += probabilities[row]
            n_images_c[labels[index]] += 1
    probability_sum.fill_diagonal_(-1.0)  # a class is never its own reference
    return {int(c): int(probability_sum[c].argmax()) for c in torch.nonzero(n_images_c).flatten()}


def _cells_to_pixels(map_gg: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """A (gh, gw) map spread over the pixels of each cell (the cells of :func:`cell_bounds`)."""
    rows, cols = cell_bounds(image_hw[0], map_gg.shape[0]), cell_bounds(image_hw[1], map_gg.shape[1])
    row_of_y = np.repeat(np.arange(len(rows)), [r1 - r0 for r0, r1 in rows])
    col_of_x = np.repeat(np.arange(len(cols)), [c1 - c0 for c0, c1 in cols])
    return map_gg[row_of_y[:, None], col_of_x[None, :]]


def score_maps(pixel_maps: list[np.ndarray], patch_maps_ngg: torch.Tensor, masks: list[np.ndarray],
            patches_ngg: torch.Tensor, oracle_ngg: torch.Tensor | None) -> dict[str, Any]:
    pixel = localization_scores(np.stack(pixel_maps), np.stack(masks))
    patch = score_patch_maps(patch_maps_ngg, patches_ngg, oracle_ngg, tolerance=1)
    return {"n_images": pixel["n_images"], "mass_inside": pixel["mass_inside"], "pointing_game": pixel["pointing_game"],
            "patch_mass": patch.mass_inside, "patch_ap": patch.patch_ap, "patch_pointing": patch.pointing_game,
            "oracle_spearman": patch.rank_correlation}


def _top_head_maps(backbone: Backbone, pixels_bchw: torch.Tensor, result: CamResult, species_b: torch.Tensor) -> torch.Tensor:
    """Each image's map of the attention head ranked first for its species by greedy head blurring."""
    assert backbone.class_attention is not None and result.head_maps_bkhw is not None
    n_heads = result.head_maps_bkhw.shape[1]
    pixels_bchw = pixels_bchw.to(backbone.device)
    top = [rank_heads(backbone.class_attention, pixels_bchw[row:row + 1], int(species_b[row]), n_heads)[0][0]
           for row in range(len(pixels_bchw))]
    return result.head_maps_bkhw[torch.arange(len(top)), torch.tensor(top)]


def lookalike_localization(backbone: Backbone, source: ImageSource, benchmark: Benchmark,
                           methods: Sequence[str] = ("grad-cam", "layercam"), gamma: float = DEFAULT_GAMMA,
                           layer: str | int | None = None, batch_size: int = 32, show_progress: bool = False,
                           references: Sequence[str] = ("lookalike",), confusion: Mapping[int, int] | None = None,
                           oracle: Mapping[str, np.ndarray] | None = None) -> LookalikeLocalization:
    """Score each method plainly and with Finer-CAM for each choice in ``references`` (see the
    module); ``confusion`` (class -> reference class) is needed for ``"confusion"``; ``oracle``
    (benchmark source -> (gh, gw) oracle map on the layer's grid) adds the oracle correlation."""
    unknown = [choice for choice in references if choice not in REFERENCE_CHOICES]
    if unknown:
        raise ScoringError(f"reference choices must be among {', '.join(REFERENCE_CHOICES)}, got {', '.join(unknown)}")
    if "confusion" in references and confusion is None:
        raise ScoringError("the 'confusion' reference needs the confusion references of held-out images")
    class_index = benchmark.class_index(backbone.class_names, backbone.spec)
    lookalike_of = lookalike_map(benchmark, list(class_index))
    layer_name = backbone.resolve_layer(layer) if layer is not None else default_layer(backbone)
    grid_hw = backbone.layer(layer_name).layout.grid_hw
    if grid_hw is None:
        raise ScoringError(f"layer {layer_name} of {backbone.spec} has no patch grid to score maps on")
    sources = [benchmark.resolve(record.source) for record in source.records]
    images = [index for index, name in enumerate(sources) if benchmark.distinguishing_traits(benchmark.image_species[name])]
    if not images:
        raise ScoringError(f"no image of {source.root} belongs to a species with a look-alike")
    if oracle is not None:
        absent = [sources[index] for index in images if sources[index] not in oracle]
        if absent:
            raise ScoringError(f"no oracle map for {len(absent)} scored images (first: {absent[0]})")
    # a class-query head's maps (Prompt-CAM, INTR) take no reference: their mean and their top head instead
    variants = [(method, choice) for method in methods for choice in
                ((None, TOP_HEAD) if method_by_name(method).evidence == "class_attention" else (None, *references))]
    pixel_maps: list[list[np.ndarray]] = [[] for _ in variants]
    patch_maps: list[list[torch.Tensor]] = [[] for _ in variants]
    masks: list[np.ndarray] = []
    agree = {choice: 0 for choice in references if choice != "lookalike"}
    progress = tqdm(total=len(images), unit="img", desc="localization", disable=not show_progress)
    for batch in pixel_batches(source, backbone.preprocess, batch_size, images):
        species_b = torch.tensor([class_index[benchmark.image_species[sources[index]]] for index in batch.indices])
        lookalike_b = torch.tensor([lookalike_of[int(species)] for species in species_b])
        refs: dict[str, Any] = {"lookalike": lookalike_b[:, None], "confusion": None if confusion is None else
                torch.tensor([[confusion.get(int(species), lookalike_of[int(species)])] for species in species_b])}
        result: CamResult | None = None
        for v, (method, choice) in enumerate(variants):
            if choice == TOP_HEAD:
                assert result is not None
                maps_bhw = _top_head_maps(backbone, batch.pixels_bchw, result, species_b)  # the mean's result, just before
            else:
                refs_bk = None if choice is None else refs.get(choice, "auto")
                class_query = method_by_name(method).evidence == "class_attention"
                result = compute_cams(backbone, batch.pixels_bchw, method, species_b, refs_bk, gamma, 1,
                                      None if class_query else layer_name)
                maps_bhw = result.maps_bhw
            if choice == "closest" and "closest" not in refs and result is not None:  # the first method's references serve all
                refs["closest"] = auto_references(result.logits_bc, species_b.to(result.logits_bc.device), 1).cpu()
            patch_maps[v].append(pool_to_grid(maps_bhw.cpu(), grid_hw))
            for row, image in enumerate(batch.images):
                pixel_maps[v].append(backbone.preprocess.unmap(maps_bhw[row], (image.height, image.width)).cpu().numpy())
        for choice in agree:
            agree[choice] += int((refs[choice][:, 0].cpu() == lookalike_b).sum())
        masks += [benchmark.distinguishing_mask(sources[index]) for index in batch.indices]
        progress.update(len(batch.indices))
    progress.close()
    # the same masks as the pixel scores, brought into the model's input geometry, then onto its grid
    patches_ngg = torch.from_numpy(np.stack([trait_patches(backbone.preprocess.mask(mask_hw.astype(np.int64)) == 1, grid_hw)
                                             for mask_hw in masks]))
    oracle_ngg = None if oracle is None else torch.from_numpy(np.stack([oracle[sources[index]] for index in images])).to(torch.float64)
    if oracle_ngg is not None and tuple(oracle_ngg.shape[1:]) != grid_hw:
        raise ScoringError(f"oracle maps are {tuple(oracle_ngg.shape[1:])} but layer {layer_name} has a {grid_hw} grid; "
                           "score reliance on the same layer")
    rows = []
    for v, (method, choice) in enumerate(variants):
        name = display_name(method)
        if choice == TOP_HEAD:
            label = f"{name} (top-ranked head)"
        elif choice is None:
            label = f"{name} (mean of heads)" if method_by_name(method).evidence == "class_attention" else name
        else:
            label = f"Finer-CAM ({name}, γ={gamma:g}, ref: {_REFERENCE_LABELS[choice]})"
        rows.append({"method": label, **score_maps(pixel_maps[v], torch.cat(patch_maps[v]), masks, patches_ngg, oracle_ngg)})
    chance = score_patch_maps(torch.ones(patches_ngg.shape, dtype=torch.float64), patches_ngg)
    pixel_chance = float(np.mean([mask.mean() for mask in masks if mask.any()]))
    rows.append({"method": "chance", "n_images": rows[0]["n_images"], "mass_inside": pixel_chance, "pointing_game": pixel_chance,
                 "patch_mass": chance.chance_mass, "patch_ap": chance.chance_ap,
                 "patch_pointing": chance.chance_pointing, "oracle_spearman": 0.0 if oracle is not None else None})
    if oracle_ngg is not None:
        oracle_pixels = [_cells_to_pixels(oracle_ngg[i].clamp_min(0).numpy(), mask.shape) for i, mask in enumerate(masks)]
        rows.append({"method": "oracle (ceiling)", **score_maps(oracle_pixels, oracle_ngg, masks, patches_ngg, oracle_ngg)})
    agreement = {choice: count / len(images) for choice, count in agree.items()}
    return LookalikeLocalization(rows, layer_name, grid_hw, agreement)
