"""The contract every registered method keeps (DESIGN sections 4 and 9), on a small backbone it fits:
it trains exactly the parameters it reports (and the head's), a training step changes no frozen
tensor, its state round-trips onto a fresh backbone, and ``detach`` gives the untouched backbone
back; a filled slot is refused to a second method, and two methods compose through their slots.
The methods that brought their own slot kinds (SSF, AdaptFormer, FacT, Convpass, DoRA, VeRA) also
train through the Trainer on the smoke suite, on ViT, Swin and CLIP."""

from __future__ import annotations

import pytest
import torch
from ofa_models import ofa_backbone, ofa_batch, ofa_model

from petlbench.backbones import build_backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.registry import backbone_entries
from petlbench.benchmarks.suites import load_suite
from petlbench.errors import UserError
from petlbench.harness.objectives.classification import fit_classifier, head_for
from petlbench.harness.plan import plan_runs
from petlbench.harness.trainer import TrainConfig, Trainer
from petlbench.methods.base import Method, StageContext
from petlbench.methods.compose import compose
from petlbench.methods.registry import get_method, method_entries, method_options

pytestmark = pytest.mark.usefixtures("one_thread")

CLASS_NAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]
OFA_ONLY = {"bitfit-ofa"}  # OFA's own BitFit selection: the OFA test model


def _backbone_for(cls: type[Method]) -> str:
    """The smallest shipped backbone the method fits: micro-vit, else micro-clip."""
    for name, kind, towers in (("micro-vit", "vit", ("image",)), ("micro-clip", "clip", ("image", "text"))):
        try:
            cls.check_compatible(name, kind, towers)
        except UserError:
            continue
        return name
    raise AssertionError(f"{cls.name} fits neither micro-vit nor micro-clip")


CASES = [(n, _backbone_for(get_method(n))) for n in sorted(method_entries()) if n not in OFA_ONLY] + [
    ("ssf", "tiny-swin"),  # the hierarchical and the random-init towers, for the methods that size per layer
    ("adaptformer", "tiny-swin"),
    ("convpass", "tiny-swin"),
    ("dora", "tiny-clip"),
    ("fact-tk", "tiny-clip"),
]
# Trained through the Trainer on the smoke suite: the methods that came with their own slot kinds
TRAINED = ("ssf", "adaptformer", "fact-tt", "fact-tk", "convpass", "dora", "vera")
TRAINED_PAIRS = [(m, "tiny-vit") for m in TRAINED] + [c for c in CASES[-5:]]


def _classifier(method: Method, backbone_name: str) -> ImageClassifier:
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    method.attach(backbone)
    model = ImageClassifier(backbone, head_for(method, backbone, CLASS_NAMES, TEMPLATES), method)
    if isinstance(getattr(method, "cache_keys", None), torch.Tensor):  # Tip-Adapter: a cache to classify with
        _fill_cache(method, model)
    return model.eval()


def _fill_cache(method: Method, model: ImageClassifier) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = (torch.rand(6, 3, 32, 32, generator=gen), torch.arange(6) % len(CLASS_NAMES))
    ctx = StageContext(model, method, torch.device("cpu"), 0, lambda: iter([batch]))
    method.build_cache(ctx)  # type: ignore[attr-defined]


def _pixels() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _frozen_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}


def _check_contract(name: str, backbone_name: str) -> None:
    cls = get_method(name)
    method = cls(cls.kind_defaults(backbone_entries()[backbone_name].kind))
    model = _classifier(method, backbone_name)
    pixels = _pixels()
    with torch.no_grad():
        untouched = _untouched_features(backbone_name, pixels)

    # exactly the method's parameters (and the head's) train, and the count says so
    head_params = {id(p) for p in model.head.parameters() if p.requires_grad}
    owned = {id(p): p for p in method.trainable_parameters()}
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    assert trainable.keys() == owned.keys() | head_params
    in_method = {k: p for k, p in trainable.items() if k not in head_params or k in owned}
    assert method.num_trainable_parameters() == sum(p.numel() for p in in_method.values())

    # a training step changes no frozen tensor
    frozen = _frozen_copy(model)
    if trainable:
        model.train()
        optimiser = torch.optim.SGD(list(trainable.values()), lr=0.1)
        loss = torch.nn.functional.cross_entropy(model(pixels), torch.arange(4) % len(CLASS_NAMES))
        loss.backward()
        optimiser.step()
        model.eval()
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters() if k in frozen)

    # the state round-trips into a fresh attach (a different init, replaced by the loaded state)
    with torch.no_grad():
        expected = model(pixels)
    torch.manual_seed(123)
    other = cls(method.config_dict())
    fresh = _classifier(other, backbone_name)
    fresh.head.load_state_dict(model.head.state_dict())
    other.load_method_state(method.method_state())
    with torch.no_grad():
        assert torch.equal(fresh(pixels), expected)

    # detach gives the untouched backbone back
    if cls.copies_unfrozen:
        other.detach()
        assert fresh.backbone.tower("image").filled_slots() == {}
        assert not any(p.requires_grad for p in fresh.backbone.parameters())
        with torch.no_grad():
            assert torch.equal(fresh.backbone.encode_image(pixels), untouched)
    else:
        with pytest.raises(UserError, match="cannot be detached"):
            other.detach()


