"""SAEs saved by SAELens and by saev, turned into traitlens ``SparseAutoencoder``s.

Every importer returns ``(sae, extra)``; ``save_sae(sae, out, extra)`` then writes a traitlens SAE
whose ``config.json["imported"]`` records the source, the peer's own config and every conversion
made on the way. The peer's math is reproduced exactly: nothing is renormalized, and what a
traitlens SAE cannot express is refused with one line naming the file, never approximated.

SAELens (``SAE.save_model`` / ``save_inference_model``: ``cfg.json`` + ``sae_weights.safetensors``;
6.x configs and the pre-6.0 ones with ``hook_point`` / ``activation_fn_str``):

- ``standard`` -> relu; ``topk`` -> topk; ``jumprelu`` -> jumprelu, or batchtopk with its
  threshold when ``metadata.training_architecture`` says it was trained as (Matryoshka) BatchTopK,
  which is how SAELens saves those for inference; ``batchtopk`` / ``matryoshka_batchtopk``
  training checkpoints -> batchtopk with ``topk_threshold`` as the threshold, as SAELens' own
  ``save_inference_model`` would convert them.
- ``W_enc`` (d_in, d_sae) is transposed; ``apply_b_dec_to_input=False`` folds ``b_dec @ W_enc``
  into ``b_enc``; ``rescale_acts_by_decoder_norm`` folds the decoder row norms into the encoder;
  a pre-6.0 finetuning ``scaling_factor`` is folded into the decoder rows. Thresholds below zero
  act as zero (SAELens applies ReLU first); JumpReLU thresholds become ``log_threshold`` (zero as
  ``-inf``), exact up to float32 rounding of ``exp(log(threshold))``.
- ``normalize_activations``: ``none``; ``expected_average_only_in`` when the checkpoint's
  ``activation_scaler.json`` holds the trainer's scaling factor (it becomes ``input_scale``).
  Refused: ``constant_norm_rescale`` and ``layer_norm`` (per-token run-time normalizations),
  ``covariance_whitening`` (folded into the weights only at the end of training), and
  ``expected_average_only_in`` without a scaling factor beside it.
- Refused architectures: everything else (gated, abstopk, transcoders, temporal, matching pursuit).

saev (one file: a JSON header line, then a ``torch.save``d state dict, read with
``weights_only=True``; all header variants of OSU-NLP-Group/saev's ``nn.dump``):

- No ``schema`` (saev 0.1.0 on PyPI and earlier): ``d_vit``/``exp_factor``, ReLU, encoding
  ``relu((x - b_dec) @ W_enc + b_enc)``.
- ``schema`` 1: ``cls`` names the activation (Relu, TopK, BatchTopK) or the config holds it.
  saev changed its encoder within schema 1 (earlier versions subtract ``b_dec`` from the input,
  later ones do not) without recording it, so these need an explicit ``subtract_b_dec``.
- ``schema`` 2-5: ``cfg.activation = {"cls", "params"}``, encoding ``x @ W_enc + b_enc``
  (``b_dec`` is folded into ``b_enc``). Relu -> relu; TopK -> topk (saev keeps negative values
  that make the top k, traitlens applies ReLU to them: equal whenever the k-th largest
  pre-activation is positive); BatchTopK -> batchtopk with the inference threshold
  ``activation.threshold`` (checkpoints from before saev stored it are refused, their BatchTopK
  depends on the batch). Other activations (AbsBatchTopK, JumpRelu) are refused.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from traitlens.errors import TraitlensError, first_line
from traitlens.json_config import parse_standard_json
from traitlens.sae.config import SAEConfig, SAEConfigError, json_widths
from traitlens.sae.io import CONFIG, check_finite, load_sae_with_config
from traitlens.sae.model import SparseAutoencoder

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
SAELENS_BATCHTOPK = ("batchtopk", "matryoshka_batchtopk")
SAEV_SCHEMAS = (None, 1, 2, 3, 4, 5)
SAEV_ACTIVATIONS: dict[str, str] = {"Relu": "relu", "TopK": "topk", "BatchTopK": "batchtopk"}

_SAELENS_NORMALIZATION_REFUSALS = {
    "constant_norm_rescale": "rescales every token to norm sqrt(d_in) at run time",
    "layer_norm": "standardizes every token at run time",
    "covariance_whitening": "is folded into the weights only at the end of SAELens training; import the final SAE",
}


class SAEImportError(TraitlensError):
    """A peer's SAE is missing, damaged, or uses something a traitlens SAE cannot express."""


