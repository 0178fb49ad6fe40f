"""Intervention: how often an edit turns a species into its look-alike.

Any tool that edits a model (a steered SAE latent, a masked image, a pruned head) can be scored:
it writes a CSV with one row per benchmark image, ``source,before,after``, the predicted species
before and after the edit, and :func:`score_flips` counts the flips against the ground truth.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from traitlens.atomic import atomic_write_json
from traitlens.errors import DataError
from traitlens.output_folder import check_output_folder
from traitlens.specimens.average_precision import ArrayOrTensor
from traitlens.specimens.benchmark import Benchmark, ScoringError, read_benchmark
from traitlens.tables import markdown_table, write_text

PREDICTION_COLUMNS = ("source", "before", "after")


def lookalike_flip_rate(pred_before_n: ArrayOrTensor, pred_after_n: ArrayOrTensor, species_n: ArrayOrTensor,
                        lookalike_of: Mapping[int, int]) -> dict[str, Any]:
    """How often an edit turns a correct prediction into the species' look-alike.

    Eligible images: their species has a look-alike (a key of ``lookalike_of``) and the prediction
    before the edit was right. Among them, ``flip_rate`` is the share predicted as the look-alike
    after the edit and ``change_rate`` the share predicted as any other class; rates are None
    without eligible images.
    """
    before_n, after_n, species = (torch.as_tensor(values).to(torch.int64) for values in (pred_before_n, pred_after_n, species_n))
    if not before_n.ndim == after_n.ndim == species.ndim == 1 or not len(before_n) == len(after_n) == len(species):
        raise ScoringError(f"predictions before, after and species must be (n,) each, got {tuple(before_n.shape)}, "
                           f"{tuple(after_n.shape)}, {tuple(species.shape)}")
    target_n = torch.full_like(species, -1)
    for source, lookalike in lookalike_of.items():
        target_n[species == source] = lookalike
    eligible_n = (target_n >= 0) & (before_n == species)
    n_eligible = int(eligible_n.sum())
    n_flipped = int((eligible_n & (after_n == target_n)).sum())
    n_changed = int((eligible_n & (after_n != species)).sum())
    return {"n_images": len(species), "n_eligible": n_eligible, "n_flipped": n_flipped, "n_changed": n_changed,
            "flip_rate": n_flipped / n_eligible if n_eligible else None,
            "change_rate": n_changed / n_eligible if n_eligible else None}


def lookalike_map(benchmark: Benchmark, class_names: Sequence[str]) -> dict[int, int]:
    """Class index -> its look-alike's class index, both ways for each pair. A species in several
    pairs keeps the first listed in ``traits.json``."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({name for pair in benchmark.lookalikes for name in (pair.a, pair.b)} - set(index))
    if unknown:
        raise DataError(f"look-alike species that are not classes of the model: {', '.join(unknown[:5])}")
    mapping: dict[int, int] = {}
    for pair in benchmark.lookalikes:
        mapping.setdefault(index[pair.a], index[pair.b])
        mapping.setdefault(index[pair.b], index[pair.a])
    return mapping


def read_predictions(path: Path, benchmark: Benchmark) -> list[tuple[str, str, str]]:
    """Rows (benchmark image, species before, species after) of a predictions CSV; DataError when
    it cannot be read, lacks a column or a value, names an image twice, or names an image or a
    class the benchmark does not have. Sources are read as :meth:`Benchmark.resolve` reads them,
    so a CSV of ``traitlens steer --data DIR/images/<species>`` fits the benchmark ``DIR``."""
    species = set(benchmark.image_species.values())
    rows: list[tuple[str, str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in PREDICTION_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"predictions {path} lack the column(s) {', '.join(missing)}; expected a CSV with "
                                f"header {','.join(PREDICTION_COLUMNS)}")
            for row in reader:
                source, before, after = (row[column] for column in PREDICTION_COLUMNS)
                if not all(isinstance(value, str) and value for value in (source, before, after)):
                    raise DataError(f"predictions {path} line {reader.line_num}: source, before and after must all be given")
                try:
                    rows.append((benchmark.resolve(source), before, after))
                except DataError as error:
                    raise DataError(f"predictions {path} line {reader.line_num}: {error}") from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read predictions {path}: {error}") from error
    seen: set[str] = set()
    for source, _, _ in rows:
        if source in seen:
            raise DataError(f"predictions {path} name image {source} twice")
        seen.add(source)
    unknown = sorted({name for _, before, after in rows for name in (before, after)} - species)
    if unknown:
        raise DataError(f"predictions {path} name classes that are not species of the benchmark: "
                        f"{', '.join(repr(name) for name in unknown[:5])}")
    if not rows:
        raise DataError(f"predictions {path} hold no rows")
    return rows


@dataclass(frozen=True)
class FlipsConfig:
    """``specimens score flips``: the predictions CSV of an edit, the benchmark ``data`` and the folder ``out``."""

    predictions: Path
    data: Path
    out: Path


def score_flips(config: FlipsConfig) -> dict[str, Any]:
    """Flip rates of the edit whose predictions ``predictions`` holds (see the module docstring),
    per look-alike pair and over all of them; writes ``out/flips.json`` and ``out/flips.md``
    (written into, not claimed: :func:`traitlens.specimens.benchmark.claim_score_folder`)."""
    predictions, data, out = config.predictions, config.data, config.out
    check_output_folder(out, ScoringError)
    benchmark = read_benchmark(data)
    rows = read_predictions(predictions, benchmark)
    class_names = sorted(set(benchmark.image_species.values()))
    index = {name: i for i, name in enumerate(class_names)}
    lookalike_of = lookalike_map(benchmark, class_names)
    species_n = torch.tensor([index[benchmark.image_species[source]] for source, _, _ in rows])
    before_n = torch.tensor([index[before] for _, before, _ in rows])
    after_n = torch.tensor([index[after] for _, _, after in rows])
    table = []
    for pair in benchmark.lookalikes:
        in_pair_n = (species_n == index[pair.a]) | (species_n == index[pair.b])
        pair_map = {index[pair.a]: index[pair.b], index[pair.b]: index[pair.a]}
        table.append({"pair": f"{pair.a} / {pair.b}", "trait": pair.trait,
                      **lookalike_flip_rate(before_n[in_pair_n], after_n[in_pair_n], species_n[in_pair_n], pair_map)})
    table.append({"pair": "all", "trait": "", **lookalike_flip_rate(before_n, after_n, species_n, lookalike_of)})
    result = {"predictions": str(predictions), "data": str(data), "rows": table}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "flips.json", result)
    write_text(out / "flips.md", "\n".join([
        "# Look-alike flips", "",
        f"Predictions `{predictions}` before and after an edit. Eligible images were predicted right before it; "
        "`flip_rate` is the share of them predicted as the look-alike after it, `change_rate` as any other species.", "",
        markdown_table(table, ["pair", "trait", "n_eligible", "n_flipped", "flip_rate", "change_rate"]),
    ]))
    return result
