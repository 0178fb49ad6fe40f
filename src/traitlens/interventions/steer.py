"""``traitlens steer``: edit SAE latents inside the forward pass and measure what the model then
predicts, per image and over a dataset.

The SAE's layer is encoded, edited (:mod:`traitlens.interventions.edits`), decoded with the
reconstruction error added back, and spliced into the forward pass through ``Backbone.edit``.
Every image runs twice, clean and edited, so the change is the edit's alone. With an output
folder the run resumes batch by batch (:mod:`traitlens.progress`): each finished batch saves its
probabilities.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from traitlens.atomic import atomic_write_bytes, atomic_write_json
from traitlens.backbones import Backbone, TokenEdit, TokenSelection
from traitlens.checks import check_int
from traitlens.data import ImageSource, open_image_source
from traitlens.data.batches import pixel_batches
from traitlens.digests import files_sha256
from traitlens.heads.attach import check_head_model
from traitlens.heads.linear_head import LinearHead, head_sha256, load_head
from traitlens.interventions.edits import InterventionError, LatentEdit, latent_edit
from traitlens.interventions.setup import (
    check_counts,
    check_out_dir,
    claim_out_dir,
    config_dict,
    features_of_sae,
    load_sae_on_model,
    resolve_classes,
)
from traitlens.progress import BatchProgress, fixed_batches
from traitlens.version import __version__

FORMAT = "traitlens.steer"
EFFECT = "effect.json"
PREDICTIONS = "predictions.csv"


@dataclass(frozen=True)
class SteerConfig:
    """Which latents to edit, where, on which images. ``layer`` and ``tokens`` default to those
    the SAE was trained on; ``patches`` (row-major grid indices) restricts the edit to those patch
    tokens; ``target`` is the class whose gains and losses count as the edit's intended effect;
    ``features`` (a ``traitlens features`` directory) gives the observed maxima ``max`` edits need;
    ``patch_probe`` (a ``traitlens probe`` head) adds per-patch predictions at its layer.
    ``overwrite`` replaces an earlier ``traitlens steer`` result in ``out``."""

    model: str
    sae: Path
    data: Path
    edits: tuple[LatentEdit, ...]
    out: Path | None = None
    layer: str | None = None
    tokens: TokenSelection | None = None
    patches: tuple[int, ...] | None = None
    target: str | None = None
    features: Path | None = None
    patch_probe: Path | None = None
    weights: Path | None = None
    pretrained: bool = True
    head: Path | None = None
    """A head directory (``traitlens probe`` or ``heads train``) whose classes replace the model's own."""
    batch_size: int = 32
    max_images: int | None = None
    device: str = "auto"
    show_progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_counts(batch_size=self.batch_size, max_images=self.max_images)
        if not self.edits or not all(isinstance(edit, LatentEdit) for edit in self.edits):
            raise InterventionError(f"edits must be one or more LatentEdit, got {self.edits!r}")
        for patch in self.patches or ():
            check_int(patch, "a patch index (--patches)", InterventionError, minimum=0)


@dataclass
class SteeredPredictions:
    """Class probabilities of every image before and after the edit, (n, classes) each, and, with
    a patch probe, each patch's predicted class before and after, (n, patches) each."""

    sources: list[str]
    labels: list[str | None]
    probs_before_nc: torch.Tensor
    probs_after_nc: torch.Tensor
    patch_before_np: torch.Tensor | None = None
    patch_after_np: torch.Tensor | None = None

    @classmethod
    def concat(cls, parts: Sequence[SteeredPredictions]) -> SteeredPredictions:
        """The predictions of consecutive parts, in order."""
        patches = [part.patch_before_np for part in parts], [part.patch_after_np for part in parts]
        with_patches = all(patch is not None for patch in patches[0])
        return cls([source for part in parts for source in part.sources], [label for part in parts for label in part.labels],
                   torch.cat([part.probs_before_nc for part in parts]), torch.cat([part.probs_after_nc for part in parts]),
                   *((torch.cat(patches[0]), torch.cat(patches[1])) if with_patches else (None, None)))  # type: ignore[arg-type]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors, by field name (what a finished batch saves)."""
        tensors = {"probs_before_nc": self.probs_before_nc, "probs_after_nc": self.probs_after_nc}
        if self.patch_before_np is not None and self.patch_after_np is not None:
            tensors.update(patch_before_np=self.patch_before_np, patch_after_np=self.patch_after_np)
        return tensors

    @property
    def before_n(self) -> torch.Tensor:
        return self.probs_before_nc.argmax(1)

    @property
    def after_n(self) -> torch.Tensor:
        return self.probs_after_nc.argmax(1)


