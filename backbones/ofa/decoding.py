"""Decoding for the generative backbone: greedy, beam search, trie-constrained, all-candidate.

All of it runs on a ``decoder(prev_tokens, memory) -> logits (N, T, V)`` and an encoder memory
with ``select(rows)`` (:class:`~.towers.EncoderOutput`): the encoder runs once per input, never per
step. The decoder is re-run on the whole prefix each step (no self-attention key/value cache): the
outputs here are short (4 location tokens, a one-word answer, a 16-20 token caption).

Semantics follow fairseq's ``SequenceGenerator`` as OFA uses it: the pad and BOS ids are never
generated; EOS is banned before ``min_len`` tokens and forced after ``max_len``; n-gram blocking
counts the BOS; beam search keeps ``2 * beam`` candidates per step, finalises EOS candidates ranked
within the top ``beam`` with score ``sum log p / length ** length_penalty`` (length counts the EOS),
and stops a sentence once ``beam`` hypotheses are final. Constraints mask the *logits* before the
softmax, as OFA's trie does, so probabilities are renormalised over the allowed tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import torch
import torch.nn.functional as F

Decoder = Callable[[torch.Tensor, Any], torch.Tensor]  # (prev (N, T), memory) -> logits (N, T, V)


class Trie:
    """Token sequences (candidate answers, without BOS/EOS) as a prefix tree: which token may follow
    a generated prefix, and whether the prefix is a complete candidate (then EOS may follow)."""

    def __init__(self, sequences: Iterable[Sequence[int]], eos: int) -> None:
        self.eos = eos
        self.root: dict[int, dict] = {}
        self.depth = 0
        for seq in sequences:
            node = self.root
            for tok in list(seq) + [eos]:
                node = node.setdefault(int(tok), {})
            self.depth = max(self.depth, len(seq))

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix``; empty if ``prefix`` leaves the trie."""
        node = self.root
        for tok in prefix:
            child = node.get(int(tok))
            if child is None:
                return []
            node = child
        return list(node)

    def __contains__(self, seq: Sequence[int]) -> bool:
        return self.eos in self.allowed(seq)


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 5
    max_len: int = 16  # generated tokens before EOS is forced
    min_len: int = 1  # generated tokens before EOS is allowed
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.beam < 1 or self.max_len < 1 or not 0 <= self.min_len <= self.max_len:
            raise ValueError(f"bad decoding options {self}")


@dataclass(frozen=True)
class Vocab:
    """The special ids decoding needs."""

    bos: int
    eos: int
    pad: int


def _ngram_bans(rows: list[list[int]], n: int) -> list[set[int]]:
    """Per row, the tokens that would repeat an n-gram already in the row (BOS included)."""
    bans: list[set[int]] = []
    for toks in rows:
        banned: set[int] = set()
        if n > 0 and len(toks) >= n:
            key = tuple(toks[len(toks) - n + 1 :])
            for i in range(len(toks) - n + 1):
                if tuple(toks[i : i + n - 1]) == key:
                    banned.add(toks[i + n - 1])
        bans.append(banned)
    return bans


def _step_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    cfg: DecodeConfig,
    vocab: Vocab,
    trie: Trie | None,
    allowed: torch.Tensor | None,
    start: int = 1,
) -> torch.Tensor:
    """Log-probs (N, V) of the next token after ``tokens`` (N, start + t), every constraint applied;
    the first ``start`` tokens are the decoder prompt (BOS, or OFA's ``prev_output`` prompt)."""
    logits = logits.float().clone()
    step = tokens.shape[1] - start  # tokens generated so far
    neg = float("-inf")
    if allowed is not None:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[:, allowed] = True
        keep[:, vocab.eos] = True
        logits = logits.masked_fill(~keep, neg)
    if trie is not None:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        for row, toks in enumerate(tokens[:, start:].tolist()):
            keep[row, trie.allowed(toks)] = True
        logits = logits.masked_fill(~keep, neg)
    logits[:, vocab.pad] = neg
    logits[:, vocab.bos] = neg
    if step < cfg.min_len:
        logits[:, vocab.eos] = neg
    if step >= cfg.max_len:
        eos_logit = logits[:, vocab.eos].clone()
        logits.fill_(neg)
        logits[:, vocab.eos] = torch.where(torch.isfinite(eos_logit), eos_logit, torch.zeros_like(eos_logit))
    if cfg.no_repeat_ngram_size > 0:
        for row, banned in enumerate(_ngram_bans(tokens.tolist(), cfg.no_repeat_ngram_size)):
            if banned:
                logits[row, list(banned)] = neg
    lp = F.log_softmax(logits, dim=-1)
    return torch.nan_to_num(lp, nan=neg)  # a fully masked row: nothing may follow


