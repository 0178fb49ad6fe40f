"""Matryoshka SAE: BatchTopK whose nested prefixes (a sixteenth, a quarter and all of the latents
unless a config names others) are each trained to reconstruct the input on their own."""

from __future__ import annotations

from traitlens.sae.architectures.batchtopk import BatchTopK


class Matryoshka(BatchTopK):
    name = "matryoshka"
    description = "matryoshka (BatchTopK with nested prefixes, --matryoshka-widths)"

    def default_matryoshka_widths(self, width: int) -> tuple[int, ...]:
        return tuple(sorted({max(1, width // 16), max(1, width // 4), width}))