@dataclass
class _Weights:
    """A peer SAE in traitlens' layout (one row per latent), in float64 while conversions are folded
    in so that they add no rounding of their own."""

    W_enc_wd: torch.Tensor
    b_enc_w: torch.Tensor
    W_dec_wd: torch.Tensor
    b_dec_d: torch.Tensor
    threshold_w: torch.Tensor | None = None  # compared with the pre-activations themselves
    input_scale: float = 1.0
    conversions: list[str] = field(default_factory=list)

    def fold_decoder_bias(self) -> None:
        """The peer encodes ``x @ W_enc + b_enc``; traitlens subtracts ``b_dec`` first, which this undoes."""
        self.b_enc_w = self.b_enc_w + self.W_enc_wd @ self.b_dec_d
        self.conversions.append("b_dec @ W_enc folded into b_enc: the peer does not subtract b_dec before encoding")

    def fold_decoder_norms(self) -> None:
        """The peer scales pre-activations by the decoder row norms and divides latents by them before
        decoding: the same SAE as unit-norm decoder rows with the norms moved into the encoder."""
        norms_w = self.W_dec_wd.norm(dim=1).clamp_min(1e-8)
        self.W_enc_wd = self.W_enc_wd * norms_w[:, None]
        self.b_enc_w = self.b_enc_w * norms_w
        self.W_dec_wd = self.W_dec_wd / norms_w[:, None]
        self.conversions.append("decoder row norms folded into the encoder (rescale_acts_by_decoder_norm)")

    def to_sae(self, config: SAEConfig) -> SparseAutoencoder:
        sae = SparseAutoencoder(config)
        threshold_w = torch.zeros(config.width, dtype=torch.float64)
        if self.threshold_w is not None:
            # peers apply ReLU before thresholding, so a threshold below zero acts as zero
            threshold_w = self.threshold_w.clamp_min(0.0)
        state = {
            "W_enc": self.W_enc_wd, "b_enc": self.b_enc_w, "W_dec": self.W_dec_wd, "b_dec": self.b_dec_d,
            "input_mean": torch.zeros(config.d_in), "input_scale": torch.full((config.d_in,), self.input_scale),
            "threshold": threshold_w if config.activation == "batchtopk" else torch.zeros(config.width),
        }
        if config.activation == "jumprelu":
            state["log_threshold"] = threshold_w.log()  # a zero threshold becomes -inf: plain ReLU
        sae.load_state_dict({name: tensor.to(torch.float32) for name, tensor in state.items()}, strict=True)
        return sae


