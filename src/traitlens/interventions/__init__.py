"""Test: edit SAE latents inside a model's forward pass and measure what changes."""

from traitlens.interventions.attribution import (
    AttributionConfig,
    LatentAttribution,
    comparative_attribution,
    latent_attribution,
)
from traitlens.interventions.edits import InterventionError, LatentEdit, apply_edits, latent_edit, latent_patch
from traitlens.interventions.steer import (
    SteerConfig,
    SteeredPredictions,
    change_rates,
    steer,
    steer_batch,
    steer_source,
)

__all__ = [
    "AttributionConfig",
    "InterventionError",
    "LatentAttribution",
    "LatentEdit",
    "SteerConfig",
    "SteeredPredictions",
    "apply_edits",
    "change_rates",
    "comparative_attribution",
    "latent_attribution",
    "latent_edit",
    "latent_patch",
    "steer",
    "steer_batch",
    "steer_source",
]