def _untouched_features(backbone_name: str, pixels: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return build_backbone(backbone_name).eval().encode_image(pixels)


@pytest.mark.parametrize(("name", "backbone_name"), CASES)
def test_method_contract(name, backbone_name):
    _check_contract(name, backbone_name)


@pytest.mark.parametrize("name", TRAINED)
def test_registered_with_documented_options(name):
    entry = method_entries()[name]
    assert not entry.plugin
    cls = get_method(name)
    assert cls.name == name and cls.paper
    missing = [o.name for o in method_options(cls) if not o.help]
    assert not missing, f"{name}: options without help: {missing}"


@pytest.mark.parametrize(("name", "backbone_name"), TRAINED_PAIRS)
def test_trains_on_the_smoke_suite_with_the_backbone_frozen(colors, name, backbone_name):
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name)
    method = get_method(name)({})
    method.attach(backbone)
    head = head_for(method, backbone, colors.class_names, colors.templates)
    model = ImageClassifier(backbone, head, method)
    assert backbone.tower("image").has_trainable_parameters()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer = Trainer(
        model,
        method,
        TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=1, grad_clip=1.0, seed=0),
        head=head,
        device=torch.device("cpu"),
    )
    result = fit_classifier(trainer, model, colors.split("train"))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_composed_pair_keeps_the_contract():
    _check_contract("vpt+bitfit", "micro-vit")


def test_composition_is_two_methods_in_one_run():
    vpt, bitfit = get_method("vpt"), get_method("bitfit")
    composed = compose([vpt, bitfit])
    assert get_method("vpt+bitfit").name == composed.name == "vpt+bitfit"
    method = composed({"vpt.num_tokens": 3})
    assert method.config_dict() == {
        "vpt": vpt({"num_tokens": 3}).config_dict(),
        "bitfit": bitfit({}).config_dict(),
    }
    backbone = build_backbone("micro-vit")
    method.attach(backbone)
    described = method.describe()["parts"]
    assert described["vpt"]["trainable_parameters"] == 3 * 128
    assert described["bitfit"]["trainable_parameters"] == sum(
        p.numel() for n, p in backbone.tower("image").named_parameters() if "bias" in n
    )
    assert method.num_trainable_parameters() == sum(
        part["trainable_parameters"] for part in described.values()
    )
    assert {k.split(".")[0] for k in method.method_state()} == {"vpt", "bitfit"}


def test_composition_refuses_what_cannot_combine():
    with pytest.raises(UserError, match="training-free method with a trained one"):
        compose([get_method("zeroshot"), get_method("vpt")])
    with pytest.raises(UserError, match="coop and cocoop both build the classifier head"):
        compose([get_method("coop"), get_method("cocoop")])
    with pytest.raises(UserError, match="PART.OPTION"):
        get_method("vpt+bitfit")({"num_tokens": 3})
    lora_merge = compose([get_method("lora"), get_method("ssf")])
    with pytest.raises(UserError, match="lora and ssf both have stages of their own"):
        lora_merge({"lora.merge": True, "ssf.fold": True})


def test_a_filled_slot_is_refused_and_the_backbone_kept():
    backbone = build_backbone("micro-vit")
    vpt = get_method("vpt")({})
    vpt.attach(backbone)
    filled = backbone.tower("image").filled_slots()
    with pytest.raises(
        UserError,
        match=r"method 'e2vpt': slot input_tokens \(layer 0, image tower\) is already filled by method 'vpt'",
    ):
        get_method("e2vpt")({}).attach(backbone)
    assert backbone.tower("image").filled_slots() == filled
    fresh = build_backbone("micro-vit")
    with pytest.raises(UserError, match="method 'e2vpt': slot input_tokens .* filled by method 'vpt'"):
        get_method("vpt+e2vpt")({}).attach(fresh)
    assert fresh.tower("image").filled_slots() == {}  # the parts attached before are taken off


@pytest.mark.parametrize(("name", "option", "word"), [("lora", "merge", "merged"), ("ssf", "fold", "folded")])
def test_detach_is_refused_once_the_update_is_in_the_weights(name, option, word):
    backbone = build_backbone("micro-vit")
    method = get_method(name)({option: True})
    method.attach(backbone)
    method.stages()[1].prepare(None)  # the training-free stage writes the update into the weights
    with pytest.raises(UserError, match=f"{name}: {word} into the frozen weights, which detach cannot undo"):
        method.detach()


def test_ofa_bitfit_contract():
    """BitFit's OFA selection on the OFA test model: only the biases it reports train, and detach
    restores them and freezes them again."""
    backbone = ofa_backbone(seed=0)
    src, pixels, prev = ofa_batch()
    untouched = ofa_backbone(seed=0)  # the same random weights, never attached
    model, method = ofa_model("bitfit-ofa", backbone)
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    assert trainable.keys() == {id(p) for p in method.trainable_parameters()}
    assert method.num_trainable_parameters() == sum(p.numel() for p in trainable.values())
    loss = model(src, pixels, prev).float().logsumexp(-1).mean()
    loss.backward()
    with torch.no_grad():
        for p in trainable.values():
            p.add_(1.0)
    method.detach()
    assert not any(p.requires_grad for p in backbone.parameters())
    for (name, p), q in zip(backbone.state_dict().items(), untouched.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_composed_run_is_planned_with_one_sub_config_per_part():
    suite = load_suite("smoke")
    where = {"backbones": ["tiny-vit"], "tasks": ["colors"], "seeds": [1]}
    (spec,), _ = plan_runs("vpt+bitfit", suite, method_config={"vpt.num_tokens": 10}, **where)
    (vpt,), _ = plan_runs("vpt", suite, method_config={"num_tokens": 10}, **where)
    assert spec.method == "vpt+bitfit"
    assert spec.method_config == {"vpt": vpt.method_config, "bitfit": {"variant": "all", "tower": "image"}}
    assert spec.run_id != vpt.run_id
    with pytest.raises(UserError, match="PART.OPTION"):
        plan_runs("vpt+bitfit", suite, method_config={"num_tokens": 10}, **where)