def _effective(cfg: DecodeConfig, trie: Trie | None) -> DecodeConfig:
    """With a trie, every candidate must fit: never force EOS inside one."""
    if trie is not None and cfg.max_len < trie.depth:
        return DecodeConfig(
            cfg.beam, trie.depth, min(cfg.min_len, trie.depth), cfg.no_repeat_ngram_size, cfg.length_penalty
        )
    return cfg


class SearchOptions(TypedDict, total=False):
    """The keyword options of :func:`greedy` and :func:`beam_search` (each None by default)."""

    trie: Trie | None  # candidate sequences: only their prefixes are generated
    allowed: torch.Tensor | None  # token ids that may be generated (EOS always may)
    device: torch.device | None  # where the token tensors live (the memory's device)
    prompt: Sequence[int] | None  # the decoder's forced start, shared by the batch (default: BOS)


@dataclass(frozen=True)
class _Search:
    """What one search fixes: the decoder, the ids, the options (with a trie's depth applied), the
    constraints and the forced start; :meth:`logprobs` is the constrained next-token distribution."""

    decoder: Decoder
    vocab: Vocab
    cfg: DecodeConfig
    trie: Trie | None
    allowed: torch.Tensor | None
    start: list[int]

    @classmethod
    def of(cls, decoder: Decoder, vocab: Vocab, cfg: DecodeConfig, options: SearchOptions) -> _Search:
        trie, prompt = options.get("trie"), options.get("prompt")
        start = list(prompt) if prompt else [vocab.bos]
        return cls(decoder, vocab, _effective(cfg, trie), trie, options.get("allowed"), start)

    def logprobs(self, tokens: torch.Tensor, memory: Any) -> torch.Tensor:
        """Log-probs (N, V) of the token after ``tokens`` (N, T), every constraint applied."""
        logits = self.decoder(tokens, memory)[:, -1]
        return _step_logprobs(logits, tokens, self.cfg, self.vocab, self.trie, self.allowed, len(self.start))


