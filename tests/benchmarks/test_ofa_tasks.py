"""OFA task side: the byte-level BPE tokenizer, per-task formatting and location bins, smoke data."""

import json
import time
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from petlbench.benchmarks.datasets.ofa_tsv import OFASample, read_ofa_tsv
from petlbench.benchmarks.metrics.ofa import box_iou
from petlbench.benchmarks.ofa_tasks.formatting import (
    bins_to_box,
    box_to_bins,
    candidate_answers,
    candidates_for,
    decode_box,
    format_example,
    pre_caption,
    pre_question,
)
from petlbench.benchmarks.ofa_tasks.smoke import FILES, write_ofa_smoke, write_ofa_tiny
from petlbench.benchmarks.ofa_tasks.tokenizer import OFATokenizer, train_tiny_bpe
from petlbench.benchmarks.synthetic import world
from petlbench.errors import UserError

TEXTS = [
    ' which region does the text " the red circle " describe?',
    ' does the image describe " a dog "?',
    " what does the image describe?",
    " a red circle in the top left",
    " is this a dog?",
    " yes",
    " no",
    " maybe",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_bpe(TEXTS * 3, 80, tmp_path_factory.mktemp("bpe"), num_bins=1000)


def _png(w: int, h: int, color=(10, 200, 30)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


# ----- tokenizer ----------------------------------------------------------------------------------


def test_tiny_bpe_by_hand(tmp_path):
    # "aaaa": the pair (a, a) occurs 3 times -> merged; then (aa, aa) occurs once < min_frequency 2
    t = train_tiny_bpe(["aaaa"], 10, tmp_path, num_bins=0)
    assert (tmp_path / "merges.txt").read_text().splitlines() == ["#version: 0.2", "a a"]
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert [vocab[s] for s in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["aa"] == 4 + 256 and vocab["<mask>"] == 261 and len(t) == 262  # no codes, no bins
    assert t.encode("aaaa") == [vocab["aa"], vocab["aa"]]
    assert t.encode("aaa") == [vocab["aa"], vocab["a"]]
    assert t.encode(" a") == [vocab["Ġ"], vocab["a"]]  # GPT-2 maps the space byte to "Ġ"


def test_tokenizer_round_trip_specials_and_bins(tok, tmp_path):
    for text in [*TEXTS, " unseen wörds, 3.5 don't\n\ttabs  ", ""]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.base_vocab_size and i not in (0, 1, 2, 3, tok.mask_id) for i in ids)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert len(tok) == tok.base_vocab_size + 0 + 1000 and tok.num_bins == 1000
    assert tok.mask_id == tok.base_vocab_size - 1
    assert tok.bin_id(0) == tok.base_vocab_size and tok.bin_id(999) == len(tok) - 1
    assert tok.bin_index(tok.bin_id(417)) == 417 and tok.bin_index(5) is None
    ids = [0, *tok.encode(" yes"), tok.bin_id(3), 2, 1]
    assert tok.decode(ids) == " yes<bin_3>"
    assert tok.decode(ids, skip_special_tokens=False) == "<s> yes<bin_3></s><pad>"
    assert len(tok.encode(" which region does the text")) < len(b" which region does the text")
    again = OFATokenizer.load(tok.save(tmp_path / "saved"))
    assert len(again) == len(tok) and again.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_tiny_bpe_is_deterministic(tmp_path):
    train_tiny_bpe(TEXTS, 60, tmp_path / "a")
    train_tiny_bpe(list(TEXTS), 60, tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "ofa_tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_real_ofa_vocabulary_size_and_id_layout():
    # BART's vocab.json: 4 specials + 50,260 BPE entries + <mask> = 50,265 (reference A1.2)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": 4 + i for i in range(50260)}}
    t = OFATokenizer(vocab, [])
    assert t.mask_id == 50264 and len(t) == 59457
    assert t.code_id(0) == 50265 and t.bin_id(0) == 58457 and t.bin_index(59456) == 999
    assert t.token(50265 + 8191) == "<code_8191>"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="vocab.json not found"):
        OFATokenizer.load(tmp_path)
    with pytest.raises(UserError, match="'<pad>' to id 1"):
        OFATokenizer({"<s>": 0, "<pad>": 5, "</s>": 2, "<unk>": 3}, [])
    (tmp_path / "vocab.json").write_text(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(UserError, match=r"merges.txt:2: a merge line"):
        OFATokenizer.load(tmp_path)


# ----- location bins ------------------------------------------------------------------------------


def test_bins_follow_ofas_formula_including_the_size_quirk():
    # S = max_image_size: bin = round(x / W * 999)
    assert box_to_bins((0, 0, 640, 480), (640, 480), patch_image_size=512) == [0, 0, 999, 999]
    assert box_to_bins((320, 120, 480, 360), (640, 480), patch_image_size=512) == [500, 250, 749, 749]
    # S = 480 with the default max_image_size 512: the far edge reaches round(480 / 512 * 999) = 937
    assert box_to_bins((0, 0, 640, 480), (640, 480), patch_image_size=480) == [0, 0, 937, 937]
    assert box_to_bins((0, 0, 640, 480), (640, 480), patch_image_size=480, max_image_size=480) == [
        0,
        0,
        999,
        999,
    ]
    assert bins_to_box([0, 0, 937, 937], (640, 480), patch_image_size=480) == pytest.approx(
        (0, 0, 937 / 999 * 512 * 640 / 480, 937 / 999 * 512)
    )


def test_bins_round_trip_within_one_bin():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(20, 900, 2))
        x0, x1 = np.sort(rng.uniform(0, w, 2))
        y0, y1 = np.sort(rng.uniform(0, h, 2))
        s, m = int(rng.choice([256, 384, 480, 512])), 512
        back = bins_to_box(
            box_to_bins((x0, y0, x1, y1), (w, h), patch_image_size=s, max_image_size=m),
            (w, h),
            patch_image_size=s,
            max_image_size=m,
        )
        bin_w, bin_h = m / 999 * w / s, m / 999 * h / s  # one bin in original pixels
        err = np.abs(np.subtract(back, (x0, y0, x1, y1)))
        assert (err[::2] <= bin_w / 2 + 1e-3).all() and (err[1::2] <= bin_h / 2 + 1e-3).all()


# ----- formatting ---------------------------------------------------------------------------------


def test_pre_caption_and_pre_question():
    assert pre_caption(",.A Woman, in a white-blouse/shirt.  ") == "a woman, in a white blouse shirt."
    assert pre_caption("<person> waves") == "person waves"
    assert pre_caption("one two three", max_words=2) == "one two"
    assert pre_question("?Is  this a DOG") == "is this a dog"


def test_format_refcoco(tok):
    s = OFASample("1", "9", _png(640, 480), text="The Red-Circle", box=(320.0, 120.0, 480.0, 360.0))
    ex = format_example("refcoco", s, tok, patch_image_size=512, train=True)
    assert ex.meta["instruction"] == ' which region does the text " the red circle " describe?'
    assert ex.src_ids == [0, *tok.encode(ex.meta["instruction"]), 2]
    assert ex.target_ids == [tok.bin_id(b) for b in (500, 250, 749, 749)] + [2]
    assert ex.pixels.shape == (3, 512, 512) and ex.pixels.dtype == torch.float32
    assert ex.pixels[:, 0, 0].tolist() == pytest.approx([10 / 255, 200 / 255, 30 / 255])
    assert ex.meta["box"] == (320.0, 120.0, 480.0, 360.0) and ex.meta["size"] == (640, 480)
    assert ex.meta["w_resize_ratio"] == 512 / 640 and ex.meta["h_resize_ratio"] == 512 / 480
    box = decode_box(ex.target_ids, ex.meta, tok)
    assert box == pytest.approx((320, 120, 480, 360), abs=512 / 999 * 640 / 512)
    assert box_iou(box, s.box) > 0.98
    with pytest.raises(ValueError, match="four <bin_i> tokens"):
        decode_box(tok.encode(" yes") + [2], ex.meta, tok)
    assert decode_box(ex.target_ids[:3], ex.meta, tok, strict=False) is None


def test_format_snli_ve(tok):
    s = OFASample("1", "1", _png(40, 30), hypothesis="A dog.", premise="Two dogs run", label="contradiction")
    ex = format_example("snli_ve", s, tok, patch_image_size=32, train=True)
    assert ex.meta["instruction"] == ' does the image describe " a dog. "?'
    assert ex.target_ids == [*tok.encode(" no"), 2] and ex.meta["label"] == "no"
    cap = format_example("snli_ve", s, tok, patch_image_size=32, train=False, add_caption=True)
    assert cap.meta["instruction"] == ' can image and text1 " two dogs run " imply text2 " a dog. "?'
    assert cap.src_ids == [0, *tok.encode(cap.meta["instruction"]), 2]
    for label, answer in (("entailment", " yes"), ("neutral", " maybe")):
        one = OFASample("1", "1", s.image, label=label)
        assert format_example("snli_ve", one, tok, patch_image_size=8, train=True).meta["target"] == answer
    cands = candidates_for("snli_ve", [], tok)
    assert [tok.decode(c) for c in cands] == [" yes", " no", " maybe"] and all(c[-1] == 2 for c in cands)


def test_format_caption(tok):
    s = OFASample("1", "1", _png(16, 16), captions=["A dog, running fast.", "a  dog!"])
    train = format_example("caption", s, tok, patch_image_size=16, train=True, max_caption_words=3)
    assert train.meta["instruction"] == " what does the image describe?"
    assert train.meta["target"] == " A dog running"  # punctuation stripped (not lowercased), 3 words
    assert train.target_ids == [*tok.encode(" A dog running"), 2]
    ev = format_example("caption", s, tok, patch_image_size=16, train=False)
    assert ev.meta["refs"] == ["A dog running fast", "a dog"]


def test_format_vqa_and_candidates(tok):
    s = OFASample("1", "1", _png(16, 16), question="Is this a dog", answers={"no": 0.6, "yes": 1.0})
    ex = format_example("vqa", s, tok, patch_image_size=16, train=True)
    assert ex.meta["instruction"] == " is this a dog?"
    assert ex.target_ids == [*tok.encode(" yes"), 2] and ex.meta["answers"] == {"no": 0.6, "yes": 1.0}
    tie = OFASample("2", "2", s.image, question="what?", answers={"b": 0.6, "a": 0.6})
    assert format_example("vqa", tie, tok, patch_image_size=8, train=True).meta["answer"] == "b"
    assert candidate_answers("vqa", [s, tie]) == ["no", "yes", "b", "a"]
    assert candidates_for("vqa", ["yes", "no", "yes"], tok) == [
        [*tok.encode(" yes"), 2],
        [*tok.encode(" no"), 2],
    ]
    with pytest.raises(ValueError, match="no candidate answer set"):
        candidate_answers("caption", [])


def test_pixels_are_a_bicubic_resize_in_unit_range(tok):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    buf = BytesIO()
    img.save(buf, format="PNG")
    sample = OFASample("1", "1", buf.getvalue(), captions=["x"])
    ex = format_example("caption", sample, tok, patch_image_size=24, train=True)
    want = np.asarray(img.resize((24, 24), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255
    assert torch.allclose(ex.pixels, torch.from_numpy(want))
    assert float(ex.pixels.min()) >= 0.0 and float(ex.pixels.max()) <= 1.0


# ----- smoke data ---------------------------------------------------------------------------------


def test_smoke_is_deterministic_and_readable(tmp_path):
    start = time.perf_counter()
    a = write_ofa_tiny(tmp_path / "a")
    assert time.perf_counter() - start < 1.0
    b = write_ofa_tiny(tmp_path / "b")
    c = write_ofa_tiny(tmp_path / "c", seed=1)
    assert a["sha256"] == b["sha256"] and len(a["sha256"]) == 8 + 3
    assert a["sha256"] != c["sha256"]
    tok = OFATokenizer.load(a["bpe"])
    for task, splits in FILES.items():
        for split, rel in splits.items():
            rows = read_ofa_tsv(tmp_path / "a" / rel, task)
            assert len(rows) == (6 if split == "train" else 3) and rows[0].pil().size == (32, 32)
            for s in rows:
                ex = format_example(task, s, tok, patch_image_size=32, train=split == "train")
                assert tok.decode(ex.src_ids) == ex.meta["instruction"]
                assert len(ex.src_ids) - 2 < len(ex.meta["instruction"].encode()) / 2  # the BPE compresses
                if task == "refcoco":  # S = 32 with max_image_size 512: bins of 512 / 999 pixels
                    assert decode_box(ex.target_ids, ex.meta, tok) == pytest.approx(s.box, abs=0.26)
    assert json.loads((tmp_path / "a" / "ofa_smoke.json").read_text())["sha256"] == a["sha256"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    info = write_ofa_smoke(root, seed=3, n_train=60, n_val=10, image_size=48)
    return {task: read_ofa_tsv(info["files"][task]["train"], task) for task in FILES}


def test_smoke_refcoco_boxes_are_the_named_objects(smoke):
    for s in smoke["refcoco"]:
        words = s.text.split()
        color = next(w for w in words if w in world.ALL_COLORS)
        img = np.asarray(s.pil()).astype(int)
        near = np.abs(img - np.asarray(world.ALL_COLORS[color])).max(axis=2) <= 35
        ys, xs = np.nonzero(near)
        assert s.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), s.text
        assert s.box[2] - s.box[0] >= 3 and s.box[3] - s.box[1] >= 3


def test_smoke_tasks_carry_learnable_signal(smoke):
    labels = [s.label for s in smoke["snli_ve"]]
    assert set(labels) == {"entailment", "neutral", "contradiction"}
    for s in smoke["snli_ve"]:
        if s.label == "entailment" and s.hypothesis.startswith("the shape is "):
            color = s.hypothesis.split()[-1]
            pixels = np.asarray(s.pil()).reshape(-1, 3).astype(int)
            assert (np.abs(pixels - world.ALL_COLORS[color]).max(axis=1) <= 35).sum() > 5
    assert all(s.captions and s.captions[0].endswith(".") for s in smoke["caption"])
    answers = [s.answers for s in smoke["vqa"]]
    assert all(max(a.values()) == 1.0 for a in answers)
    assert any(len(a) == 2 and 0.3 in a.values() for a in answers)
    assert any(not s.question.endswith("?") for s in smoke["vqa"])
