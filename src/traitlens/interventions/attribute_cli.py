"""``traitlens attribute``: which SAE latents separate a class from its look-alikes
(see :mod:`traitlens.interventions.attribution`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from traitlens.cli_args import add_head_arg, non_negative_float, positive_int, rename_option

_SHOWN_LATENTS = 10  # printed each way; the files hold the whole ranking


def _ranked_lines(title: str, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return [f"{title}: none"]
    lines = [f"{title}:", f"  {'latent':>7} {'attribution':>12} {'active':>7} {'activation':>11}"]
    lines += [f"  {row['latent']:>7} {row['mean_attribution']:>+12.4f} {row['active_share']:>7.0%} {row['mean_activation']:>11.4f}"
              for row in rows[:_SHOWN_LATENTS]]
    return lines


def format_attribution(result: dict[str, Any]) -> str:
    """A few lines for people: the score and its split, then the strongest latents each way."""
    refs = ", ".join(result["refs"])
    lines = [f"{result['target']} vs {refs} (gamma {result['config']['gamma']:g}) at {result['layer']} ({result['tokens']} tokens), "
             f"{result['n_images']} images ({result['images']}): mean score {result['mean_score']:.4f}; attribution: latents "
             f"{result['mean_latent_attribution']:.4f}, reconstruction error {result['mean_error_attribution']:.4f}, "
             f"decoder bias {result['mean_bias_attribution']:.4f}"]
    lines += _ranked_lines(f"evidence for {result['target']}", result["for_target"])
    lines += _ranked_lines(f"evidence for {refs}", result["for_refs"])
    return "\n".join(lines)


def _run_attribute(args: argparse.Namespace) -> int:
    from traitlens.interventions.attribution import (
        REPORT,
        RESULT,
        AttributionConfig,
        comparative_attribution,
    )

    config = AttributionConfig(model=args.model, sae=args.sae, data=args.data, target=args.target,
                               refs=tuple(ref.strip() for ref in args.refs.split(",") if ref.strip()), gamma=args.gamma,
                               layer=args.layer, tokens=args.tokens, images=args.average_over, batch_size=args.batch_size,
                               max_images=args.max_images, top=args.top, out=args.out, weights=args.weights, head=args.head,
                               pretrained=not args.random_init, device=args.device, overwrite=args.overwrite)
    print(format_attribution(comparative_attribution(config)))
    if args.out is not None:
        print(f"all latents: {args.out / RESULT}, report: {args.out / REPORT}")
    return 0


def add_attribute_command(commands: Any, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``traitlens attribute`` on the top-level subcommands."""
    from traitlens.interventions.attribution import IMAGE_CHOICES
    from traitlens.interventions.cli import add_sae_run_args

    attribute = commands.add_parser("attribute", help="rank the SAE latents that separate a class from its look-alikes")
    add_model_args(attribute)
    add_head_arg(attribute)
    add_sae_run_args(attribute, 16, "output folder: attribution.json and attribution.md")
    attribute.add_argument("--target", required=True, help="class A (name or index)")
    attribute.add_argument("--refs", required=True, help="look-alike classes B[,C...] (names or indices)")
    attribute.add_argument("--gamma", type=non_negative_float, default=1.0, help="score y_A - gamma * mean(y_refs) (default 1; 0: A alone)")
    attribute.add_argument("--average-over", choices=IMAGE_CHOICES, default="target",
                           help="average over the images labelled with the target class (default) or all images")
    rename_option(attribute, "--images", "--average-over")
    attribute.add_argument("--top", type=positive_int, default=20, help="latents ranked each way (default 20)")
    attribute.set_defaults(run=_run_attribute)
