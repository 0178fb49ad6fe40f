"""The ``traitlens`` command: parse arguments into a config, call the library, print results.

Every user error is a :class:`TraitlensError`, printed here as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from traitlens import __version__
from traitlens.cli_args import EXIT_USER_ERROR, OneLineParser, add_model_args, join_negative_values
from traitlens.errors import TraitlensError

EXIT_INTERRUPTED = 130


def _run_extract(args: argparse.Namespace) -> int:
    from traitlens.store import ExtractConfig, extract
    from traitlens.store.summary import summarize_store

    config = ExtractConfig(
        model=args.model, data=args.data, layers=tuple(args.layers.split(",")), out=args.out,
        weights=args.weights, pretrained=not args.random_init, tokens=args.tokens, dtype=args.dtype,
        batch_size=args.batch_size, strict=args.strict, images_per_shard=args.images_per_shard, device=args.device,
    )
    extract(config)
    print(summarize_store(args.out))
    return 0


def _csv(kind: type, text: str | None) -> tuple:
    return tuple(kind(item) for item in text.split(",")) if text else ()


def _run_train(args: argparse.Namespace) -> int:
    from traitlens.sae import RunConfig, SAEConfig, TrainConfig, sweep, train
    from traitlens.sae.config import Activation
    from traitlens.store import ActivationStore

    layer = ActivationStore(args.acts).layer(args.layer)
    activation: Activation = "batchtopk" if args.arch == "matryoshka" else args.arch
    widths = _csv(int, args.width) or tuple(round(e * layer.width) for e in _csv(float, args.expansion) or (16.0,))
    runs: list[RunConfig] = []
    for width in widths:
        nested = _csv(int, args.matryoshka_widths) or ((width // 16, width // 4, width) if args.arch == "matryoshka" else ())
        base = RunConfig(SAEConfig(d_in=layer.width, width=width, activation=activation, k=min(_csv(int, args.k)[0], width),
                                   matryoshka_widths=tuple(sorted(set(nested))), normalization=args.normalize))
        runs += sweep(base, k=_csv(int, args.k), lr=_csv(float, args.lr), sparsity_coefficient=_csv(float, args.l1))
    config = TrainConfig(
        acts=args.acts, layer=layer.name, out=args.out, runs=tuple(runs), tokens=args.tokens, batch_size=args.batch_size,
        seed=args.seed, checkpoint_every=args.checkpoint_every, strict=args.strict, device=args.device,
        data_init=args.data_init, bias_init=args.bias_init, dead_after_tokens=args.dead_after_tokens,
        log_to=_csv(str, args.log_to),
    )
    for directory in train(config, resume=args.resume):
        print(f"saved SAE {directory}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from traitlens.sae.evaluation import EvaluateConfig, evaluate, format_metrics

    config = EvaluateConfig(sae=args.sae, acts=args.acts, out=args.out, layer=args.layer, model=args.model,
                            weights=args.weights, pretrained=not args.random_init, batch_size=args.batch_size,
                            image_batch_size=args.image_batch_size, max_images=args.max_images, strict=args.strict,
                            device=args.device, head=args.head)
    print(format_metrics(evaluate(config)))
    return 0


def _run_import_sae(args: argparse.Namespace) -> int:
    from traitlens.sae import save_sae
    from traitlens.sae.importers import SAEImportError, import_sae
    from traitlens.sae.io import CONFIG

    if (args.out / CONFIG).exists():
        raise SAEImportError(f"{args.out} already holds an SAE; choose another --out")
    subtract = {"yes": True, "no": False, None: None}[args.saev_subtract_b_dec]
    sae, extra = import_sae(args.from_path, subtract_b_dec=subtract)
    if args.layer is not None:
        extra["layer"] = args.layer
    save_sae(sae, args.out, extra)
    print(f"imported {args.from_path} as a {sae.config.activation} SAE (d_in {sae.config.d_in}, width {sae.config.width}) into {args.out}")
    return 0


def _run_layers(args: argparse.Namespace) -> int:
    from traitlens.backbones import load_backbone

    backbone = load_backbone(args.model, weights=args.weights, pretrained=not args.random_init)
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

    if args.images is not None and args.images < 16:
        raise TraitlensError(f"--images must be at least 16 (one per species), got {args.images}")
    chosen = {"layer": args.layer, "n_images": args.images, "seed": args.seed}
    print(run_demo(DemoConfig(out=args.out, **{name: value for name, value in chosen.items() if value is not None})))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from traitlens.backbones.layout import TOKEN_SELECTIONS

    parser = OneLineParser(prog="traitlens", description="Discover, localize and test the visual traits a vision model uses.")
    parser.add_argument("--version", action="version", version=f"traitlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser("extract", help="store a model's layer tokens for a set of images")
    add_model_args(extract)
    extract.add_argument("--data", required=True, type=Path, help="class folder, image folder, CSV/Parquet, segmentation folder or saved HF dataset")
    extract.add_argument("--layers", required=True, help="comma-separated block indices (negative from the end) or module names")
    extract.add_argument("--out", required=True, type=Path, help="store directory (an unfinished one is resumed)")
    extract.add_argument("--tokens", choices=TOKEN_SELECTIONS, default="patch", help="which tokens to keep (default: patch)")
    extract.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype (default: float16)")
    extract.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    extract.add_argument("--images-per-shard", type=int, default=None, help="images per shard file (default: sized to ~512 MiB)")
    extract.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    extract.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    extract.set_defaults(run=_run_extract)

    train = commands.add_parser("train", help="train sparse autoencoders (one, or a sweep) on a stored layer")
    train.add_argument("--acts", required=True, type=Path, help="activation store directory")
    train.add_argument("--layer", required=True, help="stored layer name or index")
    train.add_argument("--arch", choices=("topk", "batchtopk", "relu", "jumprelu", "matryoshka"), default="topk",
                       help="topk, batchtopk, relu (L1), jumprelu (L0) or matryoshka (BatchTopK with nested prefixes)")
    train.add_argument("--k", default="32", help="active latents per token (TopK family); comma-separated values sweep")
    train.add_argument("--l1", default="0.0", help="sparsity coefficient: L1 for relu, L0 for jumprelu; comma-separated sweeps")
    size = train.add_mutually_exclusive_group()
    size.add_argument("--width", help="number of latents; comma-separated values sweep")
    size.add_argument("--expansion", help="width as a multiple of the layer width (default 16); comma-separated sweeps")
    train.add_argument("--matryoshka-widths", help="nested prefix widths ending at the width (default width/16, width/4, width)")
    train.add_argument("--normalize", choices=("none", "norm", "standardize"), default="norm",
                       help="input normalization from the store's statistics (default: norm, mean token norm -> sqrt(d))")
    train.add_argument("--batch-size", type=int, default=4096, help="tokens per step (default 4096)")
    train.add_argument("--lr", default="3e-4", help="peak learning rate; comma-separated values sweep")
    train.add_argument("--tokens", required=True, type=int, help="tokens to train on")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data-init", action="store_true", help="initialize decoder rows from data points")
    train.add_argument("--bias-init", choices=("geometric_median", "mean", "zero"), default="geometric_median")
    train.add_argument("--dead-after-tokens", type=int, default=1_000_000, help="a latent silent this long is dead (AuxK)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    train.add_argument("--out", required=True, type=Path, help="output directory (a sweep gets one folder per SAE)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--strict", action="store_true", help="stop at NaN/Inf activations instead of skipping them")
    train.add_argument("--device", default="auto")
    train.add_argument("--log-to", help="also log to tensorboard and/or wandb (comma-separated)")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser("evaluate", help="measure a saved SAE on a store (and, with --model, downstream)")
    evaluate.add_argument("--sae", required=True, type=Path, help="saved SAE directory")
    evaluate.add_argument("--acts", required=True, type=Path, help="activation store directory")
    evaluate.add_argument("--model", metavar="SPEC", help="the store's model, to measure accuracy and logit KL with the SAE spliced in")
    evaluate.add_argument("--weights", type=Path, metavar="PATH")
    evaluate.add_argument("--random-init", action="store_true")
    evaluate.add_argument("--layer", help="stored layer (default: the one the SAE was trained on)")
    evaluate.add_argument("--batch-size", type=int, default=4096, help="tokens per batch")
    evaluate.add_argument("--image-batch-size", type=int, default=16, help="images per forward pass (with --model)")
    evaluate.add_argument("--max-images", type=int, metavar="N", help="downstream fidelity on the first N stored images (default: all)")
    evaluate.add_argument("--head", type=Path, metavar="DIR", help="with --model: a probe (traitlens probe --out) replaces the model's head")
    evaluate.add_argument("--strict", action="store_true", help="NaN/Inf activations are an error instead of skipped")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", required=True, type=Path, help="metrics JSON file")
    evaluate.set_defaults(run=_run_evaluate)

    import_sae = commands.add_parser("import-sae", help="convert an SAE saved by SAELens or saev into a traitlens SAE")
    import_sae.add_argument("--from", dest="from_path", required=True, type=Path,
                            help="a SAELens directory (cfg.json + sae_weights.safetensors) or a saev checkpoint file")
    import_sae.add_argument("--out", required=True, type=Path, help="new traitlens SAE directory")
    import_sae.add_argument("--layer", help="the store layer the SAE reads (recorded for traitlens evaluate)")
    import_sae.add_argument("--saev-subtract-b-dec", choices=("yes", "no"),
                            help="saev schema-1 files only: whether the encoder subtracts b_dec from its input")
    import_sae.set_defaults(run=_run_import_sae)

    layers = commands.add_parser("layers", help="list a model's layers with widths and token layouts")
    add_model_args(layers)
    layers.set_defaults(run=_run_layers)

    inspect = commands.add_parser("inspect", help="summarize an activation store")
    inspect.add_argument("--acts", required=True, type=Path, help="store directory")
    inspect.set_defaults(run=_run_inspect)

    demo = commands.add_parser("demo", help="the main job on the embedded default data and model")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)")
    demo.add_argument("--layer", help="block the SAE reads and the edits change (default: blocks.1)")
    demo.add_argument("--images", type=int, help="specimens drawn (default: 1024)")
    demo.add_argument("--seed", type=int, help="specimens seed (default: 1; the model was trained on 0)")
    demo.set_defaults(run=_run_demo)

    from traitlens.specimens.cli import add_specimens_commands

    add_specimens_commands(commands, add_model_args)

    from traitlens.explain.cli import add_explain_command

    add_explain_command(commands, add_model_args)
    from traitlens.heads.cli import add_probe_command

    add_probe_command(commands)
    from traitlens.features.cli import add_features_command

    add_features_command(commands)
    from traitlens.interventions.cli import add_steer_command

    add_steer_command(commands, add_model_args)
    from traitlens.interventions.attribute_cli import add_attribute_command

    add_attribute_command(commands, add_model_args)
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
        print(f"traitlens: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        # the file system said no (read-only folder, disk full, a folder where a file goes): the
        # user's environment, not a bug; what was written so far is complete files only
        where = f" {error.filename}" if error.filename else ""
        print(f"traitlens: error: cannot use{where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("traitlens: interrupted (finished work is kept; run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
