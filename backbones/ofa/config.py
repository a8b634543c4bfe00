"""OFA architecture configurations (reference/data-and-ofa.md A1.2-A1.3).

The five released sizes are the ``ofa_{tiny,medium,base,large,huge}`` architectures of OFA-Sys/OFA;
every size shares the fixed parts of the design (NormFormer extras, relative position buckets,
shared embeddings, 1024-channel ResNet stem output). ``test`` is a tiny configuration of the same
architecture for tests and the offline smoke suite; only it shrinks the ResNet stem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

VOCAB_SIZE = 59_457  # 50,265 BART BPE + <mask> + 8,192 image codes + 1,000 location bins
RESNET_LAYERS = {"resnet50": (3, 4, 6), "resnet101": (3, 4, 23), "resnet152": (3, 8, 36)}


@dataclass(frozen=True)
class OFAConfig:
    """Sizes and switches of one OFA model. Field names follow the transformers-branch ``OFAConfig``."""

    d_model: int = 512
    encoder_layers: int = 4
    decoder_layers: int = 4
    attention_heads: int = 8
    ffn_dim: int = 2048
    vocab_size: int = VOCAB_SIZE
    resnet_type: str = "resnet101"
    resnet_layers: tuple[int, int, int] = (3, 4, 23)
    resnet_width: int = 64  # stem width; the stem outputs 16 * width channels (1024 for real sizes)
    max_positions: int = 1024  # learned absolute positions: max_positions + 2 rows
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0  # attention scale (d_head * factor) ** -0.5
    code_image_size: int = 128  # the decoder's image-code grid is code_image_size // 8 squared
    patch_image_size: int = 480  # input resolution (the prompt-tuning scripts use 480)
    pad_id: int = 1
    bos_id: int = 0
    eos_id: int = 2
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.attention_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.attention_heads} heads")
        if len(self.resnet_layers) != 3:
            raise ValueError("the OFA ResNet stem has exactly three stages")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.attention_heads

    @property
    def stem_channels(self) -> int:
        return self.resnet_width * 16

    @property
    def attn_scale(self) -> float:
        return float(self.head_dim * self.attn_scale_factor) ** -0.5

    def replace(self, **changes: Any) -> OFAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resnet_layers"] = list(self.resnet_layers)
        return d


def _size(d: int, enc: int, dec: int, heads: int, resnet: str) -> OFAConfig:
    return OFAConfig(
        d_model=d,
        encoder_layers=enc,
        decoder_layers=dec,
        attention_heads=heads,
        ffn_dim=4 * d,
        resnet_type=resnet,
        resnet_layers=RESNET_LAYERS[resnet],
    )


SIZES: dict[str, OFAConfig] = {
    "tiny": _size(256, 4, 4, 4, "resnet50"),
    "medium": _size(512, 4, 4, 8, "resnet101"),
    "base": _size(768, 6, 6, 12, "resnet101"),
    "large": _size(1024, 12, 12, 16, "resnet152"),
    "huge": _size(1280, 24, 12, 16, "resnet152"),
    # Tests and the smoke suite: width 64, 2+2 layers, a one-block-per-stage stem of width 8
    # (128 channels), 64x64 images (4x4 = 16 image tokens). The vocabulary follows the tokenizer.
    "test": OFAConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        attention_heads=4,
        ffn_dim=256,
        resnet_type="test",
        resnet_layers=(1, 1, 1),
        resnet_width=8,
        patch_image_size=64,
    ),
}

# Published approximate sizes (README model card), for the parameter-count tests.
PUBLISHED_PARAMETERS = {"tiny": 33e6, "medium": 93e6, "base": 180e6, "large": 470e6, "huge": 930e6}


def size_config(size: str, **changes: Any) -> OFAConfig:
    if size not in SIZES:
        raise KeyError(f"unknown OFA size {size!r}; sizes: {', '.join(SIZES)}")
    return SIZES[size].replace(**changes) if changes else SIZES[size]
