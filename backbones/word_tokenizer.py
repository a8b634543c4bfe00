"""A word-level tokenizer for the micro-CLIP's closed vocabulary (benchmarks/synthetic/world.py).

Ids: 0 padding, 1 start-of-text, 2 unknown word, then the vocabulary, and end-of-text last: CLIP
pools the text feature at the highest id in a sequence, so EOT must be the largest id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

PAD, SOS, UNK = 0, 1, 2
_WORD = re.compile(r"[a-z]+")


class WordTokenizer:
    def __init__(self, vocabulary: Sequence[str], context_length: int) -> None:
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary words must be unique")
        self.vocabulary = list(vocabulary)
        self.ids = {w: i + 3 for i, w in enumerate(self.vocabulary)}
        self.eot = len(self.vocabulary) + 3
        self.vocab_size = self.eot + 1
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, UNK) for w in _WORD.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOS, *self.encode(text)][: self.context_length - 1] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