@torch.no_grad()
def greedy(
    decoder: Decoder,
    memory: Any,
    batch: int,
    vocab: Vocab,
    cfg: DecodeConfig = DecodeConfig(beam=1),
    **options: Unpack[SearchOptions],
) -> list[list[int]]:
    """The most likely next token at every step until EOS; returns the generated tokens (no
    prompt, no EOS)."""
    search = _Search.of(decoder, vocab, cfg, options)
    cfg, start, device = search.cfg, search.start, options.get("device")
    tokens = torch.tensor([start] * batch, dtype=torch.long, device=device).view(batch, len(start))
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(cfg.max_len + 1):
        lp = search.logprobs(tokens, memory)
        nxt = lp.argmax(dim=-1)
        for row in range(batch):
            if not done[row]:
                if int(nxt[row]) == vocab.eos or not math.isfinite(float(lp[row, nxt[row]])):
                    done[row] = True
                else:
                    out[row].append(int(nxt[row]))
        if bool(done.all()):
            break
        tokens = torch.cat([tokens, nxt.masked_fill(done, vocab.pad).unsqueeze(1)], dim=1)
    return out


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    memory: Any,
    batch: int,
    vocab: Vocab,
    cfg: DecodeConfig = DecodeConfig(),
    **options: Unpack[SearchOptions],
) -> list[list[int]]:
    """fairseq-style beam search; the best final hypothesis per example (generated tokens, no
    prompt, no EOS)."""
    search = _Search.of(decoder, vocab, cfg, options)
    cfg, start, device = search.cfg, search.start, options.get("device")
    beam = cfg.beam
    rows = torch.arange(batch, device=device).repeat_interleave(beam)
    memory = memory.select(rows)  # every beam of an example shares its memory: never reordered
    tokens = torch.tensor([start] * (batch * beam), dtype=torch.long, device=device).view(-1, len(start))
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis at the start, so the beams do not duplicate it
    final: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for _ in range(cfg.max_len + 1):
        step = tokens.shape[1] - len(start) + 1  # the length of a hypothesis ending here (with EOS)
        lp = search.logprobs(tokens, memory)
        vsize = lp.shape[-1]
        cand = (scores.view(-1, 1) + lp).view(batch, beam * vsize)
        top, idx = cand.topk(min(2 * beam, cand.shape[1]), dim=1)
        src_beam, tok = idx // vsize, idx % vsize
        next_rows, next_tok, next_scores = [], [], []
        for b in range(batch):
            live: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank in range(top.shape[1]):
                    s = float(top[b, rank])
                    if not math.isfinite(s):
                        break
                    j, w = int(src_beam[b, rank]), int(tok[b, rank])
                    if w == vocab.eos:
                        if rank < beam and len(final[b]) < beam:
                            hyp = tokens[b * beam + j, len(start) :].tolist()
                            final[b].append((s / (step**cfg.length_penalty), hyp))
                    elif len(live) < beam:
                        live.append((j, w, s))
                if len(final[b]) >= beam or not live:
                    done[b] = True
            if done[b]:
                live = []
            live += [(0, vocab.pad, float("-inf"))] * (beam - len(live))
            for j, w, s in live:
                next_rows.append(b * beam + j)
                next_tok.append(w)
                next_scores.append(s)
        if all(done):
            break
        index = torch.tensor(next_rows, device=tokens.device)
        tokens = torch.cat([tokens[index], torch.tensor(next_tok, device=tokens.device).unsqueeze(1)], dim=1)
        scores = torch.tensor(next_scores, device=tokens.device).view(batch, beam)
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in final]


def score_candidates(
    decoder: Decoder,
    memory: Any,
    candidates: Sequence[Sequence[int]],
    vocab: Vocab,
    *,
    trie: Trie | None = None,
    chunk: int = 256,
    prompts: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """OFA's ``allcand`` scores (B, C): the sum of the log-probs of each candidate's tokens and its
    EOS given the input, teacher-forced. With ``trie`` each position's distribution is renormalised
    over the tokens the candidate set allows there (OFA's constraint masks). ``prompts``: per
    example, the decoder prompt the candidates follow (default: BOS)."""
    batch = memory.hidden.shape[0]
    device = memory.hidden.device
    out = torch.empty(batch, len(candidates), device=device)
    for b in range(batch):
        prompt = list(prompts[b]) if prompts is not None else [vocab.bos]
        p = len(prompt)
        longest = max(len(c) for c in candidates) + p
        prev = torch.full((len(candidates), longest), vocab.pad, dtype=torch.long, device=device)
        target = torch.full_like(prev, vocab.pad)
        for i, cand in enumerate(candidates):
            prev[i, : len(cand) + p] = torch.tensor([*prompt, *cand], device=device)
            target[i, p - 1 : len(cand) + p] = torch.tensor([*cand, vocab.eos], device=device)
        for start in range(0, len(candidates), chunk):
            sl = slice(start, min(start + chunk, len(candidates)))
            n = sl.stop - sl.start
            mem = memory.select(torch.full((n,), b, dtype=torch.long, device=device))
            logits = decoder(prev[sl], mem).float()
            if trie is not None:
                mask = torch.zeros_like(logits, dtype=torch.bool)
                mask[:, : p - 1] = True  # prompt positions are not scored
                for i, cand in enumerate(candidates[sl]):
                    for t in range(len(cand) + 1):
                        mask[i, p - 1 + t, trie.allowed(cand[:t])] = True
                logits = logits.masked_fill(~mask, float("-inf"))
            lp = F.log_softmax(logits, dim=-1)
            tgt = target[sl]
            picked = lp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            picked = picked.masked_fill(tgt.eq(vocab.pad), 0.0)
            out[b, sl] = picked.sum(dim=1)
    return out
