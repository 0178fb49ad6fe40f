"""The ``traitlens`` command: parse arguments into a config, call the library, print results.

Every user error is a :class:`TraitlensError`, printed here as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from traitlens.cli_args import (
    EXIT_USER_ERROR,
    OneLineParser,
    add_device_arg,
    add_head_arg,
    add_model_args,
    add_overwrite_arg,
    comma_list,
    join_negative_values,
    legacy_json_file,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rename_option,
)
from traitlens.errors import TraitlensError
from traitlens.version import __version__

EXIT_INTERRUPTED = 130


def _run_extract(args: argparse.Namespace) -> int:
    from traitlens.store import ExtractConfig, extract
    from traitlens.store.summary import summarize_store

    config = ExtractConfig(
        model=args.model, data=args.data, layers=args.layers, out=args.out,
        weights=args.weights, pretrained=not args.random_init, tokens=args.tokens, dtype=args.dtype,
        batch_size=args.batch_size, strict=args.strict, images_per_shard=args.images_per_shard, device=args.device,
        overwrite=args.overwrite, row_order=args.row_order,
    )
    extract(config)
    print(summarize_store(args.out))
    return 0


def _metrics_sink(text: str) -> str:
    from traitlens.sae.logging_sinks import SINKS

    if text not in SINKS:
        raise argparse.ArgumentTypeError(f"one of {', '.join(SINKS)} expected, got {text!r}")
    return text


def _run_train(args: argparse.Namespace) -> int:
    from traitlens.sae import TrainConfig, train
    from traitlens.sae.training import sweep_runs
    from traitlens.store import ActivationStore

    layer = ActivationStore(args.acts).layer(args.layer)
    runs = sweep_runs(layer.width, widths=args.width or (), expansions=args.expansion, activation=args.arch, ks=args.k,
                      lrs=args.lr, sparsity_coefficients=args.l1, matryoshka_widths=args.matryoshka_widths or (),
                      normalization=args.normalize)
    config = TrainConfig(
        acts=args.acts, layer=layer.name, out=args.out, runs=runs, n_tokens=args.n_tokens, batch_size=args.batch_size,
        seed=args.seed, warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every, strict=args.strict, device=args.device,
        data_init=args.data_init, bias_init=args.bias_init, dead_after_tokens=args.dead_after_tokens,
        log_to=args.log_to, precision=args.precision,
    )
    if args.resume:
        print("traitlens train: --resume is no longer needed (an unfinished run in --out is resumed); it goes in the next "
              "release", file=sys.stderr)
    for directory in train(config):
        print(f"saved SAE {directory}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from traitlens.atomic import atomic_write_json
    from traitlens.output_folder import claim_output_file
    from traitlens.sae.evaluation import EvaluateConfig, EvaluationError, evaluate, format_metrics

    legacy_file = legacy_json_file(args.out, "evaluate")
    if legacy_file is not None:
        claim_output_file(legacy_file, overwrite=args.overwrite, error=EvaluationError)
    config = EvaluateConfig(sae=args.sae, acts=args.acts, out=None if legacy_file else args.out, layer=args.layer, model=args.model,
                            weights=args.weights, pretrained=not args.random_init, batch_size=args.batch_size,
                            image_batch_size=args.image_batch_size, max_images=args.max_images, strict=args.strict,
                            device=args.device, head=args.head, overwrite=args.overwrite)
    metrics = evaluate(config)
    if legacy_file is not None:
        atomic_write_json(legacy_file, metrics)
    print(format_metrics(metrics))
    return 0


def _run_import_sae(args: argparse.Namespace) -> int:
    from traitlens.output_folder import claim_output_folder
    from traitlens.sae import save_sae
    from traitlens.sae.importers import SAEImportError, import_sae

    subtract = {"yes": True, "no": False, None: None}[args.saev_subtract_b_dec]
    # converting reads the peer's files only: a bad one is refused before --out is touched
    sae, extra = import_sae(args.from_path, subtract_b_dec=subtract)
    if args.layer is not None:
        extra["layer"] = args.layer
    claim_output_folder(args.out, "import-sae", overwrite=args.overwrite, error=SAEImportError)
    save_sae(sae, args.out, extra)
    print(f"imported {args.from_path} as a {sae.config.activation} SAE (d_in {sae.config.d_in}, width {sae.config.width}) into {args.out}")
    return 0


def _run_layers(args: argparse.Namespace) -> int:
    from traitlens.backbones import load_backbone

    # the layers are the architecture's, whatever its weights: nothing is downloaded or read
    backbone = load_backbone(args.model, pretrained=False)
    print(f"{backbone.spec}: {len(backbone.layer_names)} layers, input {backbone.preprocess.size_hw}")
    for index, name in enumerate(backbone.layer_names):
        layer = backbone.layer(name)
        layout = layer.layout
        print(f"  {index:>3}  {name:<40} width {layer.width:>5}  prefix {layout.n_prefix}  grid {layout.grid_hw[0]}x{layout.grid_hw[1]}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from traitlens.store.summary import summarize_store

    print(summarize_store(args.acts))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from traitlens.demo import DemoConfig, run_demo

    chosen = {"layer": args.layer, "n_images": args.n_images, "seed": args.seed}
    print(run_demo(DemoConfig(out=args.out, overwrite=args.overwrite,
                              **{name: value for name, value in chosen.items() if value is not None})))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from traitlens.report import DataReportConfig, report_on_data

    print(report_on_data(DataReportConfig(model=args.model, out=args.out, data=args.data, layer=args.layer, weights=args.weights,
                                          pretrained=not args.random_init, sae_epochs=args.sae_epochs, device=args.device,
                                          overwrite=args.overwrite)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from traitlens.backbones.layout import TOKEN_SELECTIONS
    from traitlens.sae.architectures import ARCHITECTURES
    from traitlens.sae.config import PRECISIONS
    from traitlens.store.row_order import ROW_ORDERS

    parser = OneLineParser(prog="traitlens", description="Discover, localize and test the visual traits a vision model uses.")
    parser.add_argument("--version", action="version", version=f"traitlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser("extract", help="store a model's layer tokens for a set of images")
    add_model_args(extract)
    extract.add_argument("--data", required=True, type=Path,
                         help="class folder, image folder, image file, CSV/Parquet, segmentation folder or saved HF dataset")
    extract.add_argument("--layers", required=True, type=comma_list(str),
                         help="comma-separated block indices (negative from the end) or module names")
    extract.add_argument("--out", required=True, type=Path, help="store directory (an unfinished one is resumed)")
    extract.add_argument("--tokens", choices=TOKEN_SELECTIONS, default="patch", help="which tokens to keep (default: patch)")
    extract.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype (default: float16)")
    extract.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    extract.add_argument("--images-per-shard", type=positive_int, default=None,
                         help="images per shard file (default: sized to ~512 MiB)")
    extract.add_argument("--row-order", choices=ROW_ORDERS, default="image",
                         help="token rows of each shard file: image (image after image, as tools that read the .npy "
                              "files expect) or shuffled (SAE training then reads well-mixed batches at nearly sequential "
                              "speed); traitlens reads either in image order where it needs to (default: image)")
    add_device_arg(extract)
    extract.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    add_overwrite_arg(extract, resumable=True)
    extract.set_defaults(run=_run_extract)

    train = commands.add_parser("train", help="train sparse autoencoders (one, or a sweep) on a stored layer")
    train.add_argument("--acts", required=True, type=Path, help="activation store directory")
    train.add_argument("--layer", required=True, help="stored layer name or index")
    train.add_argument("--arch", choices=tuple(ARCHITECTURES), default="topk",
                       help="; ".join(architecture.description for architecture in ARCHITECTURES.values()) + " (default topk)")
    train.add_argument("--k", type=comma_list(positive_int), default=(32,),
                       help="active latents per token (TopK family); comma-separated values sweep")
    train.add_argument("--l1", type=comma_list(non_negative_float), default=(0.0,),
                       help="sparsity coefficient: L1 for relu, L0 for jumprelu; comma-separated sweeps")
    size = train.add_mutually_exclusive_group()
    size.add_argument("--width", type=comma_list(positive_int), help="number of latents; comma-separated values sweep")
    size.add_argument("--expansion", type=comma_list(positive_float), default=(16.0,),
                      help="width as a multiple of the layer width (default 16); comma-separated sweeps")
    train.add_argument("--matryoshka-widths", type=comma_list(positive_int),
                       help="nested prefix widths ending at the width (default width/16, width/4, width)")
    train.add_argument("--normalize", choices=("none", "norm", "standardize"), default="norm",
                       help="input normalization from the store's statistics (default: norm, mean token norm -> sqrt(d))")
    train.add_argument("--batch-size", type=positive_int, default=4096, help="tokens per step (default 4096)")
    train.add_argument("--lr", type=comma_list(positive_float), default=(3e-4,), help="peak learning rate; comma-separated values sweep")
    train.add_argument("--n-tokens", required=True, type=positive_int, help="tokens to train on (a count)")
    rename_option(train, "--tokens", "--n-tokens")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--data-init", action="store_true", help="initialize decoder rows from data points")
    train.add_argument("--bias-init", choices=("geometric_median", "mean", "zero"), default="geometric_median")
    train.add_argument("--warmup-steps", type=non_negative_int, default=50,
                       help="steps of linear learning-rate warm-up before the cosine decay (default 50)")
    train.add_argument("--dead-after-tokens", type=positive_int, default=1_000_000, help="a latent silent this long is dead (AuxK)")
    train.add_argument("--checkpoint-every", type=positive_int, default=100, help="steps between checkpoints")
    train.add_argument("--out", required=True, type=Path,
                       help="output folder (a sweep gets one folder per SAE; an unfinished run is resumed)")
    train.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the old way to resume; a no-op now
    train.add_argument("--strict", action="store_true", help="stop at NaN/Inf activations instead of skipping them")
    add_device_arg(train)
    train.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="what the encoder and decoder products run in: bfloat16 (autocast; for GPUs with bf16 "
                            "tensor cores) keeps weights, optimizer and losses in float32 (default float32)")
    train.add_argument("--log-to", type=comma_list(_metrics_sink), default=(),
                       help="also log to tensorboard and/or wandb (comma-separated)")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser("evaluate", help="measure a saved SAE on a store (and, with --model, downstream)")
    evaluate.add_argument("--sae", required=True, type=Path, help="saved SAE directory")
    evaluate.add_argument("--acts", required=True, type=Path, help="activation store directory")
    evaluate.add_argument("--model", metavar="SPEC", help="the store's model, to measure accuracy and logit KL with the SAE spliced in")
    evaluate.add_argument("--weights", type=Path, metavar="PATH")
    evaluate.add_argument("--random-init", action="store_true")
    evaluate.add_argument("--layer", help="stored layer (default: the one the SAE was trained on)")
    evaluate.add_argument("--batch-size", type=positive_int, default=4096, help="tokens per batch (default 4096)")
    evaluate.add_argument("--image-batch-size", type=positive_int, default=16, help="images per forward pass (with --model)")
    evaluate.add_argument("--max-images", type=positive_int, metavar="N",
                          help="downstream fidelity on the first N stored images (default: all)")
    add_head_arg(evaluate, "with --model, its classes replace the model's own")
    evaluate.add_argument("--strict", action="store_true", help="NaN/Inf activations are an error instead of skipped")
    add_device_arg(evaluate)
    evaluate.add_argument("--out", required=True, type=Path, help="output folder: metrics.json")
    add_overwrite_arg(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    import_sae = commands.add_parser("import-sae", help="convert an SAE saved by SAELens or saev into a traitlens SAE")
    import_sae.add_argument("--from", dest="from_path", required=True, type=Path,
                            help="a SAELens directory (cfg.json + sae_weights.safetensors) or a saev checkpoint file")
    import_sae.add_argument("--out", required=True, type=Path, help="new traitlens SAE directory")
    add_overwrite_arg(import_sae)
    import_sae.add_argument("--layer", help="the store layer the SAE reads (recorded for traitlens evaluate)")
    import_sae.add_argument("--saev-subtract-b-dec", choices=("yes", "no"),
                            help="saev schema-1 files only: whether the encoder subtracts b_dec from its input")
    import_sae.set_defaults(run=_run_import_sae)

    layers = commands.add_parser("layers", help="list a model's layers with widths and token layouts "
                                                "(built with random weights: --weights and --random-init change nothing)")
    add_model_args(layers)
    layers.set_defaults(run=_run_layers)

    inspect = commands.add_parser("inspect", help="summarize an activation store")
    inspect.add_argument("--acts", required=True, type=Path, help="store directory")
    inspect.set_defaults(run=_run_inspect)

    demo = commands.add_parser("demo", help="the main job on the embedded benchmark and traitlens:specimens-vit-mean")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="output directory (default: runs/demo; an unfinished demo there is resumed)")
    demo.add_argument("--layer", help="block the SAE reads and the edits change (default: blocks.2, the one before the last)")
    demo.add_argument("--n-images", type=positive_int, help="specimens drawn, at least 16 (default: 1024)")
    rename_option(demo, "--images", "--n-images")
    demo.add_argument("--seed", type=non_negative_int, help="specimens seed (default: 1; the model was trained on 0)")
    add_overwrite_arg(demo, resumable=True)
    demo.set_defaults(run=_run_demo)

    report = commands.add_parser("report", help="the demo's pipeline on your model and images: extract, SAE, features, "
                                                "one page with pictures")
    add_model_args(report)
    report.add_argument("--data", type=Path,
                        help="images: class folder, image folder, image file, table, segmentation folder or saved HF dataset "
                             "(default, with traitlens:specimens-vit-mean only, the demo's model: a fresh specimens benchmark, the demo)")
    report.add_argument("--layer", help="layer the SAE reads (default: the one before the last)")
    report.add_argument("--sae-epochs", type=positive_int, default=5, help="passes of SAE training over the tokens (default 5)")
    add_device_arg(report)
    report.add_argument("--out", required=True, type=Path,
                        help="output folder: acts/, sae/, features/, report.html (an unfinished one is resumed)")
    add_overwrite_arg(report, resumable=True)
    report.set_defaults(run=_run_report)

    from traitlens.specimens.cli import add_specimens_commands

    add_specimens_commands(commands, add_model_args)

    from traitlens.explain.cli import add_explain_command

    add_explain_command(commands, add_model_args)
    from traitlens.heads.cli import add_heads_command, add_probe_command

    add_probe_command(commands)
    add_heads_command(commands, add_model_args)
    from traitlens.finetune.cli import add_finetune_commands

    add_finetune_commands(commands, add_model_args)
    from traitlens.segment.cli import add_segment_command

    add_segment_command(commands, add_model_args)
    from traitlens.features.cli import add_features_command

    add_features_command(commands)
    from traitlens.interventions.cli import add_steer_command

    add_steer_command(commands, add_model_args)
    from traitlens.interventions.attribute_cli import add_attribute_command

    add_attribute_command(commands, add_model_args)
    from traitlens.explore.cli import add_explore_command

    add_explore_command(commands, add_model_args)
    return parser


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"traitlens: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    root = logging.getLogger("traitlens")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    _configure_logging()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TraitlensError as error:
        # one line, whatever the message quotes (a file name may hold a newline)
        print("traitlens: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        # the file system said no (read-only folder, disk full, a folder where a file goes): the
        # user's environment, not a bug; what was written so far is complete files only
        where = f" {error.filename}" if error.filename else ""
        print(" ".join(f"traitlens: error: cannot use{where}: {error.strerror or error}".splitlines()), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("traitlens: interrupted (finished work is kept; run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
