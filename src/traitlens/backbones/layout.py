"""Where each token of a layer sits: prefix tokens (CLS, registers) and the patch grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from traitlens.errors import LayerError

TokenSelection = Literal["patch", "cls", "all"]
TOKEN_SELECTIONS: tuple[TokenSelection, ...] = ("patch", "cls", "all")


@dataclass(frozen=True)
class TokenLayout:
    """Token layout of one layer's ``tokens_btd``.

    Tokens are ordered prefix first (``n_prefix`` of them, the CLS token first when ``has_cls``),
    then the patch grid in row-major order. A CNN feature map is a grid with no prefix.
    """

    n_prefix: int
    grid_hw: tuple[int, int]
    has_cls: bool

    @property
    def n_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def n_registers(self) -> int:
        return self.n_prefix - int(self.has_cls)

    def tokens_per_image(self, selection: TokenSelection) -> int:
        return {"patch": self.n_patches, "cls": 1, "all": self.n_tokens}[selection]

    def first_patch(self, selection: TokenSelection) -> int:
        """Where an image's patch tokens start among its tokens of ``selection`` (the one place
        this offset is computed); a ``cls`` selection holds none."""
        if selection == "cls":
            raise LayerError("CLS tokens alone hold no patch tokens; use --tokens patch or --tokens all")
        return self.n_prefix if selection == "all" else 0

    def select(self, tokens_btd: torch.Tensor, selection: TokenSelection) -> torch.Tensor:
        """Keep the tokens named by ``selection``: (b, t, d) -> (b, t', d)."""
        if selection == "all":
            return tokens_btd
        if selection == "patch":
            return tokens_btd[:, self.n_prefix :]
        if not self.has_cls:
            raise LayerError("this layer has no CLS token; use --tokens patch or --tokens all")
        return tokens_btd[:, :1]

    def to_dict(self) -> dict[str, Any]:
        return {"n_prefix": self.n_prefix, "grid_hw": list(self.grid_hw), "has_cls": self.has_cls}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        grid_h, grid_w = (int(v) for v in data["grid_hw"])
        return cls(n_prefix=int(data["n_prefix"]), grid_hw=(grid_h, grid_w), has_cls=bool(data["has_cls"]))
