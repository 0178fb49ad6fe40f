"""The demo's one-page HTML report: discovery, localization and intervention tables, linked to
the feature pages of the latents they name. Self-contained and opened from disk, like the
features report it links to; every piece of data text is escaped."""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_bytes
from traitlens.features import LatentFeatures
from traitlens.features.patch_positives import describe_positives
from traitlens.features.report_html import latent_file
from traitlens.html_pages import number_text, page
from traitlens.specimens.cam_localization import LOCALIZATION_COLUMNS
from traitlens.specimens.figures import ReportFigures

Cell = str | float | int | None


def _cell(value: Cell) -> str:
    if isinstance(value, str):
        return f"<td>{value}</td>"
    text = number_text(value) if isinstance(value, float) else ("n/a" if value is None else str(value))
    return f'<td class="num">{text}</td>'


def _table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """Cells that are ``str`` are HTML already (escaped by the caller); numbers are formatted."""
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _LatentLinks:
    """Links from the report to the feature pages of latents that have one."""

    def __init__(self, report: Path, features_index: Path) -> None:
        self.pages = features_index.parent
        self.prefix = Path(os.path.relpath(self.pages, report.parent)).as_posix()

    def __call__(self, latent: int | None, text: str | None = None) -> str:
        if latent is None:
            return "n/a"
        label = escape(text if text is not None else str(latent))
        if not (self.pages / latent_file(latent)).is_file():
            return label
        return f'<a href="{escape(self.prefix)}/{latent_file(latent)}">{label}</a>'


def _discovery(results: dict[str, Any], features: LatentFeatures, link: _LatentLinks) -> str:
    """The best AP of each feature kind per trait, the best of the row in bold, the SAE's latent
    linked, and that latent's AP for the trait on its feature page (over all the images)."""
    kinds = ("sae", "neurons", "pca", "kmeans")
    label_column = {name: column for column, name in enumerate(features.label_names)}
    rows: list[list[Cell]] = []
    for row in results["discovery"]["rows"]:
        top = max((row[kind] for kind in kinds if row[kind] is not None), default=None)
        cells = [f"<b>{number_text(row[kind])}</b>" if row[kind] is not None and row[kind] == top else number_text(row[kind])
                 for kind in kinds]
        cells[0] += f" (latent {link(row['sae feature'])})"
        latent, column = row["sae feature"], label_column.get(row["trait"])
        on_all = None if latent is None or column is None else float(features.label_ap[latent, column])
        rows.append([escape(row["trait"]), row["positives"], row["chance"], *cells, on_all])
    return _table(["trait", "positive patches", "chance", "SAE latent", "neuron", "PCA direction", "k-means centroid",
                   "SAE latent, all images"], rows)


def _localization(results: dict[str, Any]) -> str:
    rows = [[escape(row["method"]), *(row[column] for column in LOCALIZATION_COLUMNS[1:])] for row in results["localization"]]
    return _table(["method", "images", "mass inside (pixels)", "pointing game (pixels)", "mass on trait patches", "patch AP",
                   "pointing game (±1 patch)", "Spearman with oracle"], rows)


def _suppression(results: dict[str, Any], link: _LatentLinks) -> str:
    rows = []
    for row in results["suppression"]:
        latents = ", ".join(link(latent) for latent in row["latents"])
        rows.append([escape(row["pair"]), escape(row["trait"]), latents, row["n_eligible"], row["flip_rate"],
                     row["flip_rate_top_latent"], row["flip_rate_random"], row["change_rate"]])
    return _table(["pair", "trait", "trait latents", "eligible", "flip: trait latents", "flip: best latent alone",
                   "flip: matched random", "any change"], rows)


def _patching(results: dict[str, Any], link: _LatentLinks) -> str:
    rows = [[escape(row["pair"]), escape(row["trait"]), ", ".join(link(latent) for latent in results["twin_latents"].get(row["trait"], [])),
             row["n_eligible"], row["flip_rate"], row["flip_rate_random"]] for row in results["patching"]]
    return _table(["pair", "trait", "twin-difference latents", "eligible", "flip: latents patched from the twin",
                   "flip: matched random patched"], rows)


