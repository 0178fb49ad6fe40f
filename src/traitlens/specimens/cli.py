"""``traitlens specimens ...``: generate the benchmark, train its model, score against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from traitlens.cli_args import (
    add_device_arg,
    add_head_arg,
    add_overwrite_arg,
    closed_unit_interval,
    comma_list,
    fraction,
    legacy_json_file,
    non_negative_int,
    option_name,
    patch_grid,
    positive_float,
    positive_int,
    rename_option,
    unit_interval,
)


def _claim_score_folder(args: argparse.Namespace, resumable: bool = False) -> None:
    from traitlens.specimens.benchmark import claim_score_folder

    claim_score_folder(args.out, args.score_command, args.overwrite, resumable)


def _print_table(args: argparse.Namespace) -> int:
    print((args.out / f"{args.score_command}.md").read_text(), end="")
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from traitlens.specimens.generate import GenerateConfig, generate

    out = generate(GenerateConfig(out=args.out, n=args.n_images, seed=args.seed, size=args.size, workers=args.workers,
                                  overwrite=args.overwrite, twins=args.twins, saturation=args.saturation))
    print(f"wrote {args.n_images} specimens (seed {args.seed}, {args.size}x{args.size} px) to {out}")
    print(f"  class folder: {out / 'images'}; segmentation folder: {out}; ground truth: {out / 'traits.json'}")
    if args.twins:
        print(f"  counterfactual twins (each image's look-alike, same organism and scene): {out / 'twins'}")
    return 0


ARCHS = {"vit-cls": "a ViT whose head reads the CLS token", "vit-mean": "a ViT whose head reads the mean of its patch "
         "tokens (no CLS token)", "cnn": "a ResNet-style CNN (basic blocks, four stages)"}
_VIT_FLAGS: dict[str, Any] = {"patch_size": 12, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 3.0,
                              "stem": "patch"}
_CNN_FLAGS: dict[str, Any] = {"channels": (32, 64, 128, 256), "blocks": (1, 1, 1, 1), "output_stride": 8}


def _model_shape(args: argparse.Namespace) -> Any:
    """The architecture ``--arch`` names, shaped by its own flags (another architecture's are refused)."""
    from traitlens.errors import SpecError
    from traitlens.specimens.model_dir import CNNShape, ViTShape

    own, other = (_CNN_FLAGS, _VIT_FLAGS) if args.arch == "cnn" else (_VIT_FLAGS, _CNN_FLAGS)
    given = [name for name in other if getattr(args, name) is not None]
    if given:
        raise SpecError(f"--arch {args.arch} has no {', '.join(option_name(name) for name in given)}")
    values = {name: default if getattr(args, name) is None else getattr(args, name) for name, default in own.items()}
    if args.arch == "cnn":
        return CNNShape(img_size=args.img_size, **values)
    return ViTShape(img_size=args.img_size, pool=args.arch.removeprefix("vit-"), **values)


def _run_train_model(args: argparse.Namespace) -> int:
    from traitlens.errors import SpecError
    from traitlens.specimens.distillation import TeacherConfig
    from traitlens.specimens.training import TrainModelConfig, train_model

    shape = _model_shape(args)
    if args.teacher is None and (args.teacher_layer != "-1" or args.distill_weight != 1.0):
        raise SpecError("--teacher-layer and --distill-weight need --teacher")
    teacher = None if args.teacher is None else TeacherConfig(args.teacher, args.teacher_layer, args.distill_weight)
    config = TrainModelConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              val_fraction=args.val_fraction, seed=args.seed, shape=shape, teacher=teacher, overwrite=args.overwrite)
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

    legacy_file = legacy_json_file(args.out, "specimens accuracy")
    if legacy_file is not None:
        claim_output_file(legacy_file, overwrite=args.overwrite, error=DataError)
    result = model_accuracy(AccuracyConfig(model=args.model, data=args.data, weights=args.weights, pretrained=not args.random_init,
                                           head=args.head, device=args.device, out=None if legacy_file else args.out,
                                           overwrite=args.overwrite))
    print(f"{result['model']} on {result['data']}: accuracy {result['accuracy']:.2%} over {result['n_images']} images")
    worst = sorted(result["per_class"].items(), key=lambda item: item[1])[:3]
    print("  lowest classes: " + ", ".join(f"{name} {value:.1%}" for name, value in worst))
    if legacy_file is not None:
        from traitlens.atomic import atomic_write_json

        atomic_write_json(legacy_file, result)
    return 0


