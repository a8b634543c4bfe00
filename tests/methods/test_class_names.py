"""Class names enter CLIP prompts with "_" read as a space, as KaiyangZhou/CoOp does (trainers/zsclip.py
L43, trainers/coop.py L98, trainers/cocoop.py L104), in the text head (zero-shot, image-only methods
on CLIP) and in CoOp's and CoCoOp's prompt layouts."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.heads import TextClassifierHead, class_prompts, prompt_class_name
from petlbench.harness.objectives.classification import head_for
from petlbench.methods import get_method
from petlbench.methods.cocoop import CoCoOp
from petlbench.methods.coop import CoOp

NAMES = ["american_bulldog", "great_pyrenees", "pug"]


@pytest.fixture(scope="module")
def tiny_clip():
    return build_backbone("tiny-clip")


def test_prompt_class_name():
    assert prompt_class_name("american_bulldog") == "american bulldog"
    assert prompt_class_name("a__b_c") == "a  b c"
    assert class_prompts(["x_y", "z"], ["a photo of a {}.", "{} texture."]) == [
        "a photo of a x y.",
        "x y texture.",
        "a photo of a z.",
        "z texture.",
    ]


def test_text_head_and_zero_shot_prompts(tiny_clip):
    head = TextClassifierHead(tiny_clip, NAMES, ["a photo of a {}."])
    assert head.prompt_texts[0] == "a photo of a american bulldog."
    assert head.prompt_texts == [f"a photo of a {n.replace('_', ' ')}." for n in NAMES]
    assert head.class_names == NAMES  # the names as given are kept for display
    want = tiny_clip.tokenize(
        ["a photo of a american bulldog.", "a photo of a great pyrenees.", "a photo of a pug."]
    )
    assert torch.equal(head.token_ids, want)
    assert not torch.equal(head.token_ids[0], tiny_clip.tokenize(["a photo of a american_bulldog."])[0])
    # zero-shot CLIP (and any image-only method on CLIP) gets exactly this head
    zs = get_method("zeroshot")()
    zs.attach(tiny_clip)
    zs_head = head_for(zs, tiny_clip, NAMES, ["a photo of a {}."])
    assert isinstance(zs_head, TextClassifierHead) and zs_head.prompt_texts == head.prompt_texts


@pytest.mark.parametrize(
    ("position", "text"),
    [
        ("end", "X X X X american bulldog."),
        ("middle", "X X american bulldog X X."),
        ("front", "american bulldog X X X X."),
    ],
)
def test_coop_prompt_texts(tiny_clip, position, text):
    torch.manual_seed(0)
    method = CoOp({"n_ctx": 4, "class_token_position": position})
    method.attach(tiny_clip)
    head = method.make_head(tiny_clip, NAMES, [])
    assert head.prompt_texts[0] == text and head.texts is head.prompt_texts
    assert torch.equal(head.token_ids[0], tiny_clip.tokenize([text])[0, : head.token_ids.shape[1]])
    # the class name's tokens sit between the context placeholders (no "_" token)
    name_ids = tiny_clip.tokenize(["american bulldog"])[0, 1:3]
    ctx = set(head.ctx_pos[0].tolist())
    name_pos = [p for p in range(1, int(head.eot[0]) - 1) if p not in ctx]
    assert head.token_ids[0, name_pos].tolist() == name_ids.tolist()


def test_cocoop_prompt_texts(tiny_clip):
    torch.manual_seed(0)
    method = CoCoOp()  # ctx_init "a photo of a": M = 4 placeholders
    method.attach(tiny_clip)
    head = method.make_head(tiny_clip, NAMES, [])
    assert head.prompt_texts == ["X X X X american bulldog.", "X X X X great pyrenees.", "X X X X pug."]