def _patch_predictions(head: LinearHead, backbone: Backbone, tokens_btd: torch.Tensor) -> torch.Tensor:
    layout = backbone.layer(head.layer).layout
    return head.logits(tokens_btd[:, layout.n_prefix :].float()).argmax(-1).cpu()


@torch.no_grad()
def steer_batch(backbone: Backbone, layer: str, edit: TokenEdit, pixels_bchw: torch.Tensor,
                patch_probe: LinearHead | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logits (b, classes) clean and with ``edit`` spliced in at ``layer``, and with a patch probe
    each patch's predicted class clean and edited (b, patches)."""
    probe_layer = [] if patch_probe is None else [patch_probe.layer]
    with backbone.capture(probe_layer) as clean_tokens:
        clean_bc = backbone.forward(pixels_bchw)
    with backbone.edit(layer, edit), backbone.capture(probe_layer) as edited_tokens:
        edited_bc = backbone.forward(pixels_bchw)
    if patch_probe is None:
        return clean_bc, edited_bc, None, None
    name = backbone.resolve_layer(patch_probe.layer)
    return (clean_bc, edited_bc, _patch_predictions(patch_probe, backbone, clean_tokens[name]),
            _patch_predictions(patch_probe, backbone, edited_tokens[name]))


@torch.no_grad()
def predicted_classes(backbone: Backbone, pixels: Sequence[torch.Tensor], layer: str | None = None,
                      edit: TokenEdit | None = None) -> torch.Tensor:
    """The predicted class (n,) of every image of the preprocessed batches ``pixels``, with ``edit``
    spliced in at ``layer`` when given: for running many edits on the same images, each image
    decoded once and its clean prediction made once."""
    predictions = []
    for pixels_bchw in pixels:
        with backbone.edit(layer, edit) if edit is not None and layer is not None else nullcontext():
            predictions.append(backbone.forward(pixels_bchw.to(backbone.device)).argmax(1).cpu())
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.int64)


def iter_steered(backbone: Backbone, layer: str, edit: TokenEdit, source: ImageSource, indices: Sequence[int],
                 batch_size: int = 32, patch_probe: LinearHead | None = None) -> Iterator[SteeredPredictions]:
    """Predictions with and without ``edit`` for the images ``indices`` of ``source``, batch by batch."""
    for batch in pixel_batches(source, backbone.preprocess, batch_size, indices):
        clean_bc, edited_bc, patch_clean, patch_edited = steer_batch(
            backbone, layer, edit, batch.pixels_bchw.to(backbone.device), patch_probe)
        records = [source.records[index] for index in batch.indices]
        yield SteeredPredictions([record.source for record in records], [record.label for record in records],
                                 clean_bc.double().softmax(1).cpu(), edited_bc.double().softmax(1).cpu(), patch_clean, patch_edited)


def steer_source(backbone: Backbone, layer: str, edit: TokenEdit, source: ImageSource, indices: Sequence[int],
                 batch_size: int = 32, patch_probe: LinearHead | None = None, show_progress: bool = False) -> SteeredPredictions:
    """Predictions with and without ``edit`` for the images ``indices`` of ``source``."""
    parts = []
    with tqdm(total=len(indices), unit="img", desc="steer", disable=not show_progress) as bar:
        for part in iter_steered(backbone, layer, edit, source, indices, batch_size, patch_probe):
            parts.append(part)
            bar.update(len(part.sources))
    return SteeredPredictions.concat(parts)