def _run_score_discovery(args: argparse.Namespace) -> int:
    from traitlens.specimens.discovery import DiscoveryConfig, DiscoveryOptions, score_discovery

    options = DiscoveryOptions(min_coverage=args.min_coverage, pca_components=args.pca_components,
                               kmeans_clusters=args.kmeans_clusters, device=args.device)
    _claim_score_folder(args)
    score_discovery(DiscoveryConfig(acts=args.acts, data=args.data, out=args.out, sae=args.sae, layer=args.layer, options=options))
    return _print_table(args)


def _run_score_localization(args: argparse.Namespace) -> int:
    from traitlens.specimens.localization import LocalizationConfig, score_localization

    _claim_score_folder(args)
    score_localization(LocalizationConfig(heatmaps=args.heatmaps, data=args.data, out=args.out, tolerance=args.tolerance,
                                          grid_hw=args.grid, oracle=args.oracle))
    return _print_table(args)


def _run_score_flips(args: argparse.Namespace) -> int:
    from traitlens.specimens.flips import FlipsConfig, score_flips

    _claim_score_folder(args)
    score_flips(FlipsConfig(predictions=args.predictions, data=args.data, out=args.out))
    return _print_table(args)


def _run_score_suppression(args: argparse.Namespace) -> int:
    from traitlens.specimens.suppression import SuppressionConfig, SuppressionOptions, score_suppression

    options = SuppressionOptions(n_latents=args.n_latents, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size)
    _claim_score_folder(args)
    score_suppression(SuppressionConfig(model=args.model, sae=args.sae, acts=args.acts, data=args.data, out=args.out,
                                        options=options, weights=args.weights, pretrained=not args.random_init,
                                        device=args.device), show_progress=True)
    return _print_table(args)


def _run_score_reliance(args: argparse.Namespace) -> int:
    from traitlens.heads.attach import load_model_with_head
    from traitlens.specimens.reliance import RelianceConfig, read_twin_benchmark, score_reliance

    config = RelianceConfig(model=args.model, data=args.data, out=args.out, layer=args.layer, weights=args.weights,
                            pretrained=not args.random_init, head=args.head, batch_size=args.batch_size, device=args.device)
    read_twin_benchmark(args.data)
    backbone = load_model_with_head(config.model, config.weights, config.pretrained, config.head)
    _claim_score_folder(args)
    score_reliance(config, backbone)
    return _print_table(args)


def _run_score_finetune(args: argparse.Namespace) -> int:
    from traitlens.specimens.finetune_comparison import FinetuneComparisonConfig, score_finetune

    config = FinetuneComparisonConfig(model=args.model, weights=args.weights, pretrained=not args.random_init, data=args.data,
                                      test_data=args.test_data, out=args.out, classes=args.classes,
                                      n_per_class=args.n_per_class, methods=args.methods, pcv_n_per_class=args.pcv_n_per_class,
                                      epochs=args.epochs, seed=args.seed, device=args.device)
    _claim_score_folder(args, resumable=True)  # each fine-tuning inside resumes; a foreign one is refused by it
    score_finetune(config, show_progress=True)
    return _print_table(args)


