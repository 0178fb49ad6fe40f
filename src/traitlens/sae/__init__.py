"""Sparse autoencoders: architectures, training, saving and loading."""

from traitlens.sae.config import ACTIVATIONS, SAEConfig
from traitlens.sae.io import load_sae, load_sae_with_config, save_sae
from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.training import RunConfig, TrainConfig, sweep, train

__all__ = ["ACTIVATIONS", "RunConfig", "SAEConfig", "SparseAutoencoder", "TrainConfig", "load_sae", "load_sae_with_config", "save_sae", "sweep", "train"]
