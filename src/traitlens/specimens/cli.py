"""``traitlens specimens ...``: generate the benchmark, train its model, score against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from traitlens.cli_args import (
    add_overwrite_arg,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    unit_interval,
)


def _claim_score_folder(args: argparse.Namespace) -> None:
    """Claim ``--out`` for ``specimens score KIND`` before any work (the output policy of
    :mod:`traitlens.output_folder`); the library's scores only write into it, so that the demo can
    gather several in one folder of its own."""
    from traitlens.output_folder import claim_output_folder
    from traitlens.specimens.benchmark import ScoringError

    claim_output_folder(args.out, f"specimens score {args.score_command}", overwrite=args.overwrite, error=ScoringError)


def _print_table(args: argparse.Namespace) -> int:
    print((args.out / f"{args.score_command}.md").read_text(), end="")
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from traitlens.specimens.generate import GenerateConfig, generate

    out = generate(GenerateConfig(out=args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers,
                                  overwrite=args.overwrite, twins=args.twins))
    print(f"wrote {args.n} specimens (seed {args.seed}, {args.size}x{args.size} px) to {out}")
    print(f"  class folder: {out / 'images'}; segmentation folder: {out}; ground truth: {out / 'traits.json'}")
    if args.twins:
        print(f"  counterfactual twins (each image's look-alike, same organism and scene): {out / 'twins'}")
    return 0


def _run_train_model(args: argparse.Namespace) -> int:
    from traitlens.specimens.model_dir import ViTShape
    from traitlens.specimens.training import TrainModelConfig, train_model

    shape = ViTShape(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
                     num_heads=args.num_heads, mlp_ratio=args.mlp_ratio)
    config = TrainModelConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              val_fraction=args.val_fraction, seed=args.seed, shape=shape, overwrite=args.overwrite)
    out = train_model(config)
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    print(f"saved {out}: train accuracy {metrics['train_accuracy']:.1%}, validation accuracy "
          f"{'n/a' if metrics['val_accuracy'] is None else format(metrics['val_accuracy'], '.1%')} ({metrics['n_val']} images)")
    print(f"use it as --model traitlens:{out}")
    return 0


def _run_accuracy(args: argparse.Namespace) -> int:
    from traitlens.errors import DataError
    from traitlens.output_folder import claim_output_file
    from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy

    if args.out is not None:
        claim_output_file(args.out, overwrite=args.overwrite, error=DataError)
    result = model_accuracy(AccuracyConfig(model=args.model, data=args.data, weights=args.weights, pretrained=not args.random_init))
    print(f"{result['model']} on {result['data']}: accuracy {result['accuracy']:.2%} over {result['n_images']} images")
    worst = sorted(result["per_class"].items(), key=lambda item: item[1])[:3]
    print("  lowest classes: " + ", ".join(f"{name} {value:.1%}" for name, value in worst))
    if args.out is not None:
        from traitlens.store.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


def _run_score_discovery(args: argparse.Namespace) -> int:
    from traitlens.specimens.discovery import DiscoveryOptions, score_discovery

    options = DiscoveryOptions(min_coverage=args.min_coverage, pca_components=args.pca_components,
                               kmeans_clusters=args.kmeans_clusters, device=args.device)
    _claim_score_folder(args)
    score_discovery(args.acts, args.data, args.layer, args.sae, args.out, options)
    return _print_table(args)


def _run_score_localization(args: argparse.Namespace) -> int:
    from traitlens.specimens.localization import score_localization

    _claim_score_folder(args)
    score_localization(args.heatmaps, args.data, args.out, args.tolerance)
    return _print_table(args)


def _run_score_flips(args: argparse.Namespace) -> int:
    from traitlens.specimens.flips import score_flips

    _claim_score_folder(args)
    score_flips(args.predictions, args.data, args.out)
    return _print_table(args)


def _run_score_suppression(args: argparse.Namespace) -> int:
    from traitlens.specimens.suppression import SuppressionOptions, score_suppression

    options = SuppressionOptions(n_latents=args.n_latents, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size)
    _claim_score_folder(args)
    score_suppression(args.model, args.sae, args.acts, args.data, args.out, options, weights=args.weights,
                      pretrained=not args.random_init, show_progress=True)
    return _print_table(args)


def _run_score_reliance(args: argparse.Namespace) -> int:
    from traitlens.specimens.reliance import RelianceConfig, read_twin_benchmark, score_reliance

    config = RelianceConfig(model=args.model, data=args.data, out=args.out, layer=args.layer, weights=args.weights,
                            pretrained=not args.random_init, batch_size=args.batch_size)
    read_twin_benchmark(args.data)
    _claim_score_folder(args)
    score_reliance(config)
    return _print_table(args)


def _add_score_commands(sub: Any, add_model_args: Any) -> None:
    score = sub.add_parser("score", help="score features, heatmaps or edits against the ground truth")
    kinds = score.add_subparsers(dest="score_command", required=True, metavar="WHAT")
    data_help = "the specimens benchmark folder (holds traits.json)"

    discovery = kinds.add_parser("discovery", help="per trait, the best single feature's patch-level average precision")
    discovery.add_argument("--acts", required=True, type=Path, help="activation store extracted from the benchmark (patch tokens)")
    discovery.add_argument("--data", required=True, type=Path, help=data_help)
    discovery.add_argument("--sae", type=Path, help="an SAE directory to score beside the neuron, PCA and k-means baselines")
    discovery.add_argument("--layer", help="stored layer (default: the SAE's layer, else the last)")
    discovery.add_argument("--out", required=True, type=Path, help="writes discovery.md and discovery.json here")
    discovery.add_argument("--min-coverage", type=unit_interval, default=0.1,
                           help="trait share of a patch that makes it positive, in (0, 1] (default 0.1)")
    discovery.add_argument("--pca-components", type=positive_int, default=64)
    discovery.add_argument("--kmeans-clusters", type=positive_int, default=64)
    discovery.add_argument("--device", default="cpu")
    add_overwrite_arg(discovery)
    discovery.set_defaults(run=_run_score_discovery)

    localization = kinds.add_parser("localization", help="heatmap mass inside the distinguishing trait and pointing game")
    localization.add_argument("--heatmaps", required=True, type=Path, help="folder of <species>/<stem>.npy or <stem>.npy maps")
    localization.add_argument("--data", required=True, type=Path, help=data_help)
    localization.add_argument("--out", required=True, type=Path, help="writes localization.md and localization.json here")
    localization.add_argument("--tolerance", type=non_negative_int, default=0, help="pointing-game tolerance in pixels")
    add_overwrite_arg(localization)
    localization.set_defaults(run=_run_score_localization)

    flips = kinds.add_parser("flips", help="rate at which an edit turns a species into its look-alike")
    flips.add_argument("--predictions", required=True, type=Path,
                       help="CSV with columns source,before,after (species names), e.g. predictions.csv of traitlens steer")
    flips.add_argument("--data", required=True, type=Path, help=data_help)
    flips.add_argument("--out", required=True, type=Path, help="writes flips.md and flips.json here")
    add_overwrite_arg(flips)
    flips.set_defaults(run=_run_score_flips)

    suppression = kinds.add_parser("suppression", help="look-alike flips when each trait's SAE latents are zeroed in the model")
    add_model_args(suppression)
    suppression.add_argument("--sae", required=True, type=Path, help="SAE directory (its layer and tokens are used)")
    suppression.add_argument("--acts", required=True, type=Path, help="store of the benchmark holding the SAE's layer (picks the trait latents)")
    suppression.add_argument("--data", required=True, type=Path, help=data_help)
    suppression.add_argument("--out", required=True, type=Path, help="writes suppression.md and suppression.json here")
    suppression.add_argument("--n-latents", type=positive_int, default=10, help="latents zeroed per trait, best by patch AP (default 10)")
    suppression.add_argument("--n-random", type=positive_int, default=5, help="draws of the matched random control (default 5)")
    suppression.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random control")
    suppression.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_overwrite_arg(suppression)
    suppression.set_defaults(run=_run_score_suppression)

    reliance = kinds.add_parser("reliance", help="how often a twin (only the separating trait switched) flips the model, "
                                                 "and oracle maps of where it reads the trait")
    add_model_args(reliance)
    reliance.add_argument("--data", required=True, type=Path, help="a benchmark drawn with `specimens generate --twins`")
    reliance.add_argument("--out", required=True, type=Path, help="writes reliance.md, reliance.json and oracle/ here")
    reliance.add_argument("--layer", help="layer whose patch grid the oracle maps use (default: the heatmaps' default layer)")
    reliance.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_overwrite_arg(reliance)
    reliance.set_defaults(run=_run_score_reliance)


def _add_restart_arg(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` on a resumable command: start its own earlier output again from scratch."""
    parser.add_argument("--overwrite", action="store_true",
                        help="start again from scratch in an --out this command wrote (instead of resuming it; other folders "
                             "are never touched)")