def _run_score_heads(args: argparse.Namespace) -> int:
    from traitlens.specimens.head_comparison import HeadComparisonConfig, load_compared_heads, score_heads
    from traitlens.specimens.reliance import read_twin_benchmark

    config = HeadComparisonConfig(model=args.model, heads=tuple(args.head), data=args.data, out=args.out, weights=args.weights,
                                  pretrained=not args.random_init, n_faithfulness=args.n_faithfulness, device=args.device)
    read_twin_benchmark(args.data)
    backbones = load_compared_heads(config)  # a missing, damaged or foreign head is refused before --out is claimed
    _claim_score_folder(args)
    score_heads(config, backbones)
    return _print_table(args)


def _run_score_segmentation(args: argparse.Namespace) -> int:
    from traitlens.specimens.segmentation_score import SegmentationScoreConfig, check_inputs, score_segmentation

    config = SegmentationScoreConfig(data=args.data, out=args.out, pred=args.pred, models=(args.model,) if args.model else (),
                                     support_data=args.support_data, layers=args.layers or (), n_support=args.n_support,
                                     max_images=args.max_images, weights=args.weights,
                                     pretrained=not args.random_init, device=args.device)
    check_inputs(config)
    _claim_score_folder(args)
    score_segmentation(config)
    return _print_table(args)


def _run_report(args: argparse.Namespace) -> int:
    from traitlens.specimens.report import ReportConfig, run_report

    run_report(ReportConfig(model=args.model, out=args.out, seed=args.seed, n_images=args.n_images, layer=args.layer,
                            overwrite=args.overwrite))
    print((args.out / "report.md").read_text(), end="")
    print(f"\nreport: {args.out / 'report.md'} (and report.json)")
    return 0