# -- shared reading and checking ----------------------------------------------------------------
def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAEImportError(f"cannot import {path.parent}: {path.name} missing")
    try:
        data = parse_standard_json(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: bad JSON, bad UTF-8 or a NaN
        raise SAEImportError(f"cannot import {path}: damaged JSON: {first_line(error)}") from error
    if not isinstance(data, dict):
        raise SAEImportError(f"cannot import {path}: expected a JSON object")
    return data


def _object(value: Any) -> dict[str, Any]:
    """A nested config object, or nothing when it is absent or not an object."""
    return value if isinstance(value, dict) else {}


def _flag(cfg: dict[str, Any], name: str, default: bool, path: Path) -> bool:
    """A true/false setting; a string such as "false" would otherwise count as true."""
    value = cfg.get(name, default)
    if not isinstance(value, bool):
        raise SAEImportError(f"cannot import {path}: {name} must be true or false, got {value!r}")
    return value


def _positive_int(value: Any, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEImportError(f"cannot import {path}: {name} must be a positive integer, got {value!r}")
    return value


def _k(value: Any, path: Path) -> int:
    """SAELens allows a fractional BatchTopK k; traitlens keeps the nearest integer (used only if the
    SAE is trained further: inference uses the threshold)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise SAEImportError(f"cannot import {path}: k must be a positive number, got {value!r}")
    return max(1, round(value))


def _checked(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], optional: dict[str, tuple[int, ...]],
             path: Path) -> dict[str, torch.Tensor]:
    """The tensors named in ``shapes`` (and those of ``optional`` present), in float64, with their
    shapes checked; any other tensor is refused because its role in the peer's math is unknown."""
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise SAEImportError(f"cannot import {path}: tensors missing: {', '.join(missing)}")
    unexpected = sorted(set(tensors) - set(shapes) - set(optional))
    if unexpected:
        raise SAEImportError(f"cannot import {path}: unexpected tensors {', '.join(unexpected)}")
    checked = {}
    for name, expected in {**shapes, **optional}.items():
        tensor = tensors.get(name)
        if tensor is None:
            continue
        if tuple(tensor.shape) != expected:
            raise SAEImportError(f"cannot import {path}: tensor {name} has shape {tuple(tensor.shape)}, expected {expected}")
        checked[name] = tensor.detach().to(torch.float64)
    check_finite(f"cannot import {path}", checked, SAEImportError)
    return checked


def _config(path: Path, **values: Any) -> SAEConfig:
    try:
        return SAEConfig(**values)
    except SAEConfigError as error:
        raise SAEImportError(f"cannot import {path}: {error}") from error


def _widths(value: Any, path: Path) -> tuple[int, ...]:
    try:
        return json_widths(value)
    except SAEConfigError as error:
        raise SAEImportError(f"cannot import {path}: {error}") from error


# -- SAELens ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SAELensArchitecture:
    """What a SAELens config means in traitlens terms."""

    activation: str
    k: int = 32
    matryoshka_widths: tuple[int, ...] = ()
    rescale_by_decoder_norm: bool = False
    threshold_tensor: str | None = None  # the state-dict tensor holding the inference threshold


def _saelens_architecture(cfg: dict[str, Any], tensor_names: set[str], path: Path) -> _SAELensArchitecture:
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))  # pre-6.0 configs
    if activation_fn not in (None, "relu", "topk"):
        raise SAEImportError(f"cannot import {path}: SAELens activation_fn {activation_fn!r} cannot be expressed by a traitlens SAE")
    rescale = _flag(cfg, "rescale_acts_by_decoder_norm", False, path)
    if architecture == "standard" and activation_fn == "topk":  # pre-6.0 TopK
        return _SAELensArchitecture("topk", k=_k(_object(cfg.get("activation_fn_kwargs")).get("k"), path))
    if architecture == "standard":
        return _SAELensArchitecture("relu")
    if architecture == "topk":
        return _SAELensArchitecture("topk", k=_k(cfg.get("k"), path), rescale_by_decoder_norm=rescale)
    if architecture in SAELENS_BATCHTOPK:
        return _SAELensArchitecture("batchtopk", k=_k(cfg.get("k"), path), rescale_by_decoder_norm=rescale,
                                    matryoshka_widths=_widths(cfg.get("matryoshka_widths"), path),
                                    threshold_tensor="topk_threshold")
    if architecture == "jumprelu":
        metadata = _object(cfg.get("metadata"))
        details = _object(metadata.get("training_architecture_details"))
        threshold = "log_threshold" if "log_threshold" in tensor_names else "threshold"  # older SAELens saved the log
        if metadata.get("training_architecture") in SAELENS_BATCHTOPK and "k" in details:
            return _SAELensArchitecture("batchtopk", k=_k(details["k"], path), threshold_tensor=threshold,
                                        matryoshka_widths=_widths(details.get("matryoshka_widths"), path))
        return _SAELensArchitecture("jumprelu", threshold_tensor=threshold)
    raise SAEImportError(f"cannot import {path}: SAELens architecture {architecture!r} cannot be expressed by a traitlens SAE "
                         f"(supported: standard, topk, jumprelu, {', '.join(SAELENS_BATCHTOPK)})")


def _saelens_input_scale(cfg: dict[str, Any], directory: Path, path: Path) -> float:
    """The trainer's ``expected_average_only_in`` factor, which scales inputs before the SAE and
    outputs back after it: exactly traitlens' ``input_scale``."""
    mode = cfg.get("normalize_activations", "none")
    if isinstance(mode, bool) or mode is None:  # pre-6.0 configs
        mode = "expected_average_only_in" if mode else "none"
    if mode == "none":
        return 1.0
    if mode in _SAELENS_NORMALIZATION_REFUSALS:
        raise SAEImportError(f"cannot import {path}: normalize_activations={mode!r} {_SAELENS_NORMALIZATION_REFUSALS[mode]}, "
                             "which a traitlens SAE's fixed input_mean/input_scale cannot express")
    if mode != "expected_average_only_in":
        raise SAEImportError(f"cannot import {path}: unknown normalize_activations {mode!r}")
    scaler = directory / SAELENS_SCALER
    factor = _read_json_object(scaler).get("scaling_factor") if scaler.is_file() else None
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor < math.inf:
        raise SAEImportError(f"cannot import {path}: normalize_activations='expected_average_only_in' but no scaling_factor in "
                             f"{SAELENS_SCALER} beside it; SAELens folds it into the weights when training ends, import that SAE")
    return float(factor)


