"""OFA's tokenizer: GPT-2/BART byte-level BPE (Hugging Face ``tokenizers``) plus OFA's extra tokens.

The vocabulary follows the OFA transformers-branch checkpoint (reference A1.2): ``vocab.json`` maps
byte-level BPE tokens to ids and holds the fairseq specials ``<s>``=0, ``<pad>``=1, ``</s>``=2,
``<unk>``=3 and ``<mask>``; ``merges.txt`` lists the merges in rank order. OFA then appends
``num_codes`` image codes ``<code_i>`` and ``num_bins`` location bins ``<bin_i>``, bins last (OFA's
RefCOCO decoding relies on that: ``bin = token_id - len(vocab) + num_bins``). With a real BART
vocabulary (50,265 entries) and the defaults 8,192 + 1,000 the total is 59,457.

The BPE itself (GPT-2's pre-tokenizer regex, the byte-to-symbol map, merging by rank, byte-level
decoding) is ``tokenizers``' Rust ``BPE`` model with the ``ByteLevel`` pre-tokenizer and decoder;
this module only lays OFA's code and bin ids over it. ``train_tiny_bpe`` learns a small BPE with
``tokenizers``' ``BpeTrainer`` and writes it in the checkpoint's file format, so the smoke suite and
the tests get a real (if tiny) byte-level tokenizer without any download.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from petlbench.errors import UserError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
CONFIG_FILE = "ofa_tokenizer.json"
DEFAULT_NUM_CODES = 8192
DEFAULT_NUM_BINS = 1000
_CACHE_SIZE = 100_000  # encoded texts kept per tokenizer


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the symbols ``ByteLevel`` works on); here
    it fixes the order of the 256 byte symbols in a trained vocabulary."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def _byte_level(model: models.Model) -> Tokenizer:
    """GPT-2's byte-level pipeline around a BPE model: no normaliser, no prefix space, no specials
    added (``<s>`` in a text is just its bytes, as in OFA's encoder)."""
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class OFATokenizer:
    """Byte-level BPE over ``vocab`` and ``merges`` plus ``<code_i>`` and ``<bin_i>`` appended last.

    ``vocab`` must give the four fairseq specials ids 0-3; ``<mask>`` is appended when missing.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        num_codes: int = DEFAULT_NUM_CODES,
        num_bins: int = DEFAULT_NUM_BINS,
    ) -> None:
        for i, tok in enumerate(SPECIALS):
            if vocab.get(tok) != i:
                raise UserError(
                    f"tokenizer vocab must map {tok!r} to id {i} (fairseq order), got {vocab.get(tok)}"
                )
        if num_codes < 0 or num_bins < 0:
            raise ValueError("num_codes and num_bins must be >= 0")
        vocab = dict(vocab)
        if MASK not in vocab:
            vocab[MASK] = max(vocab.values()) + 1
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise UserError("tokenizer vocab ids must be 0..N-1 with no gap or repeat")
        self._vocab = vocab
        self._merges = [(str(a), str(b)) for a, b in merges]
        try:
            model = models.BPE(vocab=vocab, merges=self._merges, unk_token=SPECIALS[3])
        except Exception as err:  # tokenizers raises a plain Exception for a merge outside the vocab
            raise UserError(f"tokenizer merges do not fit the vocab: {err}") from None
        self._bpe = _byte_level(model)
        self.num_codes = num_codes
        self.num_bins = num_bins
        self._base = len(vocab)
        self._id_to_tok = {i: t for t, i in vocab.items()}
        self._cache: dict[str, tuple[int, ...]] = {}
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.mask_id = vocab[MASK]
        self._specials = {self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id}

    # ----- sizes and special ids -----------------------------------------------------------------

    def __len__(self) -> int:
        return self._base + self.num_codes + self.num_bins

    @property
    def vocab(self) -> dict[str, int]:
        """``vocab.json``'s entries (BPE tokens, specials, ``<mask>``) and their ids (a copy)."""
        return dict(self._vocab)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The BPE merges in rank order (a copy)."""
        return list(self._merges)

    @property
    def base_vocab_size(self) -> int:
        """Entries of vocab.json (BPE tokens, specials and ``<mask>``), before codes and bins."""
        return self._base

    def code_id(self, i: int) -> int:
        if not 0 <= i < self.num_codes:
            raise ValueError(f"code index {i} outside [0, {self.num_codes})")
        return self._base + i

    def bin_id(self, i: int) -> int:
        if not 0 <= i < self.num_bins:
            raise ValueError(f"bin index {i} outside [0, {self.num_bins})")
        return self._base + self.num_codes + i

    def bin_index(self, token_id: int) -> int | None:
        """The bin a token id stands for, or None when it is not a ``<bin_i>``."""
        i = int(token_id) - self._base - self.num_codes
        return i if 0 <= i < self.num_bins else None

    def token(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id in self._id_to_tok:
            return self._id_to_tok[token_id]
        if self._base <= token_id < self._base + self.num_codes:
            return f"<code_{token_id - self._base}>"
        b = self.bin_index(token_id)
        if b is not None:
            return f"<bin_{b}>"
        raise ValueError(f"token id {token_id} outside the vocabulary of {len(self)}")

    # ----- encode / decode -----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special token added."""
        ids = self._cache.get(text)
        if ids is None:  # a call into tokenizers costs ~10 us; prompts and answers repeat a lot
            ids = tuple(self._bpe.encode(text, add_special_tokens=False).ids)
            if len(self._cache) < _CACHE_SIZE:
                self._cache[text] = ids
        return list(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``<s> <pad> </s> <unk> <mask>`` are dropped when ``skip_special_tokens``;
        codes and bins are written as ``<code_i>`` / ``<bin_i>``. Each run of BPE ids is decoded to
        UTF-8 by ``tokenizers`` (invalid bytes become U+FFFD), the other tokens are written as text."""
        run: list[int] = []
        out: list[str] = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self._specials:
                continue
            if i < self._base and i not in self._specials:
                run.append(i)
                continue
            tok = self.token(i)
            if run:
                out.append(self._bpe.decode(run, skip_special_tokens=False))
                run = []
            out.append(tok)
        if run:
            out.append(self._bpe.decode(run, skip_special_tokens=False))
        return "".join(out)

    # ----- files ---------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt`` (the checkpoint format) and the code/bin counts."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self._vocab.items(), key=lambda kv: kv[1]))
        (d / "vocab.json").write_text(json.dumps(ordered, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in self._merges]
        (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        cfg = {"num_codes": self.num_codes, "num_bins": self.num_bins}
        (d / CONFIG_FILE).write_text(json.dumps(cfg) + "\n", encoding="utf-8")
        return d

    @classmethod
    def load(
        cls, directory: str | Path, *, num_codes: int | None = None, num_bins: int | None = None
    ) -> OFATokenizer:
        """Read a tokenizer folder (ours, or an OFA checkpoint's ``vocab.json`` + ``merges.txt``).

        Code and bin counts come from the arguments, else ``ofa_tokenizer.json``, else OFA's
        defaults (8192, 1000)."""
        d = Path(directory)
        vocab_path, merges_path = d / "vocab.json", d / "merges.txt"
        for p in (vocab_path, merges_path):
            if not p.is_file():
                raise UserError(
                    f"tokenizer file {p} not found: a tokenizer folder holds vocab.json and merges.txt "
                    "(an OFA checkpoint's, or one written by train_tiny_bpe)"
                )
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{vocab_path}: not valid JSON ({err})") from None
        merges: list[tuple[str, str]] = []
        for n, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise UserError(f"{merges_path}:{n}: a merge line is two tokens separated by one space")
            merges.append((parts[0], parts[1]))
        cfg: dict[str, int] = {}
        if (d / CONFIG_FILE).is_file():
            cfg = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        return cls(
            vocab,
            merges,
            num_codes=num_codes if num_codes is not None else int(cfg.get("num_codes", DEFAULT_NUM_CODES)),
            num_bins=num_bins if num_bins is not None else int(cfg.get("num_bins", DEFAULT_NUM_BINS)),
        )


def train_tiny_bpe(
    texts: Iterable[str],
    num_merges: int,
    out_dir: str | Path | None = None,
    *,
    num_codes: int = 0,
    num_bins: int = DEFAULT_NUM_BINS,
    min_frequency: int = 2,
) -> OFATokenizer:
    """Learn a byte-level BPE of at most ``num_merges`` merges from ``texts`` (deterministic).

    ``tokenizers``' ``BpeTrainer`` over GPT-2's pre-tokens, all 256 byte symbols in the alphabet: each
    step merges the most frequent adjacent pair (ties to the pair of smaller token ids), stopping
    early when no pair occurs ``min_frequency`` times. The vocab is laid out as OFA's: the specials
    (0-3), the 256 byte symbols in byte order, the merged tokens in merge order, then ``<mask>``.
    Written to ``out_dir`` when given.
    """
    if num_merges < 0:
        raise ValueError("num_merges must be >= 0")
    bpe = _byte_level(models.BPE(unk_token=SPECIALS[3]))
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIALS) + 256 + num_merges,
        min_frequency=min_frequency,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    learned = json.loads(bpe.to_str())["model"]["merges"]
    # older tokenizers releases write a merge as "a b", newer ones as ["a", "b"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned][:num_merges]
    merges = cast(list[tuple[str, str]], pairs)  # each merge is a pair of symbols
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for byte in range(256):
        vocab[bytes_to_unicode()[byte]] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[MASK] = len(vocab)
    tok = OFATokenizer(vocab, merges, num_codes=num_codes, num_bins=num_bins)
    if out_dir is not None:
        tok.save(out_dir)
    return tok
