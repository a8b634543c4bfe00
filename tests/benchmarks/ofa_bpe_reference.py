"""Test-only transcription of the pure-Python GPT-2/BART byte-level BPE that
``benchmarks/ofa_tasks/tokenizer.py`` carried before it moved to Hugging Face ``tokenizers``: the
oracle the Rust-backed tokenizer is checked against (same ids, same text). Not part of the package.

Encoding is GPT-2's ``bpe()``: split with GPT-2's pre-tokenizer regex, map bytes to printable
symbols, then repeatedly merge the lowest-ranked adjacent pair (every occurrence, left to right).
``train_reference_bpe`` is the old trainer (most frequent pair, ties to the lexicographically
smallest), kept so the old smoke vocabulary can still be rebuilt and encoded through both paths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import regex

PRETOKEN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def pretokenize(text: str) -> list[str]:
    table = bytes_to_unicode()
    return ["".join(table[b] for b in piece.encode("utf-8")) for piece in PRETOKEN.findall(text)]


class ReferenceBPE:
    """The old ``OFATokenizer``'s encode/decode over a base vocabulary (codes and bins above it)."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], num_codes: int = 0) -> None:
        self.vocab = dict(vocab)
        if MASK not in self.vocab:
            self.vocab[MASK] = max(self.vocab.values()) + 1
        self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
        self.base = len(self.vocab)
        self.num_codes = num_codes
        self.id_to_tok = {i: t for t, i in self.vocab.items()}
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.skip = {0, 1, 2, 3, self.vocab[MASK]}

    def bpe(self, piece: str) -> list[str]:
        word = list(piece)
        while len(word) > 1:
            best = min(
                (
                    (self.ranks.get((a, b), -1), i)
                    for i, (a, b) in enumerate(zip(word, word[1:], strict=False))
                ),
                key=lambda r: (r[0] < 0, r[0]),
            )
            if best[0] < 0:
                break
            pair = (word[best[1]], word[best[1] + 1])
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(t, 3) for piece in pretokenize(text) for t in self.bpe(piece)]

    def token(self, i: int) -> str:
        if i in self.id_to_tok:
            return self.id_to_tok[i]
        if self.base <= i < self.base + self.num_codes:
            return f"<code_{i - self.base}>"
        return f"<bin_{i - self.base - self.num_codes}>"

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        buf = bytearray()
        out: list[str] = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self.skip:
                continue
            tok = self.token(i)
            if i < self.base and tok not in SPECIALS and tok != MASK:
                buf.extend(self.byte_decoder[c] for c in tok)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
            out.append(tok)
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def train_reference_bpe(
    texts: Iterable[str], num_merges: int, min_frequency: int = 2
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The old trainer's (vocab, merges): specials, 256 byte symbols in byte order, merges, <mask>."""
    freqs: Counter[str] = Counter()
    for t in texts:
        freqs.update(pretokenize(t))
    words = {w: list(w) for w in freqs}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, syms in words.items():
            for pair in zip(syms, syms[1:], strict=False):
                pairs[pair] += freqs[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best[1] < min_frequency:
            break
        a, b = best[0]
        merges.append((a, b))
        for w, syms in words.items():
            out: list[str] = []
            i = 0
            while i < len(syms):
                if i < len(syms) - 1 and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[bytes_to_unicode()[b]] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[MASK] = len(vocab)
    return vocab, merges
