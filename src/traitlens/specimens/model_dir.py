"""A trained classifier saved as a directory: ``model.safetensors`` + ``model.json``.

``traitlens specimens train-model`` writes one; ``--model traitlens:DIR`` (or the embedded
``traitlens:specimens-vit``) loads it through the same adapter interface as any timm model, with
its head and class names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from traitlens.atomic import atomic_write_json
from traitlens.backbones.preprocess import HALF_MEAN, HALF_STD, Preprocess
from traitlens.checks import check_float, check_int, saved_class_names
from traitlens.cli_args import option_name
from traitlens.errors import SpecError, WeightsUnavailableError
from traitlens.json_config import read_json_config
from traitlens.specimens.conv_stem import ConvStem, conv_stem_depth

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = "traitlens.model"
POOLS = ("cls", "mean")
STEMS = ("patch", "conv")


def _preprocess(img_size: int) -> Preprocess:
    # benchmark images are made at 96 px: a plain resize for them and for anything else
    return Preprocess(size_hw=(img_size, img_size), resize=img_size, mean=HALF_MEAN, std=HALF_STD,
                      interpolation="bilinear", resize_mode="squash")


@dataclass(frozen=True)
class ViTShape:
    """A small timm ViT: ``img_size / patch_size`` patches a side and a linear head that reads the
    CLS token (``pool="cls"``) or the mean of the patch tokens (``pool="mean"``, no CLS token, so
    the last block's patch tokens are all the head sees). Tokens come from timm's linear patch
    projection (``stem="patch"``) or from a few strided convolutions (``stem="conv"``, see
    :mod:`traitlens.specimens.conv_stem`), on the same grid."""

    TIMM_NAME: ClassVar[str] = "vit_tiny_patch16_224"  # timm's ViT, resized by the fields below
    ADDED_LATER: ClassVar[dict[str, Any]] = {"pool": "cls", "stem": "patch"}
    """Fields a model directory written before they existed lacks, with the value it meant."""

    img_size: int = 96
    patch_size: int = 12
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 3.0
    pool: str = "cls"
    stem: str = "patch"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            check_int(getattr(self, name), option_name(name), SpecError)
        check_float(self.mlp_ratio, "--mlp-ratio", SpecError, above=True)
        if self.img_size % self.patch_size:
            raise SpecError(f"image size {self.img_size} is not a multiple of patch size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise SpecError(f"width (--embed-dim) {self.embed_dim} is not a multiple of the number of heads {self.num_heads}")
        if self.pool not in POOLS:
            raise SpecError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.stem not in STEMS:
            raise SpecError(f"--stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.stem == "conv":
            conv_stem_depth(self.patch_size)

    def timm_options(self, num_classes: int) -> dict[str, Any]:
        options = {**asdict(self), "num_classes": num_classes}
        del options["pool"], options["stem"]
        if self.stem == "conv":
            options["embed_layer"] = ConvStem
        return options | ({"class_token": False, "global_pool": "avg"} if self.pool == "mean" else {})

    def preprocess(self) -> Preprocess:
        return _preprocess(self.img_size)


@dataclass(frozen=True)
class CNNShape:
    """A small timm ResNet (basic blocks): four stages of ``channels`` with ``blocks`` each, dilated
    past ``output_stride`` so that the last stage keeps a usable grid (96 px / 8 = 12 x 12)."""

    TIMM_NAME: ClassVar[str] = "resnet18"  # timm's ResNet, resized by the fields below
    ADDED_LATER: ClassVar[dict[str, Any]] = {}

    img_size: int = 96
    channels: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    output_stride: int = 8

    def __post_init__(self) -> None:
        check_int(self.img_size, "--img-size", SpecError)
        for name in ("channels", "blocks"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != 4:
                raise SpecError(f"{option_name(name)} must give 4 values (one per stage), got {values!r}")
            for value in values:
                check_int(value, option_name(name), SpecError)
        if self.output_stride not in (8, 16, 32):
            raise SpecError(f"--output-stride must be 8, 16 or 32, got {self.output_stride!r}")

    def timm_options(self, num_classes: int) -> dict[str, Any]:
        return {"channels": self.channels, "layers": self.blocks, "output_stride": self.output_stride,
                "num_classes": num_classes}

    def preprocess(self) -> Preprocess:
        return _preprocess(self.img_size)


ModelShape = ViTShape | CNNShape
SHAPES: dict[str, type[ViTShape] | type[CNNShape]] = {f"timm:{shape.TIMM_NAME}": shape for shape in (ViTShape, CNNShape)}
"""Every architecture a model directory may hold, by its ``architecture`` field."""


def architecture_of(shape: ModelShape) -> str:
    return f"timm:{shape.TIMM_NAME}"


def shape_from_dict(shape_type: type[ViTShape] | type[CNNShape], data: Any) -> ModelShape:
    """A shape from its JSON form (lists back to tuples; fields added later take their old meaning)."""
    names = [item.name for item in fields(shape_type)]
    if not isinstance(data, dict):
        raise ValueError(f"shape must give {', '.join(names)}")
    data = shape_type.ADDED_LATER | data
    if sorted(data) != sorted(names):
        raise ValueError(f"shape must give {', '.join(names)}")
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    return shape_type(**values)


@dataclass(frozen=True)
class SavedModel:
    shape: ModelShape
    class_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        import timm

        return timm.create_model(self.shape.TIMM_NAME, pretrained=False, **self.shape.timm_options(len(self.class_names)))


def save_model_dir(directory: Path, model: torch.nn.Module, saved: SavedModel) -> None:
    """Weights first, then the config that makes the directory complete."""
    from traitlens.atomic import save_tensors

    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, dict(model.state_dict()))
    atomic_write_json(directory / CONFIG, {"format": FORMAT, "architecture": architecture_of(saved.shape),
                                           "shape": asdict(saved.shape), "class_names": list(saved.class_names), **saved.extra})


def read_model_dir(directory: Path) -> SavedModel:
    """The model directory's config, every field checked; one line for a missing or damaged one."""
    missing = f"{directory} is not a traitlens model directory ({CONFIG} and {WEIGHTS} expected)"
    if not (directory / WEIGHTS).is_file():
        raise WeightsUnavailableError(missing)
    path = directory / CONFIG
    data = read_json_config(path, FORMAT, "model config", WeightsUnavailableError, missing)
    shape_type = SHAPES.get(data.get("architecture"))  # type: ignore[arg-type]
    if shape_type is None:
        raise WeightsUnavailableError(f"{path} describes a {data.get('architecture')!r} model; this traitlens reads "
                                      f"{', '.join(SHAPES)}")
    try:
        shape, class_names = shape_from_dict(shape_type, data.get("shape")), saved_class_names(data.get("class_names"))
    except (ValueError, TypeError, SpecError) as error:
        raise WeightsUnavailableError(f"damaged model config {path}: {error}") from error
    extra = {key: value for key, value in data.items() if key not in ("format", "architecture", "shape", "class_names")}
    return SavedModel(shape, class_names, extra)
