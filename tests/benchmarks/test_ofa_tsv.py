"""OFA tsv readers and writers: round trips in the four formats, and one clear error per defect."""

import base64
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from petlbench.benchmarks.datasets.ofa_tsv import (
    OFASample,
    OFATsvIndex,
    format_line,
    iter_ofa_tsv,
    parse_answers,
    read_ofa_tsv,
    write_ofa_tsv,
)
from petlbench.errors import UserError


def _png(w: int = 12, h: int = 8, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 40)).save(buf, format="JPEG")
    return buf.getvalue()


SAMPLES = {
    "refcoco": [
        OFASample("79_1", "237367", _png(), text="A woman in a white blouse.", box=(2.5, 1.0, 10.25, 7.0)),
        OFASample("79_2", "237367", _jpeg(), text="left one", box=(0.0, 0.0, 5.0, 5.0)),
    ],
    "snli_ve": [
        OFASample(
            "1.jpg#0r1n", "1", _png(), hypothesis="a man eats.", premise="A man in pink.", label="neutral"
        ),
        OFASample("1.jpg#0r1e", "1", _png(seed=1), hypothesis="a man", premise="a man", label="entailment"),
        OFASample("2.jpg#0r1c", "2", _jpeg(), hypothesis="a cat", premise="a dog", label="contradiction"),
    ],
    "caption": [
        OFASample(
            "162365", "12455", _png(), captions=["the sun sets over the trees."], objects=["sky", "dock"]
        ),
        OFASample("7", "7", _png(seed=2), captions=["a red circle", "a circle", "red shape"], objects=[]),
    ],
    "vqa": [
        OFASample("79459", "79459", _png(), question="is this person wearing shorts?", answers={"no": 0.6}),
        OFASample("5", "5", _jpeg(), question="how many", answers={"2": 1.0, "3": 0.3}, objects=["sky"]),
    ],
}


@pytest.mark.parametrize("task", list(SAMPLES))
def test_round_trip(tmp_path, task):
    path = write_ofa_tsv(tmp_path / f"{task}.tsv", task, SAMPLES[task])
    back = read_ofa_tsv(path, task)
    assert back == SAMPLES[task]
    assert back[0].pil().size == (12, 8) and back[0].pil().mode == "RGB"
    assert OFATsvIndex(path, task)[:] == SAMPLES[task]
    # rewriting what was read gives the same bytes
    assert write_ofa_tsv(tmp_path / "again.tsv", task, back).read_bytes() == path.read_bytes()


def test_column_order_is_ofas(tmp_path):
    s = SAMPLES["refcoco"][0]
    cols = format_line("refcoco", s).split("\t")
    assert cols[:4] == ["79_1", "237367", "A woman in a white blouse.", "2.5,1.0,10.25,7.0"]
    assert base64.urlsafe_b64decode(cols[4]) == s.image
    snli = format_line("snli_ve", SAMPLES["snli_ve"][0]).split("\t")
    assert [snli[0], snli[1], snli[3], snli[4], snli[5]] == [
        "1.jpg#0r1n",
        "1",
        "a man eats.",
        "A man in pink.",
        "neutral",
    ]
    cap = format_line("caption", SAMPLES["caption"][1]).split("\t")
    assert cap[2:4] == ["a red circle&&a circle&&red shape", ""]
    vqa = format_line("vqa", SAMPLES["vqa"][1]).split("\t")
    assert vqa[2:5] == ["how many", "1.0|!+2&&0.3|!+3", "sky"]


def test_reads_ofa_readme_style_rows_crlf_blank_lines_and_standard_base64(tmp_path):
    img = _png()
    std = base64.b64encode(img).decode()  # some tsv builders use the standard alphabet
    rows = [
        f"79_1\t237367\tA woman holding a glass of wine.\t230.79,121.75,423.66,463.06\t{std}\r\n",
        "\n",
        f"80_1\t1\tx\t1,2,3,4\t{base64.urlsafe_b64encode(img).decode()}\n",
    ]
    path = tmp_path / "refcoco_val.tsv"
    path.write_text("".join(rows), newline="")
    got = read_ofa_tsv(path, "refcoco")
    assert [s.uid for s in got] == ["79_1", "80_1"]
    assert got[0].box == (230.79, 121.75, 423.66, 463.06) and got[0].image == img
    index = OFATsvIndex(path, "refcoco")
    assert len(index) == 2 and index[1].box == (1.0, 2.0, 3.0, 4.0)


