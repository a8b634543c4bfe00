"""BitFit: exact bias counts on the real architectures, the OFA variant, that exactly the selected
backbone biases train (and are what the harness counts and checkpoints), training on the smoke
suite, option errors."""

import pytest
import torch
from smoke_training import train_on

from petlbench.backbones import build_backbone
from petlbench.backbones.heads import LinearHead
from petlbench.errors import UserError
from petlbench.harness.objectives import count_parameters
from petlbench.methods.bitfit import BitFit, BitFitConfig, BitFitOFA
from petlbench.methods.registry import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _count(backbone, **cfg):
    """Attach, count, and leave the (shared) backbone frozen again."""
    method = BitFit(BitFitConfig(**cfg))
    try:
        method.attach(backbone)
        trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
        assert sum(p.numel() for n, p in backbone.named_parameters() if n in trainable) == (
            method.num_trainable_parameters()
        )
        return method.num_trainable_parameters(), trainable
    finally:
        backbone.freeze()


def test_registered_under_its_name():
    assert get_method("bitfit") is BitFit


def test_all_biases_of_vit_b16_are_102912_and_the_harness_counts_them(vit_b16):
    n, names = _count(vit_b16)
    assert n == 102_912 == 12 * (2304 + 768 + 3072 + 768 + 2 * 768) + 768 + 768
    assert all("bias" in name for name in names)
    assert "towers.image.vit.patch_embed.proj.bias" in names and "towers.image.vit.norm.bias" in names
    method = BitFit()
    try:
        method.attach(vit_b16)
        counts = count_parameters(method, LinearHead(768, 10), vit_b16)
    finally:
        vit_b16.freeze()
    assert counts["method"] == 102_912 and counts["with_head"] == 102_912 + 7_690
    assert counts["backbone_total"] == 85_798_656
    assert round(counts["percent_of_backbone"], 3) == 0.120


def test_ofa_variant_trains_layernorm_and_ffn_biases_only(vit_b16):
    n, names = _count(vit_b16, variant="ofa")
    assert n == 65_280 == 12 * (2 * 768 + 3072 + 768) + 768  # blocks + final LayerNorm
    assert not any(".attn." in name or "patch_embed" in name for name in names)
    assert any(name.endswith("mlp.fc1.bias") for name in names)
    assert BitFitOFA().config.variant == "ofa"


def test_clip_b16_towers(clip_b16):
    assert _count(clip_b16)[0] == 102_912  # image: blocks 101,376 + ln_pre + ln_post (conv1 has no bias)
    assert _count(clip_b16, tower="text")[0] == 68_096  # 12 * 5,632 + ln_final 512
    assert _count(clip_b16, tower="both")[0] == 171_008
    assert _count(clip_b16, variant="ofa")[0] == 66_048  # 12 * 5,376 + ln_pre + ln_post
    assert not any(p.requires_grad for p in clip_b16.parameters())


def test_text_tower_selection_leaves_the_image_tower_cacheable():
    b = build_backbone("tiny-clip")
    BitFit({"tower": "text"}).attach(b)
    assert b.tower("text").has_trainable_parameters()
    assert not b.tower("image").has_trainable_parameters()


@pytest.mark.parametrize(
    ("backbone_name", "tower", "epochs"), [("tiny-vit", "image", 4), ("tiny-clip", "both", 8)]
)
def test_trains_only_biases_on_the_smoke_suite_and_beats_its_untrained_state(
    colors, backbone_name, tower, epochs
):
    trained = train_on(colors, "bitfit", backbone_name, {"tower": tower}, epochs=epochs)
    b, method, before = trained.model.backbone, trained.method, trained.before
    assert len(list(method.parameters())) == 0  # owns nothing: the biases stay the backbone's
    assert trained.learned(10), (trained.before_acc, trained.after_acc)
    after = b.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("bias" in k for k in changed)
    assert {k.split(".")[1] for k in changed} == set(b.tower_names if tower == "both" else [tower])

    # The checkpoint holds the biases; loading it into a fresh backbone reproduces the features.
    state = method.method_state()
    assert set(state) == set(method.parameter_names())
    fresh = build_backbone(backbone_name)
    other = BitFit({"tower": tower})
    other.attach(fresh)
    other.load_method_state(state)
    pixels = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fresh.encode_image(pixels), b.encode_image(pixels))
    with pytest.raises(UserError, match="does not match"):
        other.load_method_state({"image.nope.bias": torch.zeros(1)})


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="variant must be one of all, ofa"):
        BitFit({"variant": "layernorm"})
    with pytest.raises(UserError, match="tower"):
        BitFit({"tower": "audio"})
    with pytest.raises(UserError, match="no option"):
        BitFit({"biases": "all"})
    with pytest.raises(UserError, match="has no text tower"):
        BitFit({"tower": "text"}).attach(build_backbone("tiny-vit"))
    with pytest.raises(RuntimeError, match="attach"):
        BitFit().num_trainable_parameters()
