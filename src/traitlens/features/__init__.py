"""SAE latent analysis: what each latent fires on (``traitlens features``) and a static HTML report."""

from traitlens.features.analysis import FeaturesConfig, analyze_features, sae_weights_sha256
from traitlens.features.directory import read_features_manifest
from traitlens.features.files import FeaturesError
from traitlens.features.latents import LatentFeatures
from traitlens.features.report import write_report

__all__ = [
    "FeaturesConfig",
    "FeaturesError",
    "LatentFeatures",
    "analyze_features",
    "read_features_manifest",
    "sae_weights_sha256",
    "write_report",
]