def _add_score_commands(sub: Any, add_model_args: Any) -> None:
    score = sub.add_parser("score", help="score features, heatmaps or edits against the ground truth")
    kinds = score.add_subparsers(dest="score_command", required=True, metavar="WHAT")
    data_help = "the specimens benchmark folder (holds traits.json)"

    discovery = kinds.add_parser("discovery", help="per trait, the best single feature's patch-level average precision")
    discovery.add_argument("--acts", required=True, type=Path, help="activation store extracted from the benchmark (patch tokens)")
    discovery.add_argument("--data", required=True, type=Path, help=data_help)
    discovery.add_argument("--sae", type=Path, help="an SAE directory to score beside the neuron, PCA and k-means baselines")
    discovery.add_argument("--layer", help="stored layer (default: the SAE's layer, else the last)")
    discovery.add_argument("--out", required=True, type=Path, help="output folder: discovery.md and discovery.json")
    discovery.add_argument("--min-coverage", type=unit_interval, default=0.1,
                           help="trait share of a patch that makes it positive, in (0, 1] (default 0.1)")
    discovery.add_argument("--pca-components", type=positive_int, default=64)
    discovery.add_argument("--kmeans-clusters", type=positive_int, default=64)
    add_device_arg(discovery)
    add_overwrite_arg(discovery)
    discovery.set_defaults(run=_run_score_discovery)

    localization = kinds.add_parser("localization", help="heatmap mass inside the distinguishing trait and pointing game")
    localization.add_argument("--heatmaps", required=True, type=Path, help="folder of <species>/<stem>.npy or <stem>.npy maps")
    localization.add_argument("--data", required=True, type=Path, help=data_help)
    localization.add_argument("--out", required=True, type=Path, help="output folder: localization.md and localization.json")
    localization.add_argument("--tolerance", type=non_negative_int, default=0, help="pointing-game tolerance in pixels")
    localization.add_argument("--grid", type=patch_grid, help="also score per patch of the model's grid, e.g. 8x8 (for a model "
                                                              "that sees the whole image; pointing within one patch)")
    localization.add_argument("--oracle", type=Path, help="a `score reliance --out` folder: also the rank correlation with "
                                                          "each image's oracle map (its grid is the default --grid)")
    add_overwrite_arg(localization)
    localization.set_defaults(run=_run_score_localization)

    flips = kinds.add_parser("flips", help="rate at which an edit turns a species into its look-alike")
    flips.add_argument("--predictions", required=True, type=Path,
                       help="CSV with columns source,before,after (species names), e.g. predictions.csv of traitlens steer")
    flips.add_argument("--data", required=True, type=Path, help=data_help)
    flips.add_argument("--out", required=True, type=Path, help="output folder: flips.md and flips.json")
    add_overwrite_arg(flips)
    flips.set_defaults(run=_run_score_flips)

    suppression = kinds.add_parser("suppression", help="look-alike flips when each trait's SAE latents are zeroed in the model")
    add_model_args(suppression)
    suppression.add_argument("--sae", required=True, type=Path, help="SAE directory (its layer and tokens are used)")
    suppression.add_argument("--acts", required=True, type=Path,
                             help="store of the benchmark holding the SAE's layer (picks the trait latents)")
    suppression.add_argument("--data", required=True, type=Path, help=data_help)
    suppression.add_argument("--out", required=True, type=Path, help="output folder: suppression.md and suppression.json")
    suppression.add_argument("--n-latents", type=positive_int, default=10, help="latents zeroed per trait, best by patch AP (default 10)")
    suppression.add_argument("--n-random", type=positive_int, default=5, help="draws of the matched random control (default 5)")
    suppression.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random control")
    suppression.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_device_arg(suppression)
    add_overwrite_arg(suppression)
    suppression.set_defaults(run=_run_score_suppression)

    reliance = kinds.add_parser("reliance", help="how often a twin (only the separating trait switched) flips the model, "
                                                 "and oracle maps of where it reads the trait")
    add_model_args(reliance)
    add_head_arg(reliance, "the reliance and oracle maps are the head's")
    reliance.add_argument("--data", required=True, type=Path, help="a benchmark drawn with `specimens generate --twins`")
    reliance.add_argument("--out", required=True, type=Path, help="output folder: reliance.md, reliance.json and oracle/")
    reliance.add_argument("--layer", help="layer whose patch grid the oracle maps use (default: the heatmaps' default layer)")
    reliance.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_device_arg(reliance)
    add_overwrite_arg(reliance)
    reliance.set_defaults(run=_run_score_reliance)

    heads = kinds.add_parser("heads", help="heads trained on a frozen model (heads train), side by side: accuracy, twin reliance, "
                                           "their maps and Grad-CAM / Finer-CAM against the trait and the oracle, faithfulness")
    add_model_args(heads)
    heads.add_argument("--head", required=True, type=Path, action="append", metavar="DIR",
                       help="a head folder of traitlens heads train (repeat for several)")
    heads.add_argument("--data", required=True, type=Path, help="a benchmark drawn with `specimens generate --twins`")
    heads.add_argument("--out", required=True, type=Path, help="output folder: heads.md, heads.json, and per head its reliance/")
    heads.add_argument("--n-faithfulness", type=positive_int, default=64,
                       help="images whose maps get deletion and insertion curves (default 64)")
    add_device_arg(heads)
    add_overwrite_arg(heads)
    heads.set_defaults(run=_run_score_heads)
    _add_finetune_score(kinds, add_model_args)
    _add_segmentation_score(kinds, add_model_args)


def _add_segmentation_score(kinds: Any, add_model_args: Any) -> None:
    segmentation = kinds.add_parser("segmentation", help="label maps against the benchmark's: IoU per trait, of a traitlens "
                                                         "segment folder (--pred) or of one-shot segmentation run here (--model)")
    segmentation.add_argument("--data", required=True, type=Path, help="the specimens benchmark folder (holds traits.json)")
    segmentation.add_argument("--pred", type=Path, metavar="DIR", help="a traitlens segment folder of the benchmark's images")
    add_model_args(segmentation, required=False)
    segmentation.add_argument("--support-data", type=Path, metavar="DIR",
                              help="with --model: a labelled benchmark of another seed; each species is segmented from its "
                                   "first N specimens there")
    segmentation.add_argument("--n-support", type=comma_list(positive_int), default=(1, 2, 5), metavar="N1,N2,...",
                              help="with --model: labelled specimens per species, one run each (default 1,2,5)")
    segmentation.add_argument("--layers", type=comma_list(str), metavar="L1,L2,...|all",
                              help="with --model: the layers matched, one run each (default: the segment default; all: every layer)")
    segmentation.add_argument("--max-images", type=positive_int, help="with --model: at most this many benchmark images (default: all)")
    add_device_arg(segmentation)
    segmentation.add_argument("--out", required=True, type=Path, help="output folder: segmentation.md and segmentation.json")
    add_overwrite_arg(segmentation)
    segmentation.set_defaults(run=_run_score_segmentation)


