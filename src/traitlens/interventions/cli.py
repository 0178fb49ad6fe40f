"""``traitlens steer``: edit SAE latents in the forward pass and report what the model predicts
(see :mod:`traitlens.interventions.steer`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlens.backbones import TOKEN_SELECTIONS
from traitlens.cli_args import (
    add_device_arg,
    add_head_arg,
    add_overwrite_arg,
    comma_list,
    non_negative_int,
    positive_int,
)

_SHOWN_IMAGES = 10  # up to this many images, every image's prediction is printed


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def format_effect(effect: dict[str, Any], rows: list[list[str]] | None = None) -> str:
    """A few lines for people: change rates, the target's share of them, per-image predictions."""
    edits = ", ".join(effect["config"]["edits"])
    lines = [f"edit {edits} at {effect['layer']} ({effect['tokens']} tokens) on {effect['n_images']} images: "
             f"prediction changed on {effect['n_changed']} ({_rate(effect['change_rate'])})"]
    if "target" in effect:
        lines.append(f"  target {effect['target']}: target-change rate {_rate(effect['target_change_rate'])} "
                     f"({effect['n_to_target']} to it, {effect['n_from_target']} from it), other-change rate "
                     f"{_rate(effect['other_change_rate'])}, mean probability change {effect['target_probability_change']:+.4f}")
    if "patch_change_rate" in effect:
        lines.append(f"  patch probe: {_rate(effect['patch_change_rate'])} of patch predictions changed")
    for source, before, after, p_before, p_after in rows or []:
        lines.append(f"  {source}: {before} (p={float(p_before):.3f}) -> {after} (p of {before} now {float(p_after):.3f})")
    return "\n".join(lines)


def _run_steer(args: argparse.Namespace) -> int:
    import csv

    from traitlens.interventions.steer import PREDICTIONS, SteerConfig, steer

    config = SteerConfig(model=args.model, sae=args.sae, data=args.data, edits=tuple(args.edit), out=args.out, layer=args.layer,
                         tokens=args.tokens, patches=args.patches, target=args.target, features=args.features,
                         patch_probe=args.patch_probe, weights=args.weights, pretrained=not args.random_init, head=args.head,
                         batch_size=args.batch_size, max_images=args.max_images, device=args.device, overwrite=args.overwrite)
    effect = steer(config)
    rows = None
    if args.out is not None and effect["n_images"] <= _SHOWN_IMAGES:
        with (args.out / PREDICTIONS).open(newline="") as handle:
            rows = [[row["source"], row["before"], row["after"], row["p_before"], row["p_after"]] for row in csv.DictReader(handle)]
    print(format_effect(effect, rows))
    if args.out is not None:
        print(f"per-image predictions: {args.out / PREDICTIONS}")
    return 0


def add_sae_run_args(parser: argparse.ArgumentParser, batch_size: int, out_help: str) -> None:
    """The options every intervention command takes: the SAE, the images, where the SAE reads,
    how many images at a time, the device and the output directory."""
    parser.add_argument("--sae", required=True, type=Path, help="SAE directory (traitlens train or import-sae)")
    parser.add_argument("--data", required=True, type=Path,
                        help="images: class folder, image folder, image file, table, segmentation folder or saved HF dataset")
    parser.add_argument("--layer", help="layer the SAE reads (default: the one it was trained on)")
    parser.add_argument("--tokens", choices=TOKEN_SELECTIONS, help="tokens the SAE reads (default: those it was trained on)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"images per pass (default {batch_size})")
    parser.add_argument("--max-images", type=positive_int, help="only the first N images")
    add_device_arg(parser)
    parser.add_argument("--out", type=Path, help=out_help)
    add_overwrite_arg(parser, resumable=True)


def add_steer_command(commands: Any, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``traitlens steer`` on the top-level subcommands."""
    from traitlens.interventions.edits import EDIT_SYNTAX, LatentEdit

    steer = commands.add_parser("steer", help="edit SAE latents inside the forward pass and measure the change in predictions")
    add_model_args(steer)
    add_head_arg(steer)
    add_sae_run_args(steer, 32, "output folder: predictions.csv and effect.json")
    steer.add_argument("--edit", required=True, action="append", type=LatentEdit.argument, metavar="EDIT",
                       help=f"repeatable: {EDIT_SYNTAX}")
    steer.add_argument("--patches", type=comma_list(non_negative_int),
                       help="comma-separated patch indices (row-major) to edit (default: every token the SAE reads)")
    steer.add_argument("--target", help="class whose gains and losses are the intended effect (name or index)")
    steer.add_argument("--features", type=Path,
                       help="`traitlens features` output of this SAE, for edits relative to a latent's observed max")
    steer.add_argument("--patch-probe", type=Path, help="probe (`traitlens probe`) applied to each patch token: per-patch predictions")
    steer.set_defaults(run=_run_steer)
