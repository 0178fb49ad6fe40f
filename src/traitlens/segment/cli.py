"""``traitlens segment``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from traitlens.cli_args import add_device_arg, add_overwrite_arg, non_negative_int, positive_float, positive_int


def _run_segment(args: argparse.Namespace) -> int:
    from traitlens.segment.config import DEFAULT_MODEL, SegmentConfig
    from traitlens.segment.job import segment

    config = SegmentConfig(
        data=args.data, out=args.out, support_images=tuple(args.support or ()), support_masks=tuple(args.support_mask or ()),
        support_data=args.support_data, n_support=args.n_support, names=args.names, backend=args.backend,
        model=args.model or DEFAULT_MODEL, weights=args.weights, pretrained=not args.random_init, layer=args.layer,
        n_neighbours=args.n_neighbours, temperature=args.temperature, memory=args.memory, refine=args.refine,
        radius=args.radius, eps=args.eps, fit=args.fit, match=args.match, sam2_checkpoint=args.sam2_checkpoint,
        sam2_config=args.sam2_config, sam2_image_size=args.sam2_image_size, batch_size=args.batch_size, device=args.device,
        overwrite=args.overwrite)
    result = segment(config)
    low = min(result["images"], key=lambda record: record["confidence"])
    print(f"segmented {len(result['images'])} images into {args.out} ({len(result['names'])} labels, mean confidence "
          f"{result['mean_confidence']:.3f}; least confident {low['source']} at {low['confidence']:.3f})")
    print(f"a segmentation folder: use it as --data {args.out}; pictures in {args.out / 'index.html'}")
    return 0


def add_segment_command(commands: Any, add_model_args: Any) -> None:
    """Register ``traitlens segment`` on the top-level subcommands."""
    from traitlens.segment.backends import segment_backends
    from traitlens.segment.config import MATCHES, SEGMENT_FITS, SegmentConfig
    from traitlens.segment.refine import REFINEMENTS

    defaults = SegmentConfig(data=Path("."), out=Path("."))
    backends = segment_backends()
    segment = commands.add_parser("segment", help="label one specimen, segment them all: propagate a few labelled images' "
                                                  "masks to every image (Static Segmentation by Tracking)")
    segment.add_argument("--support", action="append", type=Path, metavar="IMG",
                         help="a labelled image (repeatable; each followed by its --support-mask)")
    segment.add_argument("--support-mask", action="append", type=Path, metavar="MASK",
                         help="the label map of the --support image before it (its size; line i of names.txt names label i)")
    segment.add_argument("--support-data", type=Path, metavar="DIR",
                         help="labelled images as a segmentation folder (images/, annotations/, names.txt)")
    segment.add_argument("--n-support", type=positive_int, default=defaults.n_support,
                         help=f"from --support-data, the first N annotated images of each class (default {defaults.n_support})")
    segment.add_argument("--names", type=Path, metavar="FILE",
                         help="label names, line i naming label i (default: names.txt beside the support masks or above them)")
    segment.add_argument("--data", required=True, type=Path,
                         help="the images to segment: a class, image or segmentation folder, a table or one image file")
    segment.add_argument("--match", choices=MATCHES, default=defaults.match,
                         help="all: every support image for every image (default); class: each class of --data from its own "
                              "support images (one pseudo-video per species)")
    segment.add_argument("--backend", choices=list(backends), default=defaults.backend,
                         help="; ".join(f"{name}: {entry.summary}" for name, entry in backends.items()))
    add_model_args(segment, required=False)
    segment.set_defaults(model=None)
    segment.add_argument("--layer", help="features: the layer whose patch tokens are matched (default: the one two thirds down the model)")
    segment.add_argument("--n-neighbours", type=positive_int, default=defaults.n_neighbours,
                         help=f"features: memory patches that vote for each patch (default {defaults.n_neighbours})")
    segment.add_argument("--temperature", type=positive_float, default=defaults.temperature,
                         help=f"features: softmax temperature of the votes' cosine similarities (default {defaults.temperature})")
    segment.add_argument("--memory", type=non_negative_int, default=defaults.memory,
                         help=f"features: images segmented last (in earlier batches) that join the support as memory, as in video "
                              f"propagation (default {defaults.memory}: none, which did best on the benchmark)")
    segment.add_argument("--refine", choices=REFINEMENTS, default=defaults.refine,
                         help="features: from patches to pixels: guided (default: a guided filter by the image's colours) or "
                              "bilinear (upsampling alone)")
    segment.add_argument("--radius", type=positive_int, help="guided: the filter's window radius in image pixels "
                                                             "(default: half a patch's side)")
    segment.add_argument("--eps", type=positive_float, default=defaults.eps,
                         help=f"guided: the filter's regularization; larger follows colour edges less (default {defaults.eps})")
    segment.add_argument("--fit", choices=SEGMENT_FITS, default=defaults.fit,
                         help="how an image meets the model's input: squash (default) or pad (letterbox); both see the whole image")
    segment.add_argument("--sam2-checkpoint", type=Path, metavar="PATH", help="sam2: the SAM 2 checkpoint (.pt) to load")
    segment.add_argument("--sam2-config", help="sam2: the checkpoint's model config (default: chosen by the checkpoint's name)")
    segment.add_argument("--sam2-image-size", type=positive_int,
                         help="sam2: the side frames are resized to, a multiple of 32 (default: the model's, 1024)")
    segment.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                         help=f"images per step (default {defaults.batch_size})")
    add_device_arg(segment)
    segment.add_argument("--out", required=True, type=Path,
                         help="new segmentation folder (images/, annotations/, names.txt, segmentation.json, index.html); "
                              "an unfinished one resumes")
    add_overwrite_arg(segment, resumable=True)
    segment.set_defaults(run=_run_segment)