def test_parse_answers():
    assert parse_answers("0.6|!+no&&1.0|!+yes") == {"no": 0.6, "yes": 1.0}
    assert parse_answers("") == {}
    with pytest.raises(ValueError, match="separator"):
        parse_answers("0.6 no")


GOOD = {
    "refcoco": ["u1", "i1", "a dog", "1,2,3,4", "IMG"],
    "snli_ve": ["u1", "i1", "IMG", "a dog", "a dog runs", "entailment"],
    "caption": ["u1", "i1", "a dog", "", "IMG"],
    "vqa": ["u1", "i1", "what?", "1.0|!+dog", "", "IMG"],
}


def _write_bad(tmp_path, task, fields):
    img = base64.urlsafe_b64encode(_png()).decode()
    good = "\t".join(GOOD[task]).replace("IMG", img)
    bad = "\t".join(fields).replace("IMG", img)
    path = tmp_path / f"{task}.tsv"
    path.write_text(f"{good}\n{good}\n{bad}\n")  # the defect is on line 3
    return path


@pytest.mark.parametrize(
    "task, change, message",
    [
        ("refcoco", lambda f: f[:4], "expected 5 tab-separated columns for an OFA refcoco tsv"),
        ("vqa", lambda f: [*f, "extra"], "expected 6 tab-separated columns for an OFA vqa tsv"),
        ("refcoco", lambda f: [*f[:4], "not*base64!"], "image-base64 is not valid base64"),
        ("snli_ve", lambda f: [f[0], f[1], "QUJD", *f[3:]], "does not decode to an image"),  # b"ABC"
        ("refcoco", lambda f: [*f[:3], "1,2,3", f[4]], "bad region-coord '1,2,3'"),
        ("refcoco", lambda f: [*f[:3], "5,2,3,4", f[4]], "x1 < x0"),
        ("refcoco", lambda f: [*f[:3], "1,2,nan,4", f[4]], "finite"),
        ("refcoco", lambda f: [*f[:3], "a,b,c,d", f[4]], "bad region-coord"),
        ("snli_ve", lambda f: [*f[:5], "contradicts"], "unknown SNLI-VE label 'contradicts'"),
        ("vqa", lambda f: [*f[:3], "1.0 dog", *f[4:]], "bad answers field"),
        ("vqa", lambda f: [*f[:3], "high|!+dog", *f[4:]], "bad answers field"),
        ("vqa", lambda f: [*f[:3], "7|!+dog", *f[4:]], "in [0, 1]"),
    ],
)
def test_errors_name_file_and_line(tmp_path, task, change, message):
    path = _write_bad(tmp_path, task, change(list(GOOD[task])))
    with pytest.raises(UserError) as err:
        read_ofa_tsv(path, task)
    assert f"{path}:3: " in str(err.value)
    assert message in str(err.value)
    index = OFATsvIndex(path, task)  # the lazy index reports the same line when it reaches it
    assert index[1].uid == "u1"
    with pytest.raises(UserError, match=f"{path}:3: "):
        index[2]


def test_stream_yields_good_lines_before_the_bad_one(tmp_path):
    path = _write_bad(tmp_path, "caption", ["u1", "i1", "a dog"])
    it = iter_ofa_tsv(path, "caption")
    assert next(it).captions == ["a dog"] and next(it).uid == "u1"
    with pytest.raises(UserError, match=r":3: expected 5"):
        next(it)


def test_missing_file_unknown_format_and_unwritable_values(tmp_path):
    with pytest.raises(UserError, match="refcoco tsv file .*nope.tsv not found"):
        read_ofa_tsv(tmp_path / "nope.tsv", "refcoco")
    with pytest.raises(UserError, match="unknown OFA tsv format 'gqa'"):
        read_ofa_tsv(tmp_path / "nope.tsv", "gqa")
    path = tmp_path / "bytes.tsv"
    path.write_bytes(b"\xff\xfe\tx\n")
    with pytest.raises(UserError, match=f"{path}:1: not UTF-8"):
        read_ofa_tsv(path, "caption")
    tab = OFASample("u", "i", _png(), text="a\tb", box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="tab or newline"):
        write_ofa_tsv(tmp_path / "x.tsv", "refcoco", [tab])
    with pytest.raises(ValueError, match="no box"):
        write_ofa_tsv(tmp_path / "x.tsv", "refcoco", [OFASample("u", "i", _png())])