def _add_finetune_score(kinds: Any, add_model_args: Any) -> None:
    from traitlens.finetune.methods import finetune_methods

    finetune = kinds.add_parser("finetune", help="every fine-tuning method at a few images per class on some classes: accuracy "
                                                 "on those and on the absent ones, before and after calibration")
    add_model_args(finetune)
    finetune.add_argument("--data", required=True, type=Path, help="training images: a class folder of the model's classes")
    finetune.add_argument("--test-data", required=True, type=Path, help="test images of every class: a class folder")
    finetune.add_argument("--classes", required=True, type=comma_list(str), metavar="C1,C2,...",
                          help="the classes fine-tuned on; the model's others are the absent classes")
    finetune.add_argument("--n-per-class", type=comma_list(positive_int), default=(4, 16, 64), metavar="N1,N2,...",
                          help="training images per class, one run each (default 4,16,64)")
    finetune.add_argument("--methods", type=comma_list(str), metavar="M1,M2,...",
                          help=f"fine-tuning methods (default: all, {','.join(finetune_methods())})")
    finetune.add_argument("--pcv-n-per-class", type=positive_int, default=16,
                          help="the --n-per-class at which pseudo cross-validation also runs (default 16)")
    finetune.add_argument("--epochs", type=positive_int, default=10, help="passes over the training images (default 10)")
    finetune.add_argument("--seed", type=non_negative_int, default=0, help="seed of every fine-tuning")
    add_device_arg(finetune)
    finetune.add_argument("--out", required=True, type=Path,
                          help="output folder: finetune.md, finetune.json, a folder per run (an unfinished one resumes)")
    add_overwrite_arg(finetune, resumable=True)
    finetune.set_defaults(run=_run_score_finetune)


