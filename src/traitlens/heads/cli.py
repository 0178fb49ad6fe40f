"""``traitlens probe``: train a linear probe on a stored layer (see :mod:`traitlens.heads.probe`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from traitlens.cli_args import (
    add_overwrite_arg,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_int,
)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _run_probe(args: argparse.Namespace) -> int:
    from traitlens.heads.probe import ProbeConfig, train_probe

    head = train_probe(ProbeConfig(acts=args.acts, out=args.out, layer=args.layer, pooling=args.pooling,
                                   val_fraction=args.val_fraction, seed=args.seed, l2=args.l2, max_iter=args.max_iter,
                                   overwrite=args.overwrite))
    metrics = head.info["metrics"]
    print(f"saved probe {args.out}: layer {head.layer} ({head.pooling} pooling), {len(head.class_names)} classes, "
          f"train accuracy {_percent(metrics['train_accuracy'])} ({metrics['n_train']} images), "
          f"validation accuracy {_percent(metrics['val_accuracy'])} ({metrics['n_val']} images)")
    print(f"use it with --head {args.out} and the store's model ({head.model['spec']})")
    return 0


def add_probe_command(commands: Any) -> None:
    """Register ``traitlens probe`` on the top-level subcommands."""
    from traitlens.heads.pooling import POOLINGS

    probe = commands.add_parser("probe", help="train a linear probe (logistic regression) on a stored layer's pooled tokens")
    probe.add_argument("--acts", required=True, type=Path, help="activation store of labelled images")
    probe.add_argument("--layer", help="stored layer name or index (default: the last stored layer)")
    probe.add_argument("--pooling", choices=POOLINGS,
                       help="one vector per image: the CLS token, or the mean of the patch tokens "
                            "(default: cls when the store holds the CLS token, else mean)")
    probe.add_argument("--val-fraction", type=fraction, default=0.2, help="share of images held out for validation (default 0.2)")
    probe.add_argument("--seed", type=non_negative_int, default=0, help="seed of the train/validation split")
    probe.add_argument("--l2", type=non_negative_float, default=1e-3, help="L2 penalty on standardized features (default 1e-3)")
    probe.add_argument("--max-iter", type=positive_int, default=500, help="L-BFGS iterations at most (default 500)")
    probe.add_argument("--out", required=True, type=Path, help="new head directory (head.safetensors + head.json)")
    add_overwrite_arg(probe)
    probe.set_defaults(run=_run_probe)
