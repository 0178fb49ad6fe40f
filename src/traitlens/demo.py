"""The demo on the embedded default: the specimens benchmark and the model trained on it.

``make demo`` draws specimens from a seed the model never saw, measures the embedded
``traitlens:specimens-vit`` on them, stores its last block's tokens, trains a small SAE on them,
and scores the SAE's latents against the ground-truth trait masks beside three baselines (raw
neurons, PCA, k-means). Every step resumes: run it again after an interruption.
"""

from __future__ import annotations

from pathlib import Path

from traitlens.sae import RunConfig, SAEConfig, TrainConfig, train
from traitlens.specimens.discovery import DiscoveryOptions, score_discovery
from traitlens.specimens.generate import GenerateConfig, generate
from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy
from traitlens.store import ActivationStore, ExtractConfig, extract
from traitlens.store.summary import summarize_store

DEMO_MODEL = "traitlens:specimens-vit"
DEMO_SEED = 1
"""The embedded model was trained on seed 0; the demo measures it on images it never saw."""
DEMO_IMAGES = 512
DEMO_LAYER = "-1"
SAE_EXPANSION = 8
SAE_K = 16
SAE_EPOCHS = 20


def _train_sae(acts: Path, out: Path) -> Path:
    store = ActivationStore(acts)
    layer = store.layer(-1)
    run = RunConfig(SAEConfig(d_in=layer.width, width=SAE_EXPANSION * layer.width, activation="topk", k=SAE_K), lr=1e-3)
    config = TrainConfig(acts=acts, layer=layer.name, out=out, runs=(run,), tokens=SAE_EPOCHS * store.n_images * layer.tokens_per_image,
                         batch_size=1024, warmup_steps=20, device="cpu")
    return train(config, resume=True)[0]


def run_demo(out: Path) -> str:
    """Run every step under ``out`` (resuming finished ones) and return what to print."""
    data = generate(GenerateConfig(out / "specimens", n=DEMO_IMAGES, seed=DEMO_SEED))
    accuracy = model_accuracy(AccuracyConfig(model=DEMO_MODEL, data=data / "images"))
    acts = out / "acts"
    extract(ExtractConfig(model=DEMO_MODEL, data=data, layers=(DEMO_LAYER,), out=acts, tokens="all", batch_size=64))
    sae = _train_sae(acts, out / "sae")
    discovery = score_discovery(acts, data, None, sae, out / "scores", DiscoveryOptions())
    return "\n".join([
        summarize_store(acts),
        f"{DEMO_MODEL} on {accuracy['n_images']} specimens of seed {DEMO_SEED} (it was trained on seed 0): "
        f"accuracy {accuracy['accuracy']:.1%}",
        "",
        (out / "scores" / "discovery.md").read_text().rstrip(),
        "",
        f"SAE: {sae}; scores: {out / 'scores'} ({len(discovery['rows'])} traits)",
    ])