def import_saelens(directory: str | Path) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE that SAELens saved in ``directory`` (``cfg.json`` + ``sae_weights.safetensors``) and
    the ``extra`` for :func:`~traitlens.sae.io.save_sae` (``{"imported": provenance}``).

    Encoding and decoding agree with SAELens' ``encode``/``decode`` on the same inputs; see the
    module docstring for what is converted and what is refused."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SAEImportError(f"cannot import {directory}: not a directory (SAELens saves cfg.json + {SAELENS_WEIGHTS})")
    cfg_path, weights_path = directory / SAELENS_CONFIG, directory / SAELENS_WEIGHTS
    cfg = _read_json_object(cfg_path)
    if not weights_path.is_file():
        raise SAEImportError(f"cannot import {directory}: {SAELENS_WEIGHTS} missing")
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise SAEImportError(f"cannot import {weights_path}: cannot read the weights: {first_line(error)}") from error
    architecture = _saelens_architecture(cfg, set(tensors), cfg_path)
    d_in, width = _positive_int(cfg.get("d_in"), "d_in", cfg_path), _positive_int(cfg.get("d_sae"), "d_sae", cfg_path)
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
    if architecture.threshold_tensor is not None:
        shapes[architecture.threshold_tensor] = () if architecture.threshold_tensor == "topk_threshold" else (width,)
    found = _checked(tensors, shapes, {"scaling_factor": (width,)}, weights_path)
    weights = _Weights(found["W_enc"].T, found["b_enc"], found["W_dec"], found["b_dec"],
                       input_scale=_saelens_input_scale(cfg, directory, cfg_path))
    if weights.input_scale != 1.0:
        weights.conversions.append(f"activation scaling factor {weights.input_scale} from {SAELENS_SCALER} kept as input_scale")
    if "scaling_factor" in found:  # pre-6.0 finetuning factor: latents times it before decoding
        weights.W_dec_wd = weights.W_dec_wd * found["scaling_factor"][:, None]
        weights.conversions.append("finetuning scaling_factor folded into the decoder rows")
    if architecture.rescale_by_decoder_norm:
        weights.fold_decoder_norms()
    if not _flag(cfg, "apply_b_dec_to_input", True, cfg_path):
        weights.fold_decoder_bias()
    if architecture.threshold_tensor == "log_threshold":
        weights.threshold_w = found["log_threshold"].exp()
    elif architecture.threshold_tensor is not None:
        weights.threshold_w = found[architecture.threshold_tensor].expand(width)
    config = _config(cfg_path, d_in=d_in, width=width, activation=architecture.activation, k=architecture.k,
                     matryoshka_widths=architecture.matryoshka_widths,
                     normalization="none" if weights.input_scale == 1.0 else "norm")
    metadata = _object(cfg.get("metadata"))
    provenance = {
        "source": "saelens", "path": str(directory.resolve()), "architecture": cfg.get("architecture", "standard"),
        "hook_name": metadata.get("hook_name", cfg.get("hook_name", cfg.get("hook_point"))),
        "model_name": metadata.get("model_name", cfg.get("model_name")),
        "config": cfg, "conversions": weights.conversions,
    }
    return weights.to_sae(config), {"imported": provenance}


# -- saev ---------------------------------------------------------------------------------------
def _saev_activation(header: dict[str, Any], cfg: dict[str, Any], path: Path) -> tuple[str, Any]:
    """The activation class name and its ``top_k`` as written (saev's default 32 when absent)."""
    schema = header.get("schema")
    if schema is None:
        return "Relu", 32
    if schema == 1 and header.get("cls", "SparseAutoencoderConfig") != "SparseAutoencoderConfig":
        return str(header["cls"]), cfg.get("top_k", 32)  # schema 1A: the config class is the activation
    spec = cfg.get("activation")
    if not isinstance(spec, dict) or not isinstance(spec.get("cls"), str):
        raise SAEImportError(f"cannot import {path}: the saev header names no activation")
    return spec["cls"], _object(spec.get("params")).get("top_k", 32)


