"""With no method attached, a wrapped backbone computes exactly what the original model computes."""

import pytest
import torch

from petlbench.backbones import build_backbone
from petlbench.backbones.clip import build_tiny_clip
from petlbench.backbones.random_features import random_feature_init
from petlbench.backbones.vit import build_tiny_vit


def _tiny_open_clip(seed=0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=64,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    )
    random_feature_init(model, seed)
    return model.eval()


def test_tiny_clip_image_and_text_towers_equal_open_clip():
    ref = _tiny_open_clip()
    ours = build_tiny_clip("tiny-clip", seed=0)
    pixels = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours.encode_image(pixels), ref.encode_image(pixels), atol=1e-5, rtol=0)
    ids = ours.tokenize(["a photo of a dog.", "red", "a much longer prompt about a striped cat on a mat"])
    torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), atol=1e-5, rtol=0)


def test_text_tower_cut_to_longest_prompt_is_exact():
    """Cutting tokens after the longest EOT is exact only because the causal mask is honoured."""
    b = build_tiny_clip("tiny-clip", seed=3)
    ids = b.tokenize(["a", "a photo of a bird"])
    tower = b.tower("text")
    full = tower.encode_embeddings(tower.embed(ids), ids.argmax(-1))
    torch.testing.assert_close(b.encode_text(ids), full, atol=1e-5, rtol=0)


def test_tiny_vit_equals_timm():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    random_feature_init(ref, 0)
    ref.eval()
    ours = build_tiny_vit("tiny-vit", seed=0)
    pixels = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours.encode_image(pixels), ref(pixels), atol=1e-5, rtol=0)


def test_vit_b16_architecture_equals_timm(vit_b16):
    ref = vit_b16.tower("image").vit  # the wrapped timm model, called through its own forward
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(vit_b16.encode_image(pixels), ref(pixels), atol=1e-5, rtol=1e-5)


def test_clip_b16_architecture_equals_open_clip(clip_b16):
    import open_clip

    torch.manual_seed(1)
    ref = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    ref.load_state_dict({**ref.state_dict(), **_reference_state(clip_b16)})
    pixels = torch.randn(1, 3, 224, 224)
    ids = clip_b16.tokenize(["a photo of a dog."])
    with torch.no_grad():
        torch.testing.assert_close(
            clip_b16.encode_image(pixels), ref.encode_image(pixels), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(clip_b16.encode_text(ids), ref.encode_text(ids), atol=1e-4, rtol=1e-4)


def _reference_state(backbone):
    """Map our tower parameter names back to open_clip's CLIP names."""
    state = {}
    for name, tensor in backbone.state_dict().items():
        if name.startswith("towers.image.visual."):
            state["visual." + name[len("towers.image.visual.") :]] = tensor
        elif name.startswith("towers.text."):
            state[name[len("towers.text.") :]] = tensor
        elif name == "logit_scale":
            state[name] = tensor
    return state


def test_exact_backbone_parameter_totals(vit_b16, clip_b16):
    assert vit_b16.num_parameters() == 85_798_656
    assert clip_b16.num_parameters() == 149_620_737
    assert clip_b16.num_parameters(exclude=["towers.text.token_embedding"]) == 124_323_841


def test_random_feature_init_keeps_tiny_features_informative():
    """timm's default init at width 64 makes the random network forget where things are; the
    random-feature init keeps it (nearest class mean on the smoke suite's position task)."""
    from timm.models.vision_transformer import VisionTransformer

    from petlbench.benchmarks.datasets import load_task
    from petlbench.benchmarks.suites import load_suite

    data = load_task(load_suite("smoke").task("position"), None)
    train, val = data.split("train"), data.split("val")

    def nearest_class_mean(encode):
        with torch.no_grad():
            a, b = encode(train.images.float() / 255), encode(val.images.float() / 255)
        means = torch.stack([a[train.labels == c].mean(0) for c in range(4)])
        return float((torch.cdist(b, means).argmin(1) == val.labels).float().mean())

    torch.manual_seed(0)
    timm_default = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0
    )
    ours = build_tiny_vit("tiny-vit", seed=0)
    assert nearest_class_mean(timm_default.eval()) < 0.32  # chance is 0.25
    assert nearest_class_mean(ours.encode_image) > 0.38
    for name, p in ours.named_parameters():
        if p.ndim == 2 and "pos" not in name:
            assert abs(float(p.std()) * p.shape[1] ** 0.5 - 1.0) < 0.15, name


def test_backbone_weights_are_frozen_and_stay_in_eval_mode():
    b = build_backbone("tiny-clip")
    assert not any(p.requires_grad for p in b.parameters())
    b.train()
    assert not any(m.training for m in b.modules())


def test_unknown_backbone_is_a_user_error():
    from petlbench.errors import UserError

    with pytest.raises(UserError, match="unknown backbone 'nope'.*tiny-clip"):
        build_backbone("nope")
