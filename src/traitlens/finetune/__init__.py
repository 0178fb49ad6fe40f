"""Adapting backbones: parameter-efficient fine-tuning (``traitlens finetune``) and calibration of
the classes a fine-tuning left out (``traitlens calibrate``); the results load as models."""

from traitlens.finetune.errors import FinetuneError
from traitlens.finetune.saved import is_finetuned_folder, load_finetuned
from traitlens.finetune.training import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "FinetuneError", "finetune", "is_finetuned_folder", "load_finetuned"]
