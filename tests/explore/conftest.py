"""The explorer on the embedded specimens ViT with a random SAE on blocks.1, the 24 specimens it
browses, and a features directory of that SAE; served on a free loopback port for HTTP and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from traitlens.explore import ExploreConfig, Explorer
from traitlens.explore.app import serving

MODEL = "traitlens:specimens-vit"


@dataclass(frozen=True)
class ExploreInputs:
    data: Path
    sae: Path
    features: Path


@pytest.fixture(scope="session")
def explore_inputs(specimens_with_sae: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ExploreInputs:
    from traitlens.features import FeaturesConfig, analyze_features
    from traitlens.store import ExtractConfig, extract

    data, sae = specimens_with_sae
    root = tmp_path_factory.mktemp("explore")
    extract(ExtractConfig(model=MODEL, data=data, layers=("blocks.1",), out=root / "acts", tokens="all", dtype="float32",
                          device="cpu"), show_progress=False)
    analyze_features(FeaturesConfig(sae=sae, acts=root / "acts", out=root / "features"))
    return ExploreInputs(data, sae, root / "features")


@pytest.fixture(scope="session")
def explorer(explore_inputs: ExploreInputs) -> Explorer:
    return Explorer(ExploreConfig(model=MODEL, sae=explore_inputs.sae, data=explore_inputs.data,
                                  features=explore_inputs.features, device="cpu"))


@pytest.fixture(scope="session")
def server(explorer: Explorer) -> Iterator[str]:
    """The app served by uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL."""
    with serving(explorer) as url:
        yield url.rstrip("/")