def add_specimens_commands(commands: Any, add_model_args: Any) -> None:
    specimens = commands.add_parser("specimens", help="the ground-truth benchmark: generate, train-model, accuracy, score")
    sub = specimens.add_subparsers(dest="specimens_command", required=True, metavar="COMMAND")

    generate = sub.add_parser("generate", help="draw a benchmark: images, trait masks and traits.json")
    generate.add_argument("--out", required=True, type=Path, help="new or empty folder (an unfinished one is resumed)")
    generate.add_argument("--n", required=True, type=positive_int, help="number of images")
    generate.add_argument("--seed", required=True, type=non_negative_int, help="any non-negative integer")
    generate.add_argument("--size", type=positive_int, default=96, help="image side in pixels (32 to 1024)")
    generate.add_argument("--workers", type=positive_int, default=2, help="drawing threads (does not change the output)")
    generate.add_argument("--twins", action="store_true",
                          help="also draw each image's counterfactual twin: the look-alike species, same organism and scene")
    _add_restart_arg(generate)
    generate.set_defaults(run=_run_generate)

    train = sub.add_parser("train-model", help="train a small ViT from scratch on a class folder")
    train.add_argument("--data", required=True, type=Path, help="class folder (e.g. DIR/images of a generated benchmark)")
    train.add_argument("--out", required=True, type=Path, help="model directory (an unfinished one is resumed)")
    train.add_argument("--epochs", type=positive_int, default=10)
    train.add_argument("--batch-size", type=positive_int, default=128)
    train.add_argument("--lr", type=positive_float, default=2e-3)
    train.add_argument("--val-fraction", type=fraction, default=0.1)
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--img-size", type=positive_int, default=96)
    train.add_argument("--patch-size", type=positive_int, default=12)
    train.add_argument("--embed-dim", type=positive_int, default=128)
    train.add_argument("--depth", type=positive_int, default=4)
    train.add_argument("--num-heads", type=positive_int, default=4)
    train.add_argument("--mlp-ratio", type=positive_float, default=3.0)
    _add_restart_arg(train)
    train.set_defaults(run=_run_train_model)

    accuracy = sub.add_parser("accuracy", help="top-1 accuracy of a classifier on a class folder")
    add_model_args(accuracy)
    accuracy.add_argument("--data", required=True, type=Path, help="class folder whose class names are the model's")
    accuracy.add_argument("--out", type=Path, help="also write the result as JSON (a new file)")
    accuracy.add_argument("--overwrite", action="store_true", help="replace the file --out if it exists")
    accuracy.set_defaults(run=_run_accuracy)

    _add_score_commands(sub, add_model_args)
