"""Where each file of a features directory lives, and the error its readers raise (see
:mod:`traitlens.features.analysis` for what the files hold)."""

from __future__ import annotations

from pathlib import Path

from traitlens.errors import TraitlensError

FORMAT = "traitlens.features"
VERSION = 2

MANIFEST = "features.json"
JOB = "job.json"
CHUNKS = "chunks"
COLUMNS_RECORD = "columns.json"
INDPTR = "latent_indptr.npy"
ROWS = "latent_rows.npy"
VALUES = "latent_values.npy"
STATISTICS = "latent_statistics.safetensors"


class FeaturesError(TraitlensError):
    """A features directory is missing, damaged or foreign, or its analysis cannot run as asked."""


def chunk_path(root: Path, index: int) -> Path:
    """The nonzeros of the ``index``-th chunk of consecutive tokens (deleted once assembled)."""
    return root / CHUNKS / f"{index:05d}.npz"
