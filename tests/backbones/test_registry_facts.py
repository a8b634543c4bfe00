"""Backbone facts declared as data next to each registry entry (checkpoint tag, mean/std, input size,
towers) equal what the built backbone reports; vit-b16 is VPT's checkpoint with ImageNet mean/std.

Every build here is ``pretrained=False`` (real architectures, random weights): nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

from petlbench.backbones.registry import BackboneEntry, backbone_entries, build_backbone
from petlbench.errors import UserError

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
CHEAP = ("tiny-clip", "tiny-vit", "tiny-swin", "micro-clip", "micro-vit", "ofa-test")
BUILTINS = (
    *CHEAP,
    "clip-vit-b16",
    "vit-b16",
    "vit-b16-augreg",
    "swin-b",
    *(f"ofa-{s}" for s in ("tiny", "medium", "base", "large", "huge")),
)


def _assert_facts_match(entry: BackboneEntry, backbone) -> None:
    assert entry.declared
    assert entry.mean == pytest.approx(backbone.mean, abs=0)
    assert entry.std == pytest.approx(backbone.std, abs=0)
    assert entry.image_size == backbone.image_size
    assert entry.towers == backbone.tower_names
    assert entry.kind == backbone.kind


def test_every_builtin_declares_its_facts():
    entries = backbone_entries()
    assert set(BUILTINS) <= set(entries)
    for name in BUILTINS:
        e = entries[name]
        assert e.declared, name
        assert len(e.mean) == 3 and len(e.std) == 3 and e.image_size > 0, name
        norm = e.normalization()
        assert norm == {"mean": list(e.mean), "std": list(e.std)}, name
        assert all(isinstance(v, float) for v in (*norm["mean"], *norm["std"])), name
        facts = {"pretrained": e.pretrained, **norm, "image_size": e.image_size, "towers": list(e.towers)}
        assert e.facts() == facts, name
        random_init = name.startswith("tiny-") or name == "ofa-test"
        assert (e.pretrained is None) == random_init, name


def test_checkpoint_tags_and_normalisations():
    e = backbone_entries()
    assert e["vit-b16"].pretrained == "timm:vit_base_patch16_224.orig_in21k"
    assert e["vit-b16"].normalization() == IMAGENET
    assert e["vit-b16-augreg"].pretrained == "timm:vit_base_patch16_224.augreg_in21k"
    assert e["vit-b16-augreg"].normalization() == HALF
    assert e["swin-b"].pretrained == "timm:swin_base_patch4_window7_224.ms_in22k"
    assert e["swin-b"].normalization() == IMAGENET
    assert e["clip-vit-b16"].pretrained == "open_clip:ViT-B-16-quickgelu/openai"
    assert e["micro-clip"].pretrained == "petlbench:micro-clip (shipped)"
    assert e["ofa-base"].pretrained == "huggingface:OFA-Sys/ofa-base"


@pytest.mark.parametrize("name", CHEAP)
def test_declared_facts_equal_the_cheap_builds(name):
    entry = backbone_entries()[name]
    _assert_facts_match(entry, build_backbone(name, pretrained=False))


def test_declared_facts_equal_the_real_architectures(vit_b16, clip_b16, vit_b16_augreg):
    entries = backbone_entries()
    _assert_facts_match(entries["vit-b16"], vit_b16)
    _assert_facts_match(entries["clip-vit-b16"], clip_b16)
    _assert_facts_match(entries["vit-b16-augreg"], vit_b16_augreg)
    _assert_facts_match(entries["swin-b"], build_backbone("swin-b", pretrained=False))


@pytest.mark.parametrize("size", ["tiny", "medium", "base", "large", "huge"])
def test_declared_facts_equal_the_ofa_sizes(size):
    from petlbench.backbones.ofa.backbone import build_ofa_backbone

    entry = backbone_entries()[f"ofa-{size}"]
    _assert_facts_match(entry, build_ofa_backbone(f"ofa-{size}", False, device="meta"))


@pytest.fixture(scope="module")
def vit_b16_augreg():
    return build_backbone("vit-b16-augreg", pretrained=False)


def test_vit_b16_overrides_timms_normalisation_of_orig_in21k(vit_b16):
    """timm's pretrained_cfg says 0.5 for orig_in21k; VPT normalises with ImageNet's mean/std."""
    vit = vit_b16.tower("image").vit
    assert vit.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert list(vit_b16.mean) == IMAGENET["mean"] and list(vit_b16.std) == IMAGENET["std"]
    assert vit_b16.config["arch"] == "vit_base_patch16_224.orig_in21k"


def test_orig_and_augreg_in21k_share_the_architecture(vit_b16, vit_b16_augreg):
    """Same modules and shapes (no head, no pre-logits, a final LayerNorm, CLS pooling)."""
    a, b = vit_b16.tower("image").vit, vit_b16_augreg.tower("image").vit
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    for vit in (a, b):
        assert isinstance(vit.head, torch.nn.Identity) and isinstance(vit.fc_norm, torch.nn.Identity)
        assert isinstance(vit.norm, torch.nn.LayerNorm) and vit.global_pool == "token"
    assert vit_b16_augreg.num_parameters() == vit_b16.num_parameters() == 85_798_656


def test_vit_b16_augreg_architecture_equals_timm(vit_b16_augreg):
    ref = vit_b16_augreg.tower("image").vit
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(vit_b16_augreg.encode_image(pixels), ref(pixels), atol=1e-5, rtol=1e-5)


def test_plugin_entries_declare_no_facts_and_still_build(monkeypatch):
    from importlib.metadata import entry_points

    import petlbench.backbones.registry as registry
    import petlbench.registry
    from petlbench.registry import Registry

    class FakeEntryPoint:
        name = "my-plugin"
        dist = None

        def load(self):
            return lambda pretrained: registry.build_backbone("tiny-vit", pretrained)

    def fresh_registry(found):
        """The backbone registry as a process that finds ``found`` in the group would read it."""
        monkeypatch.setattr(petlbench.registry, "entry_points", lambda group: found)
        monkeypatch.setattr(
            registry,
            "BACKBONES",
            Registry("backbone", entry_point_group=registry.GROUP, from_entry_point=registry.entry_of),
        )

    fresh_registry([*entry_points(group=registry.GROUP), FakeEntryPoint()])
    entry = registry.backbone_entries()["my-plugin"]
    assert entry.kind == "plugin" and not entry.declared and entry.normalization() is None
    assert set(entry.facts().values()) == {None}
    assert build_backbone("my-plugin", pretrained=False).image_size == 32
    fresh_registry([FakeEntryPoint()])
    with pytest.raises(UserError, match="no built-in backbones are registered"):
        registry.backbone_entries()  # a stale install: one line, not an empty registry
