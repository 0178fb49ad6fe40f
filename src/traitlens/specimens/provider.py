"""``traitlens:specimens-vit`` — the embedded default model —, the other embedded models of the
specimens zoo, or ``traitlens:DIR``, a model directory written by ``traitlens specimens
train-model`` (small timm models, ViTs or a ResNet, with a head) or by ``traitlens finetune``.

Registered with :mod:`traitlens.backbones` from here, the package that owns the models, through the
``traitlens.backbones`` entry-point group (pyproject.toml): any installed package can add a
provider the same way."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from traitlens.backbones.backbone import Backbone
from traitlens.backbones.spec import LoadRequest, register_provider
from traitlens.backbones.timm_provider import timm_backbone
from traitlens.backbones.weights import build_model, load_into, read_state_dict
from traitlens.errors import SpecError
from traitlens.finetune import is_finetuned_folder, load_finetuned
from traitlens.specimens.model_dir import WEIGHTS, read_model_dir

EMBEDDED = {"specimens-vit": "specimens/default_model", "specimens-vit-mean": "specimens/zoo/vit-mean",
            "specimens-cnn": "specimens/zoo/cnn"}
"""The specimens model zoo shipped inside the package (docs/results.md says how each was trained)."""


def model_directory(name: str) -> Path:
    """The directory behind ``traitlens:NAME``: an embedded model, or a path."""
    if name in EMBEDDED:
        return Path(str(resources.files("traitlens") / EMBEDDED[name]))
    try:
        directory = Path(name).expanduser()
    except RuntimeError:  # ``~someone`` without a home directory
        directory = Path(name)
    if not directory.is_dir():
        raise SpecError(f"traitlens has no embedded model {name!r} ({', '.join(EMBEDDED)}) and {name} is not a model directory")
    return directory


@register_provider("traitlens")
def load_traitlens(request: LoadRequest) -> Backbone:
    directory = model_directory(request.spec.name)
    if is_finetuned_folder(directory):
        return load_finetuned(directory, request.spec.text, request.pretrained, request.weights)
    saved = read_model_dir(directory)

    def create(pretrained: bool) -> nn.Module:
        model = saved.build()
        if pretrained:  # "pretrained" here is the directory's own trained weights
            load_into(model, read_state_dict(directory / WEIGHTS), directory / WEIGHTS, request.spec.text)
        return model

    model = build_model(request, f"the model directory {directory}", create)
    has_real_head = request.pretrained or request.weights is not None
    return timm_backbone(request.spec.text, model, saved.shape.preprocess(),
                         list(saved.class_names) if has_real_head else None)