def change_rates(before_n: torch.Tensor, after_n: torch.Tensor, target: int | None = None) -> dict[str, Any]:
    """How often the predicted class changes. With a ``target`` class, the changes split in two:
    ``target_change_rate``, changes into or out of the target (what the edit is meant to do), and
    ``other_change_rate``, changes between two other classes (collateral); both over all images."""
    changed_n = before_n != after_n
    n = max(len(before_n), 1)
    rates: dict[str, Any] = {"n_images": len(before_n), "n_changed": int(changed_n.sum()), "change_rate": float(changed_n.sum()) / n}
    if target is not None:
        involves_n = (before_n == target) | (after_n == target)
        rates["target_change_rate"] = float((changed_n & involves_n).sum()) / n
        rates["other_change_rate"] = float((changed_n & ~involves_n).sum()) / n
        rates["n_to_target"] = int((changed_n & (after_n == target)).sum())
        rates["n_from_target"] = int((changed_n & (before_n == target)).sum())
    return rates


def effect_summary(predictions: SteeredPredictions, class_names: Sequence[str], target: int | None) -> dict[str, Any]:
    """Change rates, the mean change of each class's probability, the target's, and with a patch
    probe the share of patches whose prediction changed."""
    effect = change_rates(predictions.before_n, predictions.after_n, target)
    delta_c = (predictions.probs_after_nc - predictions.probs_before_nc).mean(0)
    effect["mean_probability_change"] = {name: float(delta_c[c]) for c, name in enumerate(class_names)}
    if target is not None:
        effect["target"] = class_names[target]
        effect["target_probability_change"] = float(delta_c[target])
    if predictions.patch_before_np is not None and predictions.patch_after_np is not None:
        effect["patch_change_rate"] = float((predictions.patch_before_np != predictions.patch_after_np).double().mean())
    return effect


def _observed_max(features: Path | None, sae_dir: Path, layer: str, tokens: TokenSelection) -> torch.Tensor | None:
    """Each latent's observed max from a features directory of this very SAE on the layer and
    tokens being edited."""
    if features is None:
        return None
    return torch.as_tensor(features_of_sae(features, sae_dir, layer, tokens).max_activation, dtype=torch.float32)


def _load_patch_probe(config: SteerConfig, backbone: Backbone, layer: str) -> LinearHead | None:
    if config.patch_probe is None:
        return None
    head = load_head(config.patch_probe)
    check_head_model(backbone, head, f"the patch probe at {config.patch_probe}")
    names = backbone.layer_names
    probe_layer = backbone.resolve_layer(head.layer)
    if names.index(probe_layer) < names.index(layer):
        raise InterventionError(f"the patch probe at {config.patch_probe} reads {probe_layer}, before the edited layer {layer}")
    if backbone.layer(probe_layer).layout.n_patches == 0 or backbone.layer(probe_layer).width != head.width:
        raise InterventionError(f"the patch probe at {config.patch_probe} does not fit the patch tokens of {probe_layer}")
    return head


