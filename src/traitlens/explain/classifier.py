"""The linear classifier CAM needs: its weight rows are the channel weights of each class."""

from __future__ import annotations

import torch
from torch import nn

from traitlens.backbones import Backbone
from traitlens.explain.config import ExplainError


def classifier_weights(backbone: Backbone, width: int, n_classes: int) -> torch.Tensor:
    """(n_classes, width): the weights of the model's last linear layer that reads ``width``
    features and gives the ``n_classes`` outputs of ``backbone.forward``.

    CAM is exact when that layer reads pooled features of the explained layer (a CNN's last stage,
    a ViT's tokens); elsewhere it is the head applied to whatever the tokens are.
    """
    linears = [module for module in backbone.model.modules()
               if isinstance(module, nn.Linear) and module.out_features == n_classes]
    if not linears:
        raise ExplainError(f"cam needs a linear classifier with {n_classes} outputs in {backbone.spec}; "
                           "use grad-cam, which equals CAM for such heads")
    head = linears[-1]
    if head.in_features != width:
        raise ExplainError(f"cam needs the classifier's input width at the explained layer: {backbone.spec}'s "
                           f"classifier reads {head.in_features} features, the layer has {width}; "
                           "choose the last layer, or grad-cam")
    return head.weight.detach()
