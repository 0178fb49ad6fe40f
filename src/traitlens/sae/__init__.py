"""Sparse autoencoders: architectures, training, saving and loading."""

from traitlens.sae.architectures import ARCHITECTURES, Architecture, register
from traitlens.sae.config import SAEConfig
from traitlens.sae.io import load_sae, load_sae_with_config, save_sae
from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.training import RunConfig, TrainConfig, sweep, train

__all__ = [
    "ARCHITECTURES", "Architecture", "RunConfig", "SAEConfig", "SparseAutoencoder", "TrainConfig", "load_sae",
    "load_sae_with_config", "register", "save_sae", "sweep", "train",
]