def add_specimens_commands(commands: Any, add_model_args: Any) -> None:
    specimens = commands.add_parser("specimens", help="the ground-truth benchmark: generate, train-model, accuracy, score")
    sub = specimens.add_subparsers(dest="specimens_command", required=True, metavar="COMMAND")

    generate = sub.add_parser("generate", help="draw a benchmark: images, trait masks and traits.json")
    generate.add_argument("--out", required=True, type=Path, help="new or empty folder (an unfinished one is resumed)")
    generate.add_argument("--n-images", required=True, type=positive_int, help="number of images")
    rename_option(generate, "--n", "--n-images")
    generate.add_argument("--seed", required=True, type=non_negative_int, help="any non-negative integer")
    generate.add_argument("--size", type=positive_int, default=96, help="image side in pixels (32 to 1024)")
    generate.add_argument("--workers", type=positive_int, default=2, help="drawing threads (does not change the output)")
    generate.add_argument("--twins", action="store_true",
                          help="also draw each image's counterfactual twin: the look-alike species, same organism and scene")
    generate.add_argument("--saturation", type=closed_unit_interval, default=1.0,
                          help="colour saturation of the photographs: 1 as drawn (default), 0 grayscale; below 1 a shifted "
                               "domain, for adapting a model with finetune")
    add_overwrite_arg(generate, resumable=True)
    generate.set_defaults(run=_run_generate)

    train = sub.add_parser("train-model", help="train a small ViT or CNN from scratch on a class folder")
    train.add_argument("--data", required=True, type=Path, help="class folder (e.g. DIR/images of a generated benchmark)")
    train.add_argument("--out", required=True, type=Path, help="model directory (an unfinished one is resumed)")
    train.add_argument("--epochs", type=positive_int, default=10)
    train.add_argument("--batch-size", type=positive_int, default=128, help="images per step (default 128)")
    train.add_argument("--lr", type=positive_float, default=2e-3)
    train.add_argument("--val-fraction", type=fraction, default=0.1)
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--arch", choices=tuple(ARCHS), default="vit-cls",
                       help="; ".join(f"{name}: {text}" for name, text in ARCHS.items()) + " (default vit-cls)")
    train.add_argument("--img-size", type=positive_int, default=96)
    vit = "ViTs only"
    train.add_argument("--patch-size", type=positive_int, help=f"{vit} (default {_VIT_FLAGS['patch_size']})")
    train.add_argument("--embed-dim", type=positive_int, help=f"{vit} (default {_VIT_FLAGS['embed_dim']})")
    train.add_argument("--depth", type=positive_int, help=f"{vit} (default {_VIT_FLAGS['depth']})")
    train.add_argument("--num-heads", type=positive_int, help=f"{vit} (default {_VIT_FLAGS['num_heads']})")
    train.add_argument("--mlp-ratio", type=positive_float, help=f"{vit} (default {_VIT_FLAGS['mlp_ratio']})")
    train.add_argument("--stem", choices=("patch", "conv"), help=f"{vit}: tokens from a linear patch projection or from strided "
                       "3x3 convolutions (a power-of-two --patch-size) on the same grid (default patch)")
    cnn = "CNN only"
    train.add_argument("--channels", type=comma_list(positive_int), help=f"{cnn}: width of each of the four stages (default 32,64,128,256)")
    train.add_argument("--blocks", type=comma_list(positive_int), help=f"{cnn}: residual blocks per stage (default 1,1,1,1)")
    train.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                       help=f"{cnn}: input pixels per cell of the last stage's grid, dilating past it (default 8)")
    train.add_argument("--teacher", metavar="SPEC", help="distil a teacher model's patch tokens into the last layer's "
                       "(e.g. traitlens:specimens-cnn; a linear map, dropped after training, predicts them)")
    train.add_argument("--teacher-layer", default="-1", help="the teacher's layer, a name or index (default -1, its last)")
    train.add_argument("--distill-weight", type=positive_float, default=1.0,
                       help="weight of the teacher's hint against the cross-entropy (default 1)")
    add_overwrite_arg(train, resumable=True)
    train.set_defaults(run=_run_train_model)

    accuracy = sub.add_parser("accuracy", help="top-1 accuracy of a classifier on a class folder")
    add_model_args(accuracy)
    add_head_arg(accuracy)
    accuracy.add_argument("--data", required=True, type=Path, help="class folder whose class names are the model's")
    accuracy.add_argument("--out", type=Path, help="also write the result to this folder (accuracy.json)")
    add_device_arg(accuracy)
    add_overwrite_arg(accuracy)
    accuracy.set_defaults(run=_run_accuracy)

    _add_score_commands(sub, add_model_args)

    report = sub.add_parser("report", help="discover, localize and test a model against its twin reliance, on a fresh seed")
    report.add_argument("--model", required=True, metavar="SPEC", help="a classifier of the 16 specimens species, e.g. "
                        "traitlens:specimens-vit, traitlens:specimens-vit-mean, traitlens:specimens-cnn or traitlens:DIR")
    report.add_argument("--out", required=True, type=Path, help="new or empty folder (an unfinished report is resumed)")
    report.add_argument("--seed", type=non_negative_int, default=1,
                        help="specimens seed to score on (default 1; seed + 1 is the held-out set for confusion references)")
    report.add_argument("--n-images", type=positive_int, default=1024, help="images scored, at least 32 (default 1024)")
    rename_option(report, "--n", "--n-images")
    report.add_argument("--layer", help="layer the SAE reads and the edits change (default: the one before the last)")
    add_overwrite_arg(report, resumable=True)
    report.set_defaults(run=_run_report)
