"""OFA's byte-level BPE through Hugging Face ``tokenizers`` gives the ids (and text) of the pure-Python
BPE it replaced (``ofa_bpe_reference.py``, a test-only transcription) on the ofa-smoke data and on
thousands of varied strings: unicode from many scripts, every kind of space, punctuation, GPT-2's
contractions, control characters."""

from __future__ import annotations

import random
import unicodedata

import pytest
from ofa_bpe_reference import ReferenceBPE, train_reference_bpe

from petlbench.benchmarks.datasets.ofa_tsv import read_ofa_tsv
from petlbench.benchmarks.ofa_tasks.formatting import format_example
from petlbench.benchmarks.ofa_tasks.smoke import FILES, smoke_texts, write_ofa_smoke
from petlbench.benchmarks.ofa_tasks.tokenizer import OFATokenizer, train_tiny_bpe

SPACES = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u200b"
SPACES += "\u2028\u2029\u202f\u205f\u3000\ufeff"  # every kind of white space and a zero-width one
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "\u2019s", "'x", "''"]


def _piece(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return chr(rng.randint(0x20, 0x7E))  # ASCII letters, digits, punctuation, space
    if r < 0.55:
        return rng.choice(SPACES + "   ")
    if r < 0.62:
        return rng.choice(CONTRACTIONS)
    if r < 0.80:
        return chr(rng.randint(0xA0, 0x2FFF))  # Latin-1 to CJK radicals: accents, combining marks, ...
    if r < 0.90:
        return chr(rng.randint(0x3000, 0xD7FF))  # CJK, Hangul
    if r < 0.97:
        return chr(rng.randint(0x10000, 0x1FAFF))  # astral: historic scripts, maths, emoji
    return chr(rng.randint(0, 0x1F))


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """``n`` random strings of 0-40 pieces. Only characters assigned in this Python's Unicode
    database: for characters newer than the Unicode tables of ``tokenizers``' regex engine the two
    pre-tokenizers can disagree on ``\\p{L}`` (as two releases of ``regex`` can)."""
    rng = random.Random(seed)

    def assigned(s: str) -> bool:
        return all(unicodedata.category(c) not in ("Cn", "Cs") for c in s)

    out = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.randint(0, 40)):
            p = _piece(rng)
            while not assigned(p):
                p = _piece(rng)
            pieces.append(p)
        out.append("".join(pieces))
    return out


@pytest.fixture(scope="module")
def ofa_smoke(tmp_path_factory):
    """The ofa-smoke suite's data (its loader's arguments), its texts and its tokenizer."""
    root = tmp_path_factory.mktemp("ofa-smoke")
    info = write_ofa_smoke(root, n_train=48, n_val=16)
    samples = {t: [s for split in FILES[t] for s in read_ofa_tsv(info["files"][t][split], t)] for t in FILES}
    return samples, smoke_texts(samples), OFATokenizer.load(info["bpe"])


def _reference(tok: OFATokenizer) -> ReferenceBPE:
    return ReferenceBPE(tok.vocab, tok.merges, num_codes=tok.num_codes)


def test_ids_equal_the_pure_python_bpe_on_the_ofa_smoke_data(ofa_smoke):
    samples, texts, tok = ofa_smoke
    ref = _reference(tok)
    assert [tok.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    # what the harness encodes: every example's instruction and target, as formatted for OFA
    for task, rows in samples.items():
        for s in rows:
            ex = format_example(task, s, tok, patch_image_size=64, train=True)
            assert tok.encode(ex.meta["instruction"]) == ref.encode(ex.meta["instruction"])
            assert tok.decode(ex.src_ids, skip_special_tokens=False) == ref.decode(ex.src_ids, False)
            assert tok.decode(ex.target_ids) == ref.decode(ex.target_ids)
    # and the vocabulary the old pure-Python trainer made from the same texts (ties broken otherwise)
    vocab, merges = train_reference_bpe(texts, 300)
    old = OFATokenizer(vocab, merges, num_codes=0)
    assert [old.encode(t) for t in texts] == [ReferenceBPE(vocab, merges).encode(t) for t in texts]


def test_ids_and_text_equal_the_pure_python_bpe_on_varied_strings(ofa_smoke):
    strings = varied_strings(3000)
    learned = train_tiny_bpe(strings[:1500], 600)  # merges over many scripts and spaces
    assert len(learned.merges) == 600
    vocab, merges = train_reference_bpe(strings[:300], 150)  # the old trainer is slow
    for tok in (OFATokenizer(vocab, merges, num_codes=5, num_bins=7), learned, ofa_smoke[2]):
        ref = _reference(tok)
        assert [tok.encode(s) for s in strings] == [ref.encode(s) for s in strings]
        assert all(tok.decode(tok.encode(s)) == s for s in strings)
        rng = random.Random(1)  # arbitrary id runs: partial UTF-8, specials, codes and bins between
        for _ in range(2000):
            ids = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 20))]
            assert tok.decode(ids) == ref.decode(ids)
            assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids, False)


def test_trained_vocabulary_keeps_ofas_layout_and_merge_budget(tmp_path):
    texts = varied_strings(300, seed=2)
    tok = train_tiny_bpe(texts, 50, tmp_path, num_bins=10)
    assert len(tok.merges) == 50
    again = OFATokenizer.load(tmp_path)
    assert again.vocab == tok.vocab and again.merges == tok.merges
    assert [tok.token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert [tok.token(4 + b) for b in (0x21, 0x20, 0xFF)] == ["!", "\u0120", "\u00ff"]  # byte order
    assert tok.token(tok.base_vocab_size - 1) == "<mask>" and tok.bin_id(0) == tok.base_vocab_size
    assert train_tiny_bpe(texts, 0).merges == []


def test_merges_outside_the_vocab_are_a_user_error():
    from petlbench.errors import UserError

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5}
    with pytest.raises(UserError, match="merges do not fit the vocab"):
        OFATokenizer(vocab, [("a", "b")])
