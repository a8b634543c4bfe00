"""The model a generative run trains and evaluates: [0, 1] pixels in, normalisation inside, the
frozen OFA backbone with its method's slots, next-token logits out.

Like :class:`~petlbench.backbones.classifier.ImageClassifier`, attacks and measurements act on this
whole module. It has no task head: the output projection is the shared embedding.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from .backbone import OFABackbone
from .decoding import DecodeConfig, Trie, Vocab, beam_search, greedy, score_candidates
from .towers import EmbeddingOffsets, EncoderOutput


class OFAGenerator(nn.Module):
    mean: torch.Tensor  # (1, 3, 1, 1) buffers
    std: torch.Tensor

    def __init__(self, backbone: OFABackbone, method: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        cfg = backbone.ofa_config
        self.vocab = Vocab(bos=cfg.bos_id, eos=cfg.eos_id, pad=cfg.pad_id)

    def encode(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor, **offsets: Unpack[EmbeddingOffsets]
    ) -> EncoderOutput:
        """Encoder memory of ``pixels`` in [0, 1] (B, 3, S, S) and ``src_tokens`` (B, L)."""
        return self.backbone.encode(src_tokens, (pixels - self.mean) / self.std, **offsets)

    def embed_inputs(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw text and image embeddings the encoder adds offsets to (for FGSM)."""
        text, image, _ = self.backbone.encoder.embed_inputs(src_tokens, (pixels - self.mean) / self.std)
        return text, image

    def logits(self, prev_tokens: torch.Tensor, memory: EncoderOutput) -> torch.Tensor:
        return self.backbone.decode(prev_tokens, memory)

    def forward(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor, prev_tokens: torch.Tensor
    ) -> torch.Tensor:
        return self.logits(prev_tokens, self.encode(src_tokens, pixels))

    # ----- decoding (eval mode is the caller's business) -------------------------------------------
    def generate(
        self,
        memory: EncoderOutput,
        cfg: DecodeConfig,
        *,
        trie: Trie | None = None,
        allowed: torch.Tensor | None = None,
        prompt: list[int] | None = None,
    ) -> list[list[int]]:
        """Beam search (greedy when ``cfg.beam == 1``) from an encoder memory; ``prompt`` is a
        decoder prompt shared by the batch (default BOS)."""
        batch, device = memory.hidden.shape[0], memory.hidden.device
        search = greedy if cfg.beam == 1 else beam_search
        return search(
            self.logits,
            memory,
            batch,
            self.vocab,
            cfg,
            trie=trie,
            allowed=allowed,
            device=device,
            prompt=prompt,
        )

    def score(
        self,
        memory: EncoderOutput,
        candidates: list[list[int]],
        trie: Trie | None = None,
        prompts: list[list[int]] | None = None,
    ) -> torch.Tensor:
        """All-candidate log-likelihoods (B, C), after per-example decoder ``prompts`` if given."""
        return score_candidates(self.logits, memory, candidates, self.vocab, trie=trie, prompts=prompts)
