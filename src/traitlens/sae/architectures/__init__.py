"""The registered SAE architectures: one module each, one :func:`register` line each here."""

from traitlens.sae.architectures.base import ARCHITECTURES, Architecture, register
from traitlens.sae.architectures.batchtopk import BatchTopK
from traitlens.sae.architectures.jumprelu import JumpReLU
from traitlens.sae.architectures.matryoshka import Matryoshka
from traitlens.sae.architectures.relu import ReLU
from traitlens.sae.architectures.topk import TopK

register(TopK())
register(BatchTopK())
register(ReLU())
register(JumpReLU())
register(Matryoshka())

__all__ = ["ARCHITECTURES", "Architecture", "register"]
