"""SSF: the exact count on ViT-B/16, equal to a transcription of dongzelian/SSF's forward, folding
changes no output on ViT, Swin and CLIP (and unfolding restores the weights), the fold stage and state,
and a frozen-backbone (teacher) forward without its tower-level scale and shift."""

import copy

import pytest
import torch
from vit_reference import forward, randomize

from petlbench.backbones import build_backbone
from petlbench.methods.base import frozen_backbone
from petlbench.methods.registry import get_method
from petlbench.methods.ssf import SSF

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_on_vit_b16_is_205824(vit_b16):
    try:
        m = SSF()
        m.attach(vit_b16)
        # per block 2 * (768 + 2304 + 768 + 768 + 3072 + 768); patch embedding and final norm 2 * 768 each
        assert m.num_trainable_parameters() == 12 * 2 * 8448 + 2 * 2 * 768 == 205_824
    finally:
        vit_b16.tower("image").clear_slots()


class _SSFHooks:
    """``ssf_ada`` after the ops dongzelian/SSF wraps (vision_transformer.py:L152-166, L190-211,
    L246-255, L366-367, L532-533), reading the method's parameters."""

    def __init__(self, mods):
        self.m = mods

    def _ada(self, key, x):
        return x * self.m[key].scale + self.m[key].shift

    def patch(self, x):
        return self._ada("embed", x)

    def final(self, x):
        return self._ada("final", x)

    def ln1(self, layer, h):
        return self._ada(f"{layer}_ln_1", h)

    def ln2(self, layer, h):
        return self._ada(f"{layer}_ln_2", h)

    def qkv(self, layer, x, qkv):
        return self._ada(f"{layer}_qkv", qkv)

    def proj(self, layer, a, out):
        return self._ada(f"{layer}_proj", out)

    def fc1(self, layer, h, u):
        return self._ada(f"{layer}_fc1", u)

    def fc2(self, layer, a, y):
        return self._ada(f"{layer}_fc2", y)


def test_equals_the_reference_forward_and_starts_away_from_the_backbone():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(3, 3, 32, 32)
    plain = b.encode_image(pixels)
    torch.manual_seed(0)
    m = SSF()
    m.attach(b)
    with torch.no_grad():
        ours = b.encode_image(pixels)
        ref = forward(b.tower("image").vit, pixels, _SSFHooks(m.ssf["image"]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)  # gamma ~ N(1, .02), beta ~ N(0, .02) at init


@pytest.mark.parametrize("backbone_name", ["tiny-vit", "tiny-swin", "tiny-clip"])
def test_folding_changes_no_output_and_unfolding_restores_the_weights(backbone_name):
    b = build_backbone(backbone_name)
    weights = {k: v.clone() for k, v in b.state_dict().items()}
    pixels = torch.rand(2, 3, 32, 32)
    m = get_method("ssf")({"tower": "both" if b.kind == "clip" else "image"})
    m.attach(b)
    randomize(m, std=0.2)
    ids = b.tokenize(["a red circle", "two blue squares"]) if b.kind == "clip" else None
    with torch.no_grad():
        unfolded = b.encode_image(pixels)
        text = b.encode_text(ids) if ids is not None else None
        m.fold()
        assert m.folded and not b.tower("image").has_trainable_parameters()
        assert all(not s.after_op for t in b.tower_names for s in b.tower(t).slots)
        folded = b.encode_image(pixels)
        torch.testing.assert_close(folded, unfolded, atol=1e-5, rtol=1e-5)
        if ids is not None:
            torch.testing.assert_close(b.encode_text(ids), text, atol=1e-5, rtol=1e-5)
        m.unfold()
        torch.testing.assert_close(b.encode_image(pixels), unfolded, atol=1e-5, rtol=1e-5)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, weights[k], atol=1e-5, rtol=1e-5)


def test_fold_stage_and_folded_state_reload():
    b = build_backbone("tiny-vit")
    pixels = torch.rand(2, 3, 32, 32)
    m = SSF({"fold": True})
    m.attach(b)
    assert [s.name for s in m.stages()] == ["train", "fold"] and not m.stages()[1].train
    randomize(m, std=0.2)
    with torch.no_grad():
        expected = b.encode_image(pixels)
    m.stages()[1].prepare(None)
    state = m.method_state()
    assert bool(state["folded"])
    fresh = build_backbone("tiny-vit")
    m2 = SSF({"fold": True})
    m2.attach(fresh)
    m2.load_method_state(state)
    assert m2.folded
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(pixels), expected, atol=1e-5, rtol=1e-5)
    assert [s.name for s in SSF().stages()] == ["train"]


def test_frozen_backbone_empties_the_tower_level_slots_too():
    """A teacher forward inside ``frozen_backbone`` is the plain backbone's: SSF's scale and shift
    after the patch embedding and the final norm (tower-level slots) are emptied with the layers'."""
    b = build_backbone("tiny-vit")
    untouched = copy.deepcopy(b)
    m = SSF()
    m.attach(b)
    randomize(m, std=0.2)
    slots = b.tower("image").tower_slots
    assert slots.after_patch_embed is not None and slots.after_final_norm is not None
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tuned = b.encode_image(pixels)
        with frozen_backbone(b):
            assert b.tower("image").tower_slots.modules() == []
            teacher = b.encode_image(pixels)
        again = b.encode_image(pixels)
        plain = untouched.encode_image(pixels)
    assert torch.equal(teacher, plain)
    assert torch.equal(again, tuned) and not torch.allclose(tuned, plain, atol=1e-3)
