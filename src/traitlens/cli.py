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
from traitlens.errors import TraitlensError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, open_clip:ARCH/PRETRAINED, hf:REPO_OR_DIR, torchvision:NAME (options: SPEC?key=value&...)")
    parser.add_argument("--weights", type=Path, metavar="PATH", help="local weights (safetensors, or torch file read with weights_only)")
    parser.add_argument("--random-init", action="store_true", help="random weights (seed 0) instead of pretrained ones")


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
    from traitlens.demo import run_demo

    print(run_demo(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from traitlens.backbones.layout import TOKEN_SELECTIONS

    parser = argparse.ArgumentParser(prog="traitlens", description="Discover, localize and test the visual traits a vision model uses.")
    parser.add_argument("--version", action="version", version=f"traitlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser("extract", help="store a model's layer tokens for a set of images")
    _add_model_args(extract)
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

    layers = commands.add_parser("layers", help="list a model's layers with widths and token layouts")
    _add_model_args(layers)
    layers.set_defaults(run=_run_layers)

    inspect = commands.add_parser("inspect", help="summarize an activation store")
    inspect.add_argument("--acts", required=True, type=Path, help="store directory")
    inspect.set_defaults(run=_run_inspect)

    demo = commands.add_parser("demo", help="the main job on the embedded default data and model")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default: runs/demo)")
    demo.set_defaults(run=_run_demo)
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
    args = build_parser().parse_args(argv)
    _configure_logging()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TraitlensError as error:
        print(f"traitlens: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("traitlens: interrupted (finished work is kept; run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
