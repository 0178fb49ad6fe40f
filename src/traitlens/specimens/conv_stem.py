"""A convolutional stem for the specimens ViTs: stride-2 3x3 convolutions in place of the patch
projection (Xiao et al., 2021, "Early convolutions help transformers see better").

Why: trained from scratch on a few tens of thousands of images, a ViT with a linear patch
projection never learns the tail pair (round vs forked tail, the same dark body colour as the
abdomen, the head and the background sticks): it stays at chance on that pair even on its training
images, while a CNN learns it in a few epochs. A few strided convolutions give the tokens the local
shape features the transformer then relates. The token grid is unchanged (img_size / patch_size a
side), so everything that reads patch tokens reads them the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from traitlens.errors import SpecError


def conv_stem_depth(patch_size: int) -> int:
    """The number of stride-2 convolutions that make one token per ``patch_size`` pixels."""
    depth = round(math.log2(patch_size)) if patch_size > 1 else 0
    if depth < 1 or 2**depth != patch_size:
        raise SpecError(f"a conv stem needs a patch size that is a power of two (2, 4, 8, 16 ...), got {patch_size}")
    return depth


class ConvStem(nn.Module):
    """timm's patch-embedding interface (``img_size``, ``patch_size``, ``grid_size``,
    ``num_patches``, ``feat_ratio``) over a stack of conv-BN-ReLU layers that halve the resolution and
    double the width up to ``embed_dim``, then a 1x1 projection; tokens come out as (B, N, D)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 **_: object) -> None:  # timm also passes bias and padding options, which a conv stem has no use for
        super().__init__()
        depth = conv_stem_depth(patch_size)
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.dynamic_img_pad = False
        layers: list[nn.Module] = []
        channels = in_chans
        for width in (max(embed_dim >> (depth - 1 - i), 8) for i in range(depth)):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels_bchw).flatten(2).transpose(1, 2)
