"""``traitlens specimens ...``: generate the benchmark, train its model, score against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _run_train_model(args: argparse.Namespace) -> int:
    from traitlens.specimens.model_dir import ViTShape
    from traitlens.specimens.training import TrainModelConfig, train_model

    shape = ViTShape(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
                     num_heads=args.num_heads, mlp_ratio=args.mlp_ratio)
    config = TrainModelConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              val_fraction=args.val_fraction, seed=args.seed, shape=shape)
    out = train_model(config)
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    print(f"saved {out}: train accuracy {metrics['train_accuracy']:.1%}, validation accuracy "
          f"{'n/a' if metrics['val_accuracy'] is None else format(metrics['val_accuracy'], '.1%')} ({metrics['n_val']} images)")
    print(f"use it as --model traitlens:{out}")
    return 0


def _run_accuracy(args: argparse.Namespace) -> int:
    from traitlens.specimens.model_accuracy import AccuracyConfig, model_accuracy

    result = model_accuracy(AccuracyConfig(model=args.model, data=args.data, weights=args.weights, pretrained=not args.random_init))
    print(f"{result['model']} on {result['data']}: accuracy {result['accuracy']:.2%} over {result['n_images']} images")
    worst = sorted(result["per_class"].items(), key=lambda item: item[1])[:3]
    print("  lowest classes: " + ", ".join(f"{name} {value:.1%}" for name, value in worst))
    if args.out is not None:
        from traitlens.store.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


def add_specimens_commands(commands: Any, add_model_args: Any) -> None:
    specimens = commands.add_parser("specimens", help="the ground-truth benchmark: generate, train-model, accuracy, score")
    sub = specimens.add_subparsers(dest="specimens_command", required=True, metavar="COMMAND")

    train = sub.add_parser("train-model", help="train a small ViT from scratch on a class folder")
    train.add_argument("--data", required=True, type=Path, help="class folder (e.g. DIR/images of a generated benchmark)")
    train.add_argument("--out", required=True, type=Path, help="model directory (an unfinished one is resumed)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--img-size", type=int, default=96)
    train.add_argument("--patch-size", type=int, default=12)
    train.add_argument("--embed-dim", type=int, default=128)
    train.add_argument("--depth", type=int, default=4)
    train.add_argument("--num-heads", type=int, default=4)
    train.add_argument("--mlp-ratio", type=float, default=3.0)
    train.set_defaults(run=_run_train_model)

    accuracy = sub.add_parser("accuracy", help="top-1 accuracy of a classifier on a class folder")
    add_model_args(accuracy)
    accuracy.add_argument("--data", required=True, type=Path, help="class folder whose class names are the model's")
    accuracy.add_argument("--out", type=Path, help="also write the result as JSON")
    accuracy.set_defaults(run=_run_accuracy)
