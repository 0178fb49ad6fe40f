"""What every intervention starts from: the model, the SAE placed on its layer, checked to belong
together, and the small conversions their configs share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from traitlens.backbones import Backbone, TokenSelection, load_backbone
from traitlens.checks import check_int
from traitlens.cli_args import option_name
from traitlens.distributed import Workers
from traitlens.errors import TraitlensError
from traitlens.explain.config import ClassKey, ExplainError
from traitlens.explain.contrast import resolve_class
from traitlens.features import LatentFeatures, sae_weights_sha256
from traitlens.heads.attach import load_head_backbone
from traitlens.interventions.edits import InterventionError
from traitlens.output_folder import check_output_folder, claim_output_folder
from traitlens.sae.io import SAEProvenance, load_sae_with_config, sae_provenance
from traitlens.sae.layer import check_sae_width, sae_layer_key
from traitlens.sae.model import SparseAutoencoder
from traitlens.store.manifest import load_manifest

log = logging.getLogger(__name__)


@dataclass
class SAEOnModel:
    """A model and an SAE that reads ``tokens`` tokens of its layer ``layer``."""

    backbone: Backbone
    sae: SparseAutoencoder
    layer: str
    tokens: TokenSelection


def _trained_fingerprint(provenance: SAEProvenance) -> str | None:
    """The weights fingerprint of the model whose activations the SAE learned: recorded in its
    config since training records it, else read from its store if that is still where it was."""
    if provenance.weights_fingerprint:
        return provenance.weights_fingerprint
    if not provenance.acts:
        return None
    try:
        return load_manifest(Path(provenance.acts)).model.weights_fingerprint
    except TraitlensError:
        return None


def check_sae_model(backbone: Backbone, saved: dict[str, Any], where: Path) -> None:
    """Refuse an SAE trained on another model's activations: by weights fingerprint when it is
    known (:func:`_trained_fingerprint`), else by the model spec the SAE names."""
    provenance = sae_provenance(saved, where)
    fingerprint = _trained_fingerprint(provenance)
    if fingerprint is not None:
        if fingerprint != backbone.weights_fingerprint():
            raise InterventionError(f"the SAE at {where} was trained on activations of {provenance.model} (weights "
                                    f"{fingerprint[:12]}), not of {backbone.spec} ({backbone.weights_fingerprint()[:12]}); "
                                    "pass the same --model, --weights or --random-init")
        return
    if provenance.model is not None and provenance.model != backbone.spec:
        raise InterventionError(f"the SAE at {where} was trained on {provenance.model}, not {backbone.spec}")


def sae_layer(backbone: Backbone, sae: SparseAutoencoder, saved: dict[str, Any], where: Path, layer: str | None = None,
              tokens: TokenSelection | None = None) -> tuple[str, TokenSelection]:
    """The layer of ``backbone`` an SAE (saved at ``where``, its config ``saved``) reads and the
    tokens it reads there: ``layer`` and ``tokens`` when given, else those it was trained on."""
    layer_key = sae_layer_key(saved, where, layer, InterventionError)
    provenance = sae_provenance(saved, where)
    trained, trained_tokens = provenance.layer, provenance.tokens_kind
    resolved = backbone.layer(backbone.resolve_layer(layer_key))
    check_sae_width(sae, where, resolved.width, resolved.name, backbone.spec, InterventionError)
    if trained is not None and resolved.name != backbone.resolve_layer(trained):
        log.warning("the SAE at %s was trained on %s; it is applied to %s as asked", where, trained, resolved.name)
    selection: TokenSelection = tokens or trained_tokens or "all"
    if resolved.layout.tokens_per_image(selection) == 0 or (selection == "cls" and not resolved.layout.has_cls):
        raise InterventionError(f"layer {resolved.name} of {backbone.spec} has no {selection} tokens for the SAE to read")
    return resolved.name, selection


def load_sae_on_model(model: str, sae_dir: Path, *, weights: Path | None = None, pretrained: bool = True,
                      layer: str | None = None, tokens: TokenSelection | None = None, device: str = "auto",
                      head: Path | None = None) -> SAEOnModel:
    """Load the model (with the head saved in ``head`` as its output, when given) and the SAE on
    one device and place the SAE on its layer."""
    resolved_device = Workers(0, 1).device(device)
    backbone = load_backbone(model, weights=weights, pretrained=pretrained).to(resolved_device)
    if head is not None:
        backbone = load_head_backbone(backbone, head)
    sae, saved = load_sae_with_config(sae_dir, device=resolved_device)
    sae.eval()
    check_sae_model(backbone, saved, sae_dir)
    return SAEOnModel(backbone, sae, *sae_layer(backbone, sae, saved, sae_dir, layer, tokens))


def features_of_sae(features: Path, sae_dir: Path, layer: str, tokens: TokenSelection) -> LatentFeatures:
    """The features directory ``features``, refused unless it measured this very SAE (by its
    weights) on the layer and tokens it is used on."""
    analyzed = LatentFeatures(features)
    if analyzed.sae_sha256 != sae_weights_sha256(sae_dir):
        raise InterventionError(f"the features at {features} were computed for another SAE ({analyzed.sae}), "
                                f"not {sae_dir}")
    measured = (analyzed.layer, analyzed.tokens)
    if measured != (layer, tokens):
        raise InterventionError(f"the features at {features} measured the SAE on the {measured[1]} tokens of {measured[0]}, "
                                f"not on the {tokens} tokens of {layer} used here")
    return analyzed


def resolve_classes(keys: Sequence[ClassKey], class_names: Sequence[str] | None, what: str) -> list[int]:
    """Class names or indices -> indices, as intervention errors."""
    try:
        return [resolve_class(key, class_names, what) for key in keys]
    except ExplainError as error:
        raise InterventionError(str(error)) from error


def check_counts(**counts: int | None) -> None:
    """Refuse counts (batch sizes, image limits) that are not integers of at least 1; the keyword
    is the option's name."""
    for name, value in counts.items():
        if value is not None:
            check_int(value, option_name(name), InterventionError)


def check_out_dir(out: Path | None) -> None:
    """Refuse an output folder that is, or would sit inside, a file, before anything is loaded."""
    if out is not None:
        check_output_folder(out, InterventionError)


def claim_out_dir(out: Path | None, command: str, overwrite: bool) -> None:
    """The output policy of a resumable command (:func:`claim_output_folder`), applied once the
    request is checked and before it is computed: ``--overwrite`` clears an earlier result only for
    a request that can run; without it the command's own output is resumed or kept
    (:class:`traitlens.progress.BatchProgress`)."""
    if out is not None:
        claim_output_folder(out, command, overwrite=overwrite, resumable=True, error=InterventionError)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if is_dataclass(value):
        return str(value)
    return value


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values: paths as text, tuples as lists, nested values by ``str``."""
    return {field.name: _plain(getattr(config, field.name)) for field in fields(config)}
