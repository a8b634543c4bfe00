"""Training-time augmentation on batches of already-decoded uint8 images.

The harness caches a few-shot training split as one uint8 tensor (B, 3, H, W); augmentation runs on
that tensor (CPU or GPU) and never decodes again. Every random number comes from the
``torch.Generator`` passed in, so a trainer that seeds one generator per (seed, epoch) replays the
same crops and flips when a run resumes. Only torch is used.

Per image, the draws are made in the same order and with the same torch calls as torchvision's
``RandomResizedCrop`` / ``RandomCrop`` followed by ``RandomHorizontalFlip``, so for a CPU generator
seeded with ``s`` the crops and flips equal those of the torchvision pipeline run image by image
after ``torch.manual_seed(s)`` (a test checks this). A CPU generator is recommended even for GPU
images: CUDA generators give a different (device-dependent) stream.

Names:

* ``none``: identity (VPT's VTAB-1k: resize only, no crop, no flip).
* ``random_resized_crop_flip``: the CoOp / CoCoOp family (Dassl ``random_resized_crop`` +
  ``random_flip``).
* ``random_crop_flip``: VPT's FGVC train transform (Resize(256), RandomCrop(224), flip). Not Dassl's
  ``random_crop``, which pads by 4 pixels.

Differences from the references, all caused by working on the cached square decode:

* Dassl applies RandomResizedCrop to the full-resolution PIL image (no Resize before it when
  ``random_resized_crop`` is chosen, Dassl.pytorch dassl/data/transforms/transforms.py:L213-219), so
  area and aspect fractions are relative to the original image. Here they are relative to the cached
  ``image_size`` decode, and the crop is resized with torch's antialiased bicubic, not PIL's (values
  differ by a few grey levels).
* VPT's ``Resize(256)`` scales the shorter side (aspect kept, torchvision's default bilinear) and
  RandomCrop then slides along the longer side. Here the crop slides over whatever the cache holds
  (the harness's ``resize_crop`` decode is a centre-cropped square of ``image_size * 256 // 224``), so
  the longer-side freedom of the reference is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from petlbench.errors import UserError

# Dassl.pytorch (c61a1b5) dassl/config/defaults.py:L40: _C.INPUT.RRCROP_SCALE = (0.08, 1.0).
RRC_SCALE = (0.08, 1.0)
# Dassl calls RandomResizedCrop(input_size, scale=s_, interpolation=interp_mode) without ``ratio``
# (dassl/data/transforms/transforms.py:L233-235), so torchvision's default ratio (3/4, 4/3) applies
# (torchvision 0.29.1 torchvision/transforms/transforms.py RandomResizedCrop.__init__).
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# CoOp (ff61507) configs/trainers/CoOp/vit_b16.yaml:L10: INTERPOLATION "bicubic" (every CoOp and CoCoOp
# config sets it at L10). Dassl's own default is "bilinear" (dassl/config/defaults.py:L29).
RRC_INTERPOLATION = "bicubic"
# Dassl dassl/data/transforms/transforms.py:L239: RandomHorizontalFlip() (torchvision default p = 0.5);
# VPT (4410440) src/data/transforms.py:L25: RandomHorizontalFlip(0.5).
FLIP_P = 0.5
# VPT src/data/transforms.py:L11-19: crop 224 <- resize 256, 384 <- 438, 448 <- 512; size * 256 // 224
# gives all three (the reference has no entry for other sizes).
VPT_RESIZE_NUM, VPT_RESIZE_DEN = 256, 224
# torchvision RandomResizedCrop.get_params makes 10 attempts before the centre-crop fallback
# (torchvision 0.29.1 torchvision/transforms/transforms.py:L945).
RRC_ATTEMPTS = 10

_DASSL = "KaiyangZhou/Dassl.pytorch@c61a1b5"
_COOP = "KaiyangZhou/CoOp@ff61507"
_VPT = "KMnP/vpt@4410440"

AUGMENTATIONS: dict[str, str] = {
    "none": "identity: no crop, no flip (VPT VTAB-1k: tf.image.resize only, "
    "KMnP/vpt src/data/datasets/tf_dataset.py:L148-156)",
    "random_resized_crop_flip": "RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic) + horizontal flip "
    "p=0.5 (CoOp/CoCoOp: CoOp configs/trainers/CoOp/vit_b16.yaml:L10-13, "
    "Dassl dassl/data/transforms/transforms.py:L230-239)",
    "random_crop_flip": "uniform RandomCrop(image_size) from the image_size*256/224 decode + horizontal flip "
    "p=0.5 (VPT FGVC: KMnP/vpt src/data/transforms.py:L11-25)",
}

_DESCRIPTIONS: dict[str, dict] = {
    "none": {
        "params": {"crop": "none", "flip_p": 0.0},
        "reference": f"{_VPT} src/data/datasets/tf_dataset.py:L148-156 (VTAB-1k: resize only, no crop/flip)",
    },
    "random_resized_crop_flip": {
        "params": {
            "crop": "random_resized",
            "scale": list(RRC_SCALE),
            "ratio": list(RRC_RATIO),
            "attempts": RRC_ATTEMPTS,
            "interpolation": RRC_INTERPOLATION,
            "antialias": True,
            "flip_p": FLIP_P,
            "decode": "image_size",
        },
        "reference": (
            f"{_COOP} configs/trainers/CoOp/vit_b16.yaml:L10,L13; "
            f"{_DASSL} dassl/data/transforms/transforms.py:L213-239, dassl/config/defaults.py:L40; "
            "torchvision RandomResizedCrop.get_params. "
            "Applied to the cached square decode, not the original image."
        ),
    },
    "random_crop_flip": {
        "params": {
            "crop": "random",
            "interpolation": None,
            "flip_p": FLIP_P,
            "decode": f"image_size * {VPT_RESIZE_NUM} // {VPT_RESIZE_DEN}",
        },
        "reference": (
            f"{_VPT} src/data/transforms.py:L11-25 "
            "(Resize(256), RandomCrop(224), RandomHorizontalFlip(0.5)); "
            "applied to the cached square decode, not the shorter-side resize."
        ),
    },
}


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop of a ``height`` x ``width`` image.

    torchvision's RandomResizedCrop sampling (torchvision/transforms/transforms.py:L929-966 in
    0.29.1): up to 10 attempts of an area fraction uniform in ``scale`` and a log-uniform aspect
    ratio (w / h) in ``ratio``; the first crop that fits gets a uniform position. If none fits, a
    centre crop of the whole image with its aspect ratio clamped to ``ratio``. The draws (two per
    attempt, then two integers) use the same torch calls and dtypes, so the result equals
    torchvision's for a generator in the same state as the global one.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    dev = generator.device
    area = height * width
    # float32 log bounds, as torchvision computes them (torch.log(torch.tensor(ratio))).
    log_lo, log_hi = torch.log(torch.tensor([float(ratio[0]), float(ratio[1])])).tolist()
    for _ in range(RRC_ATTEMPTS):
        frac = torch.empty(1, device=dev).uniform_(float(scale[0]), float(scale[1]), generator=generator)
        log_r = torch.empty(1, device=dev).uniform_(log_lo, log_hi, generator=generator)
        target = area * frac.item()
        aspect = torch.exp(log_r).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < h <= height and 0 < w <= width:
            top = int(torch.randint(0, height - h + 1, (1,), device=dev, generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), device=dev, generator=generator).item())
            return top, left, h, w
    # Fallback: the largest centred crop whose aspect ratio lies in ``ratio``.
    lo, hi = min(ratio), max(ratio)
    h, w = height, width
    if width / height < lo:
        h = int(round(width / lo))
    elif width / height > hi:
        w = int(round(height * hi))
    return (height - h) // 2, (width - w) // 2, h, w


def random_crop_params(
    height: int, width: int, size: int, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, size, size)`` uniform over the positions of a ``size`` crop (torchvision RandomCrop:
    no draw when the crop is the whole image, torchvision/transforms/transforms.py:L650-655 in 0.29.1)."""
    if height < size or width < size:
        raise ValueError(f"crop {size}x{size} is larger than the image {height}x{width}")
    if height == size and width == size:
        return 0, 0, size, size
    dev = generator.device
    top = int(torch.randint(0, height - size + 1, (1,), device=dev, generator=generator).item())
    left = int(torch.randint(0, width - size + 1, (1,), device=dev, generator=generator).item())
    return top, left, size, size