def _attribution(results: dict[str, Any], link: _LatentLinks) -> str:
    rows = []
    for row in results["attribution"]:
        top = ", ".join(link(entry["latent"], f"{entry['latent']} ({entry['attribution']:+.2f})") for entry in row["top_latents"])
        rows.append([escape(row["species"]), escape(row["lookalike"]), escape(row["trait"]), row["n_images"], top,
                     row.get("top_in_trait_latents")])
    return _table(["species", "look-alike", "trait that differs", "images", "top latents (mean attribution)",
                   "of them trait latents"], rows)


def write_demo_report(path: Path, results: dict[str, Any], features: LatentFeatures, features_index: Path,
                      figures: ReportFigures | None = None) -> Path:
    """Write ``path`` (HTML) from the demo's results, with its pictures when given; returns it."""
    figures = figures or ReportFigures()
    link = _LatentLinks(path, features_index)
    accuracy = results["accuracy"]
    discovery = results["discovery"]
    positives = features.label_positives
    all_images = "n/a" if positives is None else f"{positives.n_images:,}"
    n_alive = len(features.alive)
    index_href = escape(Path(os.path.relpath(features_index, path.parent)).as_posix())
    body = f"""
<h1>traitlens demo: which traits {escape(results['model'])} uses, where, and whether it depends on them</h1>
<p class="meta">Why this model: it is {escape(results['why'])}.</p>
<p class="meta">{results['n_images']} specimens of seed {results['seed']} (the model was trained on seed 0):
accuracy {accuracy['accuracy']:.1%}. SAE on layer {escape(results['layer'])}: {features.width} latents, {n_alive} alive.
<a href="{index_href}">Browse every latent</a> (sortable, filterable; a page per latent with its top images).</p>

<h2>1. Discover: does a single feature find each trait?</h2>
<p>Per trait, the patch-level average precision of the best single feature of each kind against the trait's
ground-truth mask, over the {discovery['n_patches']:,} patches of the {discovery['n_images_scored']:,} held-out
(odd-numbered) images; PCA and k-means were fitted on the other {discovery['n_images_fit']:,}. As everywhere in
traitlens, {escape(describe_positives(discovery['options']['min_coverage']))}. <i>chance</i> is the
share of positive patches, the AP of a random feature. Best per row in bold. The last column is the same
latent's AP for the trait on its feature page, which is over all {all_images} images with a mask, so it
differs from the held-out number by the images alone.</p>
{_discovery(results, features, link)}
{figures.discovery_chart}
{"".join(figures.discovery.values())}

<h2>2. Localize: do heatmaps land on the trait that tells look-alikes apart?</h2>
<p>Each image with a look-alike, explained for its species plainly and with Finer-CAM against its
look-alike; <i>mass inside</i> is the share of the heatmap on the distinguishing trait's pixels,
<i>pointing game</i> how often its peak lands there, <i>chance</i> the trait's share of the image.</p>
{_localization(results)}
<p>One image per pair: the trait that tells the species apart (tinted), its counterfactual twin (the same
specimen as the look-alike), Grad-CAM of its species, and Finer-CAM against its look-alike.</p>
{"".join(figures.localization.values())}

<h2>3. Test: does the model depend on the trait latents?</h2>
<p>For each look-alike pair, the {len(results['suppression'][0]['latents'])} latents that best find the pair's trait
(section 1's AP) are set to zero on every token inside the model's forward pass (the SAE's reconstruction
error is added back, so nothing else changes). <i>flip</i> is the share of correctly classified images
then classified as the look-alike. The control zeroes as many random latents, each of the same firing
rate as a trait latent.</p>
{_suppression(results, link)}
{figures.flips_chart}
<p>Two images per pair with the probabilities of the species and its look-alike before &rarr; after its trait
latents are zeroed.</p>
{"".join(figures.suppression.values())}
<p>Zeroing takes a trait away; the counterfactual twin shows the look-alike's value of it. Here each pair's
{len(results['suppression'][0]['latents'])} latents that change most between image and twin are
set, on every token, to their values on the same token of the image's twin (the rest of the token and the
reconstruction error stay): the edit that asks the model for the look-alike. The control patches as many
random latents of matched firing rate the same way.</p>
{_patching(results, link)}

<h2>4. Which latents separate each species from its look-alike?</h2>
<p>Finer-CAM's question in features: the gradient &times; activation of
<i>y<sub>species</sub> &minus; y<sub>look-alike</sub></i> on the latents, averaged over the species' images.
The last column counts how many of the top latents are among the trait latents of section 3.</p>
{_attribution(results, link)}
"""
    atomic_write_bytes(path, page("traitlens demo report", body).encode())
    return path
