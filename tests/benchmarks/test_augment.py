"""Training augmentation on uint8 batches: determinism, shapes, sampler constraints, exactness, and
parity with torchvision's per-image pipelines."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from petlbench.benchmarks.augment import (
    AUGMENTATIONS,
    RRC_RATIO,
    RRC_SCALE,
    Augmentation,
    get_augmentation,
    random_crop_params,
    random_resized_crop_params,
)
from petlbench.errors import UserError

NAMES = ["none", "random_resized_crop_flip", "random_crop_flip"]
RANDOM = ["random_resized_crop_flip", "random_crop_flip"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, size: int = 40, seed: int = 0, width: int | None = None) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, width or size), generator=gen(1000 + seed), dtype=torch.uint8)


def batch_for(name: str, out: int = 32, b: int = 6) -> torch.Tensor:
    return images(b, get_augmentation(name).decode_size(out))


def test_names_and_descriptions():
    assert sorted(AUGMENTATIONS) == sorted(NAMES)
    for name in NAMES:
        aug = get_augmentation(name)
        d = aug.describe()
        assert d["name"] == name and d["reference"] and isinstance(d["params"], dict)
        json.dumps(d)  # recordable in results
    p = get_augmentation("random_resized_crop_flip").describe()["params"]
    assert p["scale"] == [0.08, 1.0] and p["interpolation"] == "bicubic" and p["flip_p"] == 0.5
    assert p["ratio"] == pytest.approx([0.75, 4 / 3])


def test_unknown_name_is_user_error():
    with pytest.raises(UserError, match="random_crop_flip") as e:
        get_augmentation("rrc")
    assert "none" in str(e.value) and "random_resized_crop_flip" in str(e.value)
    with pytest.raises(UserError):
        Augmentation("bogus")


def test_decode_size():
    assert get_augmentation("none").decode_size(224) == 224
    assert get_augmentation("random_resized_crop_flip").decode_size(224) == 224
    vpt = get_augmentation("random_crop_flip")
    # KMnP/vpt src/data/transforms.py:L11-19: 224 <- 256, 384 <- 438, 448 <- 512.
    assert [vpt.decode_size(s) for s in (224, 384, 448)] == [256, 438, 512]


@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_shape(name):
    x = batch_for(name)
    y = get_augmentation(name)(x, gen(0), 32)
    assert y.dtype == torch.uint8 and y.shape == (6, 3, 32, 32)
    assert get_augmentation(name)(x[:0], gen(0), 32).shape == (0, 3, 32, 32)


def test_none_returns_input_unchanged():
    x = images(4, 32)
    g = gen(0)
    state = g.get_state()
    assert get_augmentation("none")(x, g, 32) is x
    assert torch.equal(g.get_state(), state)  # draws nothing
    with pytest.raises(ValueError, match="decode_size"):
        get_augmentation("none")(images(2, 40), gen(0), 32)


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_output(name):
    x = batch_for(name)
    aug = get_augmentation(name)
    assert torch.equal(aug(x, gen(7), 32), aug(x, gen(7), 32))


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_differ(name):
    x = batch_for(name)
    aug = get_augmentation(name)
    assert not torch.equal(aug(x, gen(1), 32), aug(x, gen(2), 32))


@pytest.mark.parametrize("name", RANDOM)
def test_successive_calls_differ(name):
    x = batch_for(name)
    aug = get_augmentation(name)
    g = gen(3)
    first, second = aug(x, g, 32), aug(x, g, 32)
    assert not torch.equal(first, second)
    g = gen(3)  # a resumed run replays both epochs
    assert torch.equal(aug(x, g, 32), first) and torch.equal(aug(x, g, 32), second)


@pytest.mark.parametrize("shape", [(40, 40), (30, 90), (90, 30), (224, 224), (7, 5)])
def test_rrc_params_constraints(shape):
    height, width = shape
    g = gen(11)
    area = height * width
    lo_r, hi_r = RRC_RATIO
    for _ in range(400):
        top, left, h, w = random_resized_crop_params(height, width, RRC_SCALE, RRC_RATIO, g)
        assert 0 < h <= height and 0 < w <= width
        assert 0 <= top <= height - h and 0 <= left <= width - w
        centred = top == (height - h) // 2 and left == (width - w) // 2
        fallback = centred and (h == height or w == width)
        if not fallback:
            # rounding of h and w moves the area and ratio a little off the sampled values
            tol_a = (h + w + 1) / area
            assert RRC_SCALE[0] - tol_a <= h * w / area <= RRC_SCALE[1] + tol_a
            tol_r = (1 / h + 1 / w) * 1.01
            assert math.log(lo_r) - tol_r <= math.log(w / h) <= math.log(hi_r) + tol_r


def test_rrc_params_cover_the_range():
    g = gen(5)
    fracs, ratios = [], []
    for _ in range(2000):
        _, _, h, w = random_resized_crop_params(224, 224, RRC_SCALE, RRC_RATIO, g)
        fracs.append(h * w / 224**2)
        ratios.append(w / h)
    assert min(fracs) < 0.1 and max(fracs) > 0.95 and 0.45 < sum(fracs) / len(fracs) < 0.6
    assert min(ratios) < 0.77 and max(ratios) > 1.3


def test_rrc_params_fallback():
    # an impossible scale forces the fallback: the whole image with its ratio clamped, centred
    assert random_resized_crop_params(40, 40, (2.0, 3.0), RRC_RATIO, gen(0)) == (0, 0, 40, 40)
    assert random_resized_crop_params(100, 20, (2.0, 3.0), RRC_RATIO, gen(0)) == (36, 0, 27, 20)
    assert random_resized_crop_params(20, 100, (2.0, 3.0), RRC_RATIO, gen(0)) == (0, 36, 20, 27)


def test_rrc_params_match_torchvision_stream():
    tv = pytest.importorskip("torchvision.transforms")
    img = torch.zeros(3, 50, 70)
    g = gen(21)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(21)
        for _ in range(200):
            expect = tv.RandomResizedCrop.get_params(img, list(RRC_SCALE), list(RRC_RATIO))
            assert random_resized_crop_params(50, 70, RRC_SCALE, RRC_RATIO, g) == tuple(expect)
        for h, w in [(100, 20), (20, 100), (40, 40)]:  # the fallback, after 10 failed attempts
            expect = tv.RandomResizedCrop.get_params(torch.zeros(3, h, w), [2.0, 3.0], list(RRC_RATIO))
            assert random_resized_crop_params(h, w, (2.0, 3.0), RRC_RATIO, g) == tuple(expect)


def test_rrc_whole_image_no_flip_equals_interpolate(monkeypatch):
    import petlbench.benchmarks.augment as A

    x = images(3, 48)
    monkeypatch.setattr(A, "random_resized_crop_params", lambda h, w, s, r, g: (0, 0, h, w))
    monkeypatch.setattr(A, "_flip_draw", lambda g: False)
    y = get_augmentation("random_resized_crop_flip")(x, gen(0), 32)
    ref = F.interpolate(x.float(), size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(y, ref.clamp(0, 255).round().to(torch.uint8))
    # a whole-image crop at the output size is the input itself
    assert torch.equal(get_augmentation("random_resized_crop_flip")(x, gen(0), 48), x)
    monkeypatch.setattr(A, "_flip_draw", lambda g: True)
    assert torch.equal(get_augmentation("random_resized_crop_flip")(x, gen(0), 48), x.flip(-1))


def test_rrc_matches_torchvision_pipeline():
    tv = pytest.importorskip("torchvision.transforms")
    x = images(8, 60, width=45)
    pipe = tv.Compose(
        [
            tv.RandomResizedCrop(32, interpolation=tv.InterpolationMode.BICUBIC, antialias=True),
            tv.RandomHorizontalFlip(),
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        expect = torch.stack([pipe(im) for im in x])
    got = get_augmentation("random_resized_crop_flip")(x, gen(9), 32)
    assert torch.equal(got, expect)


def locate(crop: torch.Tensor, image: torch.Tensor) -> list[tuple[int, int]]:
    """Offsets at which ``crop`` is an exact sub-block of ``image`` (both (C, h, w))."""
    s = crop.shape[-1]
    hits = []
    for top in range(image.shape[1] - s + 1):
        for left in range(image.shape[2] - s + 1):
            if torch.equal(image[:, top : top + s, left : left + s], crop):
                hits.append((top, left))
    return hits


def test_random_crop_is_exact_copy_inside_image():
    x = images(12, 37)
    y = get_augmentation("random_crop_flip")(x, gen(4), 32)
    flipped = 0
    offsets = set()
    for k in range(len(x)):
        direct, mirrored = locate(y[k], x[k]), locate(y[k].flip(-1), x[k])
        assert len(direct) + len(mirrored) == 1  # an exact pixel copy, possibly mirrored, inside the image
        flipped += bool(mirrored)
        offsets.update(direct + mirrored)
    assert 0 < flipped < len(x)  # flips happen, per image
    assert len(offsets) > 1  # offsets vary per image


def test_random_crop_params_uniform_and_inside():
    g = gen(8)
    seen = set()
    for _ in range(2000):
        top, left, h, w = random_crop_params(36, 40, 32, g)
        assert (h, w) == (32, 32) and 0 <= top <= 4 and 0 <= left <= 8
        seen.add((top, left))
    assert len(seen) == 5 * 9  # every position reachable
    state = g.get_state()
    assert random_crop_params(32, 32, 32, g) == (0, 0, 32, 32)
    assert torch.equal(g.get_state(), state)  # whole image: no draw, like torchvision
    with pytest.raises(ValueError):
        random_crop_params(30, 40, 32, g)


def test_random_crop_matches_torchvision_pipeline():
    tv = pytest.importorskip("torchvision.transforms")
    x = images(10, 36)
    pipe = tv.Compose([tv.RandomCrop(32), tv.RandomHorizontalFlip(0.5)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(13)
        expect = torch.stack([pipe(im) for im in x])
    assert torch.equal(get_augmentation("random_crop_flip")(x, gen(13), 32), expect)


def test_flip_is_per_image_and_half_the_time():
    x = images(200, 32)
    out = get_augmentation("random_crop_flip")(x, gen(0), 32)  # crop == image: only flips
    flipped = torch.tensor([not torch.equal(out[k], x[k]) for k in range(len(x))])
    assert all(torch.equal(out[k], x[k].flip(-1)) for k in range(len(x)) if flipped[k])
    assert 70 < int(flipped.sum()) < 130


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_rejected(name):
    aug = get_augmentation(name)
    with pytest.raises(ValueError, match="uint8"):
        aug(batch_for(name).float(), gen(0), 32)
    with pytest.raises(ValueError, match="uint8"):
        aug(batch_for(name)[0], gen(0), 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", RANDOM)
def test_gpu_matches_cpu(name):
    x = batch_for(name)
    aug = get_augmentation(name)
    cpu = aug(x, gen(5), 32)
    gpu = aug(x.cuda(), gen(5), 32)
    assert gpu.is_cuda
    if name == "random_crop_flip":
        assert torch.equal(gpu.cpu(), cpu)
    else:  # same crops and flips; bicubic kernels may round differently by one level
        assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1