def _flip_draw(generator: torch.Generator) -> bool:
    # torchvision RandomHorizontalFlip.forward: flip when torch.rand(1) < p (transforms.py:L720 in 0.29.1).
    return bool(torch.rand(1, device=generator.device, generator=generator).item() < FLIP_P)


def _resize_uint8(crop: Tensor, out_size: int) -> Tensor:
    """uint8 (C, h, w) -> uint8 (C, out, out): antialiased bicubic in float32, then clamp and round
    (what torchvision's tensor resize does for uint8 bicubic)."""
    x = crop.unsqueeze(0).to(torch.float32)
    y = F.interpolate(x, size=(out_size, out_size), mode="bicubic", align_corners=False, antialias=True)
    return y.clamp_(0, 255).round_().to(torch.uint8).squeeze(0)


def _check(images: Tensor, out_size: int) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"augmentation expects a uint8 (B, C, H, W) tensor, got {got}")
    if int(out_size) <= 0:
        raise ValueError(f"out_size must be positive, got {out_size}")


def _apply_flips(out: Tensor, flips: list[bool]) -> Tensor:
    if any(flips):
        idx = torch.tensor(flips, device=out.device)
        out[idx] = out[idx].flip(-1)
    return out


@dataclass(frozen=True)
class Augmentation:
    """A named training augmentation; see ``AUGMENTATIONS``. Call it on uint8 (B, C, H, W) images."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in AUGMENTATIONS:
            raise UserError(_unknown(self.name))

    def decode_size(self, image_size: int) -> int:
        """Square size the training split must be decoded at for an ``image_size`` model input."""
        if self.name == "random_crop_flip":
            return int(image_size) * VPT_RESIZE_NUM // VPT_RESIZE_DEN
        return int(image_size)

    def describe(self) -> dict:
        d = _DESCRIPTIONS[self.name]
        return {"name": self.name, "params": dict(d["params"]), "reference": d["reference"]}

    def __call__(self, images: Tensor, generator: torch.Generator, out_size: int) -> Tensor:
        _check(images, out_size)
        out_size = int(out_size)
        b, c, h, w = images.shape
        if self.name == "none":
            if h != out_size or w != out_size:
                raise ValueError(
                    f"augmentation 'none' needs images of {out_size}x{out_size}, got {h}x{w}: "
                    f"decode the split at decode_size({out_size})"
                )
            return images
        out = torch.empty((b, c, out_size, out_size), dtype=torch.uint8, device=images.device)
        flips: list[bool] = []
        for k in range(b):
            # Per image: crop draws, then the flip draw (torchvision Compose order).
            if self.name == "random_resized_crop_flip":
                top, left, ch, cw = random_resized_crop_params(h, w, RRC_SCALE, RRC_RATIO, generator)
                crop = images[k, :, top : top + ch, left : left + cw]
                if ch == out_size and cw == out_size:
                    out[k] = crop  # torchvision's resize returns the input at equal size (functional.py:L470)
                else:
                    out[k] = _resize_uint8(crop, out_size)
            else:  # random_crop_flip
                top, left, _, _ = random_crop_params(h, w, out_size, generator)
                out[k] = images[k, :, top : top + out_size, left : left + out_size]
            flips.append(_flip_draw(generator))
        return _apply_flips(out, flips)


def _unknown(name: str) -> str:
    return f"unknown augmentation {name!r}; expected one of: {', '.join(sorted(AUGMENTATIONS))}"


def get_augmentation(name: str) -> Augmentation:
    """The augmentation called ``name``; a UserError listing the known names otherwise."""
    if name not in AUGMENTATIONS:
        raise UserError(_unknown(name))
    return Augmentation(name)
