"""``traitlens finetune`` and ``traitlens calibrate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from traitlens.cli_args import add_device_arg, add_overwrite_arg, comma_list, positive_int


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _run_finetune(args: argparse.Namespace) -> int:
    from traitlens.finetune.training import FinetuneConfig, finetune
    from traitlens.sgd_recipe import recipe_options

    options = {name: getattr(args, name) for name in ("prompt_length", "lora_rank", "lora_alpha", "adapter_width")
               if getattr(args, name) is not None}
    saved = finetune(FinetuneConfig(model=args.model, data=args.data, method=args.method, out=args.out, classes=args.classes,
                                    n_per_class=args.n_per_class, options=options, weights=args.weights,
                                    pretrained=not args.random_init, device=args.device, overwrite=args.overwrite,
                                    **recipe_options(args)))  # type: ignore[arg-type]
    metrics = saved["metrics"]
    print(f"saved {args.out}: {saved['method']}, {metrics['n_trained_parameters']:,} of {metrics['n_model_parameters']:,} parameters "
          f"trained on {metrics['n_train']} images of {len(saved['finetuned_classes'])} classes; train accuracy "
          f"{_percent(metrics['train_accuracy'])}, validation accuracy {_percent(metrics['val_accuracy'])} ({metrics['n_val']} images)")
    print(f"use it as --model traitlens:{args.out}")
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    from traitlens.finetune.calibration import CalibrateConfig, calibrate

    result = calibrate(CalibrateConfig(model=args.model, data=args.data, method=args.method, out=args.out,
                                       finetuned_classes=args.finetuned_classes, fit_data=args.fit_data, weights=args.weights,
                                       pretrained=not args.random_init, n_folds=args.n_folds, batch_size=args.batch_size,
                                       device=args.device, overwrite=args.overwrite))
    print(f"gamma {result['gamma']:.3f} ({result['method']}) on {len(result['absent_classes'])} absent classes")
    print((args.out / "calibration.md").read_text().rstrip())
    if (args.out / "finetune.json").is_file():
        print(f"the calibrated model: --model traitlens:{args.out}")
    return 0


def add_finetune_commands(commands: Any, add_model_args: Any) -> None:
    """Register ``traitlens finetune`` (and ``traitlens calibrate``) on the top-level subcommands."""
    from traitlens.finetune.methods import finetune_methods
    from traitlens.sgd_recipe import add_recipe_args

    methods = finetune_methods()
    finetune = commands.add_parser("finetune", help="adapt a classifier to labelled images (linear, full, bitfit, vpt, lora, "
                                                    "adapter); the folder loads as --model traitlens:DIR")
    add_model_args(finetune)
    finetune.add_argument("--data", required=True, type=Path, help="labelled images: a class folder, table or saved HF dataset")
    finetune.add_argument("--method", required=True, choices=list(methods),
                          help="; ".join(f"{name}: {method.summary}" for name, method in methods.items()))
    finetune.add_argument("--classes", type=comma_list(str), metavar="C1,C2,...",
                          help="fine-tune on these classes of --data only (the model's other classes are left out)")
    finetune.add_argument("--n-per-class", type=positive_int, help="at most this many images of each class (default: all)")
    add_recipe_args(finetune, "the added parameters")
    finetune.add_argument("--prompt-length", type=positive_int, help="vpt-shallow, vpt-deep: prompt tokens (default 10)")
    finetune.add_argument("--lora-rank", type=positive_int, help="lora: rank of the updates (default 8)")
    finetune.add_argument("--lora-alpha", type=positive_int, help="lora: scale numerator, the update is scaled by alpha/rank (default 8)")
    finetune.add_argument("--adapter-width", type=positive_int, help="adapter: bottleneck units (default 8)")
    add_device_arg(finetune)
    finetune.add_argument("--out", required=True, type=Path,
                          help="new model folder (finetuned.safetensors + finetune.json); an unfinished one resumes")
    add_overwrite_arg(finetune, resumable=True)
    finetune.set_defaults(run=_run_finetune)

    from traitlens.finetune.calibration import METHODS

    calibrate = commands.add_parser("calibrate", help="one logit bias for the classes a fine-tuning left out, learned without "
                                                      "their images; accuracies before and after, the seen-unseen curve")
    add_model_args(calibrate)
    calibrate.add_argument("--data", required=True, type=Path, help="labelled images of every class: the report's test images")
    calibrate.add_argument("--finetuned-classes", type=comma_list(str), metavar="C1,C2,...",
                           help="the classes the model was fine-tuned on (default: those a traitlens finetune folder records)")
    calibrate.add_argument("--method", required=True, choices=METHODS,
                           help="gap: the average logit gap on images of the fine-tuned classes; pcv: pseudo cross-validation "
                                "(fine-tunes the base again on halves of the fine-tuned classes; a traitlens finetune folder only)")
    calibrate.add_argument("--fit-data", type=Path,
                           help="images gamma is learned from, best the fine-tuning images (default: --data); only those of "
                                "fine-tuned classes are used")
    calibrate.add_argument("--n-folds", type=positive_int, default=3, help="pcv: seeded halvings of the fine-tuned classes (default 3)")
    calibrate.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    add_device_arg(calibrate)
    calibrate.add_argument("--out", required=True, type=Path,
                           help="report folder (calibration.json, calibration.md, seen-unseen.png); for a fine-tuned folder also "
                                "the calibrated model: --model traitlens:OUT")
    add_overwrite_arg(calibrate, resumable=True)
    calibrate.set_defaults(run=_run_calibrate)