def _saev_state(body: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise SAEImportError(f"cannot import {path}: its weights hold objects other than tensors, which are never unpickled "
                             f"({first_line(error)})") from error
    except Exception as error:  # torch raises several types for truncated or foreign data
        raise SAEImportError(f"cannot import {path}: cannot read the weights after the header: {first_line(error)}") from error
    if not isinstance(state, dict) or not all(isinstance(name, str) and isinstance(tensor, torch.Tensor)
                                              for name, tensor in state.items()):
        raise SAEImportError(f"cannot import {path}: the weights after the header are not a state dict of tensors")
    return state


def import_saev(path: str | Path, subtract_b_dec: bool | None = None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE in a saev checkpoint file (JSON header line + ``torch.save``d state dict) and the
    ``extra`` for :func:`~traitlens.sae.io.save_sae` (``{"imported": provenance}``).

    ``subtract_b_dec`` says whether the saev version that trained it encoded ``x - b_dec`` (True)
    or ``x`` (False); by default it follows the header's schema, and schema-1 files, which do not
    record it, must say. The weights are read with ``torch.load(weights_only=True)``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SAEImportError(f"cannot import {path}: {error.strerror or first_line(error)}") from error
    header_line, _, body = raw.partition(b"\n")
    try:
        header = parse_standard_json(header_line)
    except ValueError as error:
        raise SAEImportError(f"cannot import {path}: not a saev checkpoint (its first line is not a JSON header)") from error
    if not isinstance(header, dict):
        raise SAEImportError(f"cannot import {path}: not a saev checkpoint (its header is not a JSON object)")
    schema = header.get("schema")
    if isinstance(schema, bool) or schema not in SAEV_SCHEMAS:
        raise SAEImportError(f"cannot import {path}: unknown saev header schema {schema!r} (known: none, 1 to 5)")
    cfg = header if schema is None else header.get("cfg")
    if not isinstance(cfg, dict):
        raise SAEImportError(f"cannot import {path}: the saev header has no config")
    if subtract_b_dec is None:
        if schema == 1:
            raise SAEImportError(f"cannot import {path}: saev schema-1 checkpoints do not record whether b_dec is subtracted "
                                 f"before encoding (saev commit {header.get('commit', 'unknown')}); say so with subtract_b_dec")
        subtract_b_dec = schema is None
    activation, top_k = _saev_activation(header, cfg, path)
    size_key = "d_model" if "d_model" in cfg else "d_vit"
    d_in = _positive_int(cfg.get(size_key), size_key, path)
    width = (_positive_int(cfg["d_sae"], "d_sae", path) if "d_sae" in cfg
             else d_in * _positive_int(cfg.get("exp_factor"), "exp_factor", path))
    if activation not in SAEV_ACTIVATIONS:
        raise SAEImportError(f"cannot import {path}: saev activation {activation!r} cannot be expressed by a traitlens SAE "
                             "(supported: Relu, TopK, BatchTopK)")
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, width), "b_enc": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
    state = _saev_state(body, path)
    if activation == "BatchTopK":
        if "activation.threshold" not in state:
            raise SAEImportError(f"cannot import {path}: this saev BatchTopK checkpoint has no inference threshold "
                                 "(activation.threshold), so its latents depend on the whole batch")
        shapes["activation.threshold"] = ()
    found = _checked(state, shapes, {}, path)
    weights = _Weights(found["W_enc"].T, found["b_enc"], found["W_dec"], found["b_dec"])
    if not subtract_b_dec:
        weights.fold_decoder_bias()
    if activation == "TopK":
        weights.conversions.append("saev's TopK keeps negative values that make the top k; traitlens applies ReLU to them")
    if activation == "BatchTopK":
        weights.threshold_w = found["activation.threshold"].expand(width)
    config = _config(path, d_in=d_in, width=width, activation=SAEV_ACTIVATIONS[activation],
                     k=min(_positive_int(top_k, "top_k", path), width))
    provenance = {"source": "saev", "path": str(path.resolve()), "schema": schema, "activation": activation,
                  "commit": header.get("commit"), "lib": header.get("lib"), "config": cfg, "conversions": weights.conversions}
    return weights.to_sae(config), {"imported": provenance}


# -- any of them --------------------------------------------------------------------------------
def import_sae(path: str | Path, subtract_b_dec: bool | None = None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """The SAE at ``path``, whatever saved it, and the ``extra`` to pass to ``save_sae``.

    A directory with ``cfg.json`` is a SAELens SAE, one with ``config.json`` a traitlens SAE (its
    extra is its saved config without the architecture), a file is a saev checkpoint
    (``subtract_b_dec`` is passed to :func:`import_saev`)."""
    path = Path(path)
    if path.is_dir():
        if (path / SAELENS_CONFIG).is_file():
            return import_saelens(path)
        if (path / CONFIG).is_file():
            sae, data = load_sae_with_config(path)
            return sae, {key: value for key, value in data.items() if key not in ("format", "sae")}
        raise SAEImportError(f"cannot import {path}: no {SAELENS_CONFIG} (SAELens) or {CONFIG} (traitlens) in it")
    if path.is_file():
        return import_saev(path, subtract_b_dec)
    raise SAEImportError(f"cannot import {path}: no such file or directory")
