"""``traitlens features``: analyze an SAE's latents on a store, then write the HTML report
(see :mod:`traitlens.features.analysis` and :mod:`traitlens.features.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from traitlens.cli_args import add_device_arg, add_overwrite_arg, positive_float, positive_int
from traitlens.features.patch_positives import DEFAULT_MIN_COVERAGE


def _run_features(args: argparse.Namespace) -> int:
    from traitlens.features.analysis import FeaturesConfig, analyze_features
    from traitlens.features.latents import LatentFeatures
    from traitlens.features.report import write_report

    out = analyze_features(FeaturesConfig(sae=args.sae, acts=args.acts, out=args.out, layer=args.layer, top_k=args.top_k,
                                          batch_size=args.batch_size, chunk_tokens=args.chunk_tokens, device=args.device,
                                          min_coverage=args.min_coverage, overwrite=args.overwrite))
    features = LatentFeatures(out)
    summary = features.summary
    print(f"latents of {args.sae} on layer {features.layer} ({features.n_tokens:,} {features.tokens} tokens of "
          f"{features.n_images:,} images): {summary.alive:,} alive, {summary.dead:,} dead of {features.width:,}; "
          f"L0 {summary.mean_l0:.2f}")
    if summary.n_nonfinite_tokens:
        print(f"  skipped {summary.n_nonfinite_tokens:,} NaN/Inf tokens")
    if features.label_note:
        print(f"  {features.label_note}")
    print(f"  features in {out}")
    if not args.no_report:
        index = write_report(out, max_latents=args.report_latents, images_per_latent=min(args.top_k, 8))
        print(f"  report: {index}")
    return 0


def add_features_command(commands: Any) -> None:
    """Register ``traitlens features`` on the top-level subcommands."""
    features = commands.add_parser("features", help="what each SAE latent fires on: statistics, top images, class and "
                                                    "patch-label APs, and an HTML report")
    features.add_argument("--sae", required=True, type=Path, help="saved SAE directory")
    features.add_argument("--acts", required=True, type=Path, help="activation store directory")
    features.add_argument("--out", required=True, type=Path, help="features directory (an unfinished one is resumed)")
    features.add_argument("--layer", help="stored layer (default: the one the SAE was trained on)")
    features.add_argument("--top-k", type=positive_int, default=16, help="top images and tokens kept per latent (default 16)")
    features.add_argument("--batch-size", type=positive_int, default=4096, help="tokens encoded at once (default 4096)")
    features.add_argument("--chunk-tokens", type=positive_int, default=1 << 18,
                          help="tokens per chunk file of the encoding pass, the unit a killed run resumes from (default 262144)")
    features.add_argument("--min-coverage", type=positive_float, default=DEFAULT_MIN_COVERAGE,
                          help="share of a patch's pixels (at most 1) that makes it positive for a mask label; the image's "
                               f"patch with the most of a label is positive too (default {DEFAULT_MIN_COVERAGE})")
    features.add_argument("--report-latents", type=positive_int, metavar="N",
                          help="report only the N most frequent alive latents (default: all alive latents)")
    features.add_argument("--no-report", action="store_true", help="skip the HTML report")
    add_device_arg(features)
    add_overwrite_arg(features, resumable=True)
    features.set_defaults(run=_run_features)
