"""``traitlens explain``: CAM-family heatmaps (with Finer-CAM) for a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from traitlens.backbones.preprocess import FITS
from traitlens.cli_args import (
    add_device_arg,
    add_head_arg,
    add_overwrite_arg,
    non_negative_float,
    positive_int,
    rename_option,
)
from traitlens.explain.config import DEFAULT_GAMMA, DEFAULT_N_REFS
from traitlens.explain.methods import METHODS


def _run_explain(args: argparse.Namespace) -> int:
    from traitlens.explain.config import ExplainConfig
    from traitlens.explain.job import SUMMARY, explain

    refs: Any = None
    if args.refs is not None:
        refs = "auto" if args.refs.strip() == "auto" else tuple(name.strip() for name in args.refs.split(",") if name.strip())
    config = ExplainConfig(
        model=args.model, data=args.data, method=args.method, out=args.out, weights=args.weights,
        pretrained=not args.random_init, head=args.head, target=args.target, refs=refs, gamma=args.gamma,
        n_refs=args.n_refs, layer=args.layer, batch_size=args.batch_size, device=args.device,
        zero_shot=None if args.zero_shot is None else tuple(name.strip() for name in args.zero_shot.split(",") if name.strip()),
        template=args.template, concept=args.concept, reference=args.reference, fit=args.fit,
        rank_traits=args.rank_traits, overwrite=args.overwrite,
    )
    summary = explain(config)
    contrast = f", Finer-CAM (gamma {args.gamma})" if config.explained_refs is not None else ""
    print(f"wrote {len(summary['images'])} {config.method} maps{contrast} of layer {summary['layer']} "
          f"to {args.out} (see {args.out / SUMMARY})")
    return 0


def add_explain_command(commands: Any, add_model_args: Any) -> None:
    explain = commands.add_parser("explain", help="heatmaps of the evidence for a class (CAM family, Finer-CAM)")
    add_model_args(explain)
    add_head_arg(explain, "its classes are explained")
    explain.add_argument("--zero-shot", metavar="C1,C2,...",
                         help="CLIP-style models: explain these class names as zero-shot prompts (see --template)")
    explain.add_argument("--template", default="a photo of a {}.", help="zero-shot prompt template (default: 'a photo of a {}.')")
    explain.add_argument("--concept", metavar="TEXT", help="CLIP-style models: explain this text concept")
    explain.add_argument("--reference", metavar="TEXT",
                         help="with --concept: explain the concept against this prompt (comparative, weighted by --gamma)")
    explain.add_argument("--data", required=True, type=Path,
                         help="class folder, image folder, image file, CSV/Parquet, segmentation folder or saved HF dataset")
    rename_option(explain, "--images", "--data")
    explain.add_argument("--method", required=True, metavar="NAME", help=f"one of {', '.join(METHODS)}")
    explain.add_argument("--target", help="explained class, name or index (default: each image's predicted class)")
    explain.add_argument("--refs", metavar="C1,C2|auto",
                         help="Finer-CAM: subtract these classes' evidence, or 'auto' for each image's closest classes by score")
    explain.add_argument("--gamma", type=non_negative_float, default=DEFAULT_GAMMA,
                         help=f"Finer-CAM: weight of the references (default {DEFAULT_GAMMA}; 0 gives the base method)")
    explain.add_argument("--n-refs", type=positive_int,
                         help=f"Finer-CAM with --refs auto: number of references, at most the classes but one "
                              f"(default {DEFAULT_N_REFS}, or all other classes when there are fewer)")
    explain.add_argument("--layer", help="layer name or index (default: the last; the one before it for models with a CLS token)")
    explain.add_argument("--fit", choices=FITS, default="squash",
                         help="how an image meets the model's input: squash (default) or pad (letterbox) see the whole "
                              "image, so the map covers it; crop is the model's own centre crop (the map is 0 outside it)")
    explain.add_argument("--rank-traits", type=positive_int, metavar="N",
                         help="prompt-cam and intr: rank the head's attention heads per image by greedy head blurring and "
                              "write the top N, each with its map (<image>.trait-<rank>.png)")
    explain.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    add_device_arg(explain)
    explain.add_argument("--out", required=True, type=Path, help="output folder: <image>.npy, <image>.png, summary.json")
    add_overwrite_arg(explain, resumable=True)
    explain.set_defaults(run=_run_explain)