def _predictions_csv(predictions: SteeredPredictions, class_names: Sequence[str]) -> bytes:
    """``source,before,after,label,p_before,p_after``: the predicted class before and after (the
    columns `specimens score flips` reads), the image's label, and the probability of the
    before-class before and after."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["source", "before", "after", "label", "p_before", "p_after"])
    for row, source in enumerate(predictions.sources):
        before, after = int(predictions.before_n[row]), int(predictions.after_n[row])
        writer.writerow([source, class_names[before], class_names[after], predictions.labels[row] or "",
                         f"{float(predictions.probs_before_nc[row, before]):.6f}", f"{float(predictions.probs_after_nc[row, before]):.6f}"])
    return text.getvalue().encode()


def _n_classes(backbone: Backbone) -> int:
    """How many scores the head gives: its class names, else one forward of a blank image."""
    if backbone.class_names is not None:
        return len(backbone.class_names)
    with torch.no_grad():
        return int(backbone.forward(torch.zeros(1, 3, *backbone.preprocess.size_hw, device=backbone.device)).shape[1])


def steer(config: SteerConfig) -> dict[str, Any]:
    """Run the edit over ``config.data`` (the first ``max_images``); with ``out``, write
    ``predictions.csv`` and then ``effect.json``; return the effect summary."""
    check_out_dir(config.out)
    placed = load_sae_on_model(config.model, config.sae, weights=config.weights, pretrained=config.pretrained,
                               layer=config.layer, tokens=config.tokens, device=config.device, head=config.head)
    backbone, layer, tokens = placed.backbone, placed.layer, placed.tokens
    # a head without class names (a random-init or custom one) reports class indices
    class_names = backbone.class_names or [str(index) for index in range(_n_classes(backbone))]
    target = None if config.target is None else resolve_classes([config.target], class_names, "target class")[0]
    if target is not None and not 0 <= target < len(class_names):
        raise InterventionError(f"target class {target} is out of range: the head has {len(class_names)} classes")
    edit = latent_edit(placed.sae, config.edits, backbone.layer(layer).layout, tokens, config.patches,
                       _observed_max(config.features, config.sae, layer, tokens))
    patch_probe = _load_patch_probe(config, backbone, layer)
    source = open_image_source(config.data)
    count = len(source) if config.max_images is None else min(config.max_images, len(source))
    if count == 0:
        raise InterventionError(f"no images in {config.data}")
    claim_out_dir(config.out, "steer", config.overwrite)
    progress = None if config.out is None else BatchProgress(
        config.out, "steer results", _job_identity(config, backbone, source, count, layer, tokens), InterventionError)
    finished = None if progress is None or config.out is None else progress.finished(config.out / EFFECT, FORMAT)
    if finished is not None:
        return finished
    batches = fixed_batches(count, config.batch_size)
    parts = [None if progress is None else _saved_part(progress, number, images, source, len(class_names))
             for number, images in enumerate(batches)]
    todo = [number for number, part in enumerate(parts) if part is None]
    todo_images = [index for number in todo for index in batches[number]]
    with tqdm(total=count, initial=count - len(todo_images), unit="img", desc="steer", disable=not config.show_progress) as bar:
        for number, part in zip(todo, iter_steered(backbone, layer, edit, source, todo_images, config.batch_size, patch_probe),
                                strict=True):
            if progress is not None:
                progress.save_tensors(number, part.tensors())
            parts[number] = part
            bar.update(len(part.sources))
    predictions = SteeredPredictions.concat([part for part in parts if part is not None])
    effect = {"format": FORMAT, "version": 1, "software": {"traitlens": __version__}, "config": config_dict(config),
              "layer": layer, "tokens": tokens, **effect_summary(predictions, class_names, target)}
    if config.out is not None and progress is not None:
        atomic_write_bytes(config.out / PREDICTIONS, _predictions_csv(predictions, class_names))
        effect["job"] = progress.job
        atomic_write_json(config.out / EFFECT, effect)
        progress.finish()
    return effect


def _job_identity(config: SteerConfig, backbone: Backbone, source: ImageSource, count: int, layer: str,
                  tokens: TokenSelection) -> dict[str, Any]:
    """Everything that decides the predictions; a resumed run must match it (the batch size too:
    batches are the unit it resumes from)."""
    from traitlens.features import sae_weights_sha256

    job = config_dict(config)
    for name in ("out", "overwrite", "show_progress"):
        del job[name]
    job.update(weights_fingerprint=backbone.weights_fingerprint(), sae_sha256=sae_weights_sha256(config.sae),
               dataset_fingerprint=source.fingerprint(), n_images=count, layer_used=layer, tokens_used=tokens,
               traitlens_version=__version__)
    # the paths alone would take a features folder or probe replaced in place for the same
    if config.features is not None:
        from traitlens.features.files import MANIFEST

        job["features_sha256"] = files_sha256(config.features, (MANIFEST,))
    if config.patch_probe is not None:
        job["patch_probe_sha256"] = head_sha256(config.patch_probe)
    if config.head is not None:
        job["head_sha256"] = head_sha256(config.head)
    return job


def _saved_part(progress: BatchProgress, batch: int, indices: list[int], source: ImageSource,
                n_classes: int) -> SteeredPredictions | None:
    """The predictions a finished batch saved, None when the batch is unfinished."""
    tensors = progress.load_tensors(batch)
    if tensors is None:
        return None
    probs = [tensors.get(name) for name in ("probs_before_nc", "probs_after_nc")]
    patches = [tensors.get(name) for name in ("patch_before_np", "patch_after_np")]
    if not all(p is not None and p.shape == (len(indices), n_classes) and p.dtype == torch.float64 for p in probs) \
            or (patches[0] is None) != (patches[1] is None):
        raise progress.damaged(progress.path(batch, ".safetensors"), "not the probabilities of its images")
    records = [source.records[index] for index in indices]
    return SteeredPredictions([record.source for record in records], [record.label for record in records],
                              *probs, *patches)  # type: ignore[arg-type]
