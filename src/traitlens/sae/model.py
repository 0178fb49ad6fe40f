"""The sparse autoencoder: one module for every architecture, Matryoshka prefixes optional.

The shared parts live here (normalization, the encoder product, decoding); how latents are made
sparse is the config's registered architecture (:mod:`traitlens.sae.architectures`).

Weights (safetensors names, see docs/formats.md): ``W_enc`` (width, d_in), ``b_enc`` (width),
``W_dec`` (width, d_in) with unit-norm rows, ``b_dec`` (d_in); buffers ``input_mean`` and
``input_scale`` (normalization), ``threshold`` (an inference threshold per latent, which
BatchTopK learns after training); an architecture may add its own (JumpReLU's ``log_threshold``).
Both weight matrices are stored row-per-latent so the
rows of active latents are contiguous for the sparse kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from traitlens.sae.config import SAEConfig, SAEConfigError
from traitlens.sae.encoding import Encoding
from traitlens.sae.sparse import decode_codes


class SparseAutoencoder(nn.Module):
    """encode: (n, d_in) -> (n, width) latents; decode: latents -> (n, d_in); forward: both."""

    input_mean: torch.Tensor
    input_scale: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.d_in, config.width
        self.W_enc = nn.Parameter(torch.empty(w, d))
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.W_dec = nn.Parameter(torch.empty(w, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(d))
        self.register_buffer("threshold", torch.zeros(w))
        config.architecture.add_parameters(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows; the encoder starts as the decoder's transpose."""
        with torch.no_grad():
            nn.init.normal_(self.W_dec)
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec)

    @staticmethod
    def state_shapes(config: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor of an SAE of ``config``, found without allocating it (on
        the meta device), so a saved file can be checked against its config before it is read."""
        try:
            with torch.device("meta"):
                return {name: tuple(tensor.shape) for name, tensor in SparseAutoencoder(config).state_dict().items()}
        except (RuntimeError, TypeError, OverflowError) as error:  # sizes torch cannot even describe
            raise SAEConfigError(f"an SAE of d_in {config.d_in} and width {config.width} is too large for torch") from error

    # -- normalization -----------------------------------------------------------------------
    def normalize(self, x_nd: torch.Tensor) -> torch.Tensor:
        return (x_nd - self.input_mean) * self.input_scale

    def denormalize(self, y_nd: torch.Tensor) -> torch.Tensor:
        return y_nd / self.input_scale + self.input_mean

    # -- training-time encoding --------------------------------------------------------------
    def pre_activations(self, xn_nd: torch.Tensor) -> torch.Tensor:
        """(x_norm - b_dec) @ W_enc.T + b_enc, the one dense product, with autograd."""
        return torch.addmm(self.b_enc, xn_nd - self.b_dec, self.W_enc.t())

    def encode_for_training(self, xn_nd: torch.Tensor, dead_w: torch.Tensor | None = None, aux_k: int = 0) -> Encoding:
        """Latents of normalized inputs in the form training uses (sparse for TopK-family), with
        AuxK's candidates among the dead latents ``dead_w`` when given."""
        return self.config.architecture.encode_for_training(self, xn_nd, dead_w, aux_k)

    def decode_normalized(self, encoding: Encoding, prefix: int | None = None) -> torch.Tensor:
        """Reconstruction in normalized space from the first ``prefix`` latents (all by default)."""
        if encoding.codes is not None:
            codes = encoding.codes if prefix is None else encoding.codes.keep(encoding.codes.cols < prefix)
            return decode_codes(codes, self.W_dec) + self.b_dec
        assert encoding.latents_nw is not None
        latents_nw = encoding.latents_nw if prefix is None else encoding.latents_nw[:, :prefix]
        w_dec = self.W_dec if prefix is None else self.W_dec[:prefix]
        return latents_nw @ w_dec + self.b_dec

    # -- inference -----------------------------------------------------------------------------
    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Dense latents (n, width) of raw inputs, each token's a function of that token alone."""
        return self.config.architecture.activate(self, self.pre_activations(self.normalize(x_nd)))

    def decode(self, latents_nw: torch.Tensor) -> torch.Tensor:
        """Raw-space reconstruction (n, d_in) of dense latents."""
        return self.denormalize(latents_nw @ self.W_dec + self.b_dec)

    def forward(self, x_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (n, width), reconstruction (n, d_in))."""
        latents_nw = self.encode(x_nd)
        return latents_nw, self.decode(latents_nw)
