"""The OFA backbone: kind ``"ofa"``, towers ``encoder`` and ``decoder``, built by size name.

``ofa-<size>`` with ``pretrained=True`` loads the released transformers-branch checkpoint
``OFA-Sys/ofa-<size>`` (``config.json`` + ``pytorch_model.bin``) from the Hugging Face cache (offline,
``local_files_only``) or from ``$PETLBENCH_OFA_DIR`` (a folder holding the checkpoint, or holding
``ofa-<size>/``). ``pretrained=False`` builds the same architecture with random weights (counts,
FLOPs, speed); on ``device="meta"`` nothing is allocated. ``ofa-test`` is a tiny seeded random model
whose vocabulary size follows the tokenizer it is used with.

The backbone is generative: there is no image feature to classify. :meth:`OFABackbone.encode` gives
the encoder memory and :meth:`OFABackbone.decode` next-token logits; pixels come in normalised with
OFA's mean = std = 0.5 (the generation model in :mod:`.generator` normalises [0, 1] pixels itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Unpack

import torch
from torch import nn

from petlbench.errors import UserError

from ..base import Backbone
from ..seeding import seeded
from .config import SIZES, OFAConfig, size_config
from .layers import SelfAttention
from .towers import EmbeddingOffsets, EncoderOutput, OFADecoderTower, OFAEncoderTower

OFA_MEAN = (0.5, 0.5, 0.5)
OFA_STD = (0.5, 0.5, 0.5)
TEST_VOCAB_SIZE = 2048  # ofa-test's vocabulary when no tokenizer size is given
CHECKPOINT_ENV = "PETLBENCH_OFA_DIR"


class OFABackbone(Backbone):
    kind = "ofa"

    def __init__(self, name: str, cfg: OFAConfig, config: dict[str, Any] | None = None) -> None:
        embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        towers = {
            "encoder": OFAEncoderTower(cfg, embed_tokens),
            "decoder": OFADecoderTower(cfg, embed_tokens),
        }
        super().__init__(
            name,
            towers,  # type: ignore[arg-type]
            image_size=cfg.patch_image_size,
            mean=OFA_MEAN,
            std=OFA_STD,
            feature_dim=cfg.d_model,
            interpolation="bicubic",
            config={"source": "petlbench", "arch": "ofa", **cfg.to_dict(), **(config or {})},
        )
        self.ofa_config = cfg
        # No tokenizer here: an OFA run's tokenizer lives with its data (the seq2seq objective holds it).

    @property
    def encoder(self) -> OFAEncoderTower:
        return self.towers["encoder"]  # type: ignore[return-value]

    @property
    def decoder(self) -> OFADecoderTower:
        return self.towers["decoder"]  # type: ignore[return-value]

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise UserError(
            f"{self.name} is a generative encoder-decoder: it has no image features for a classification "
            "head; use a generative suite (e.g. --suite ofa-smoke)"
        )

    def encode(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor, **offsets: Unpack[EmbeddingOffsets]
    ) -> EncoderOutput:
        """Encoder memory of normalised ``pixels`` (B, 3, S, S) and ``src_tokens`` (B, L)."""
        return self.encoder(src_tokens, pixels, **offsets)

    def decode(self, prev_tokens: torch.Tensor, memory: EncoderOutput) -> torch.Tensor:
        """Next-token logits (B, T, V) for decoder inputs ``prev_tokens`` (B, T) starting with BOS."""
        return self.decoder(prev_tokens, memory)

    def forward(
        self, src_tokens: torch.Tensor, pixels: torch.Tensor, prev_tokens: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(prev_tokens, self.encode(src_tokens, pixels))


@torch.no_grad()
def init_weights(backbone: OFABackbone) -> None:
    """BERT-style random init (N(0, std) weights, zero biases), as OFA initialises its modules; the
    relative position tables start at zero as in OFA; the ResNet stem gets He init; the token
    embedding N(0, d^-0.5) as fairseq's ``Embedding``."""
    std = backbone.ofa_config.init_std
    for module in backbone.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, SelfAttention):
            module.in_proj_weight.normal_(0.0, std)
            module.in_proj_bias.zero_()
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
    for tower in (backbone.encoder, backbone.decoder):
        for table in (*tower.token_rel_pos_table_list, *tower.image_rel_pos_table_list):
            table.weight.zero_()
    # The shared token embedding is also the output projection: fairseq's N(0, d^-0.5) init gives
    # logits of unit scale (N(0, 0.02) would leave a random model's outputs almost uniform).
    emb = backbone.embed_tokens
    emb.weight.normal_(0.0, backbone.ofa_config.d_model**-0.5)
    emb.weight[backbone.ofa_config.pad_id].zero_()


def _size_of(name: str) -> str:
    size = name.removeprefix("ofa-")
    if not name.startswith("ofa-") or size not in SIZES:
        raise UserError(f"unknown OFA backbone {name!r}; known: {', '.join('ofa-' + s for s in SIZES)}")
    return size


def build_ofa_backbone(
    name: str,
    pretrained: bool = True,
    *,
    vocab_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
) -> OFABackbone:
    """``ofa-tiny|medium|base|large|huge`` (released weights or random) or ``ofa-test`` (seeded random).

    ``vocab_size`` only applies to ``ofa-test`` (the real sizes have 59,457 tokens). ``device="meta"``
    builds the module tree without memory (parameter counts of the big sizes).
    """
    size = _size_of(name)
    if size == "test":
        cfg = size_config("test", vocab_size=int(vocab_size or TEST_VOCAB_SIZE))
        return _random(name, cfg, device, seed, {"pretrained": None, "init_seed": seed})
    cfg = size_config(size)
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        raise UserError(f"{name} has a fixed vocabulary of {cfg.vocab_size} tokens, not {vocab_size}")
    if not pretrained:
        return _random(name, cfg, device, seed, {"pretrained": None, "init_seed": seed})
    folder = checkpoint_dir or find_checkpoint(size)
    check_checkpoint_config(folder, cfg, name)
    from .checkpoint import load_ofa_checkpoint, read_state_dict

    with torch.device("meta"):
        backbone = OFABackbone(
            name, cfg, {"pretrained": f"OFA-Sys/ofa-{size}", "checkpoint_dir": str(folder)}
        )
    load_ofa_checkpoint(backbone, read_state_dict(folder), assign=True)
    backbone.freeze()
    return backbone.to(device) if device is not None else backbone


def _random(
    name: str, cfg: OFAConfig, device: str | torch.device | None, seed: int, config: dict[str, Any]
) -> OFABackbone:
    target = torch.device(device) if device is not None else torch.device("cpu")
    with target:
        backbone = OFABackbone(name, cfg, config)
    if target.type != "meta":
        with seeded(seed):
            init_weights(backbone)
    backbone.freeze()
    return backbone


def find_checkpoint(size: str) -> Path:
    """The folder of the released ``OFA-Sys/ofa-<size>`` checkpoint, without touching the network."""
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        for folder in (Path(env) / f"ofa-{size}", Path(env)):
            if (folder / "config.json").is_file():
                return folder
    for repo in (f"OFA-Sys/ofa-{size}", f"OFA-Sys/OFA-{size}"):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo, local_files_only=True))
        except Exception:  # noqa: BLE001, S112 - not cached (or hub missing): try the next spelling
            continue
    raise UserError(
        f"the released OFA-{size} checkpoint (Hugging Face 'OFA-Sys/ofa-{size}': config.json, vocab.json, "
        f"merges.txt, pytorch_model.bin) is not available offline. Download it once with "
        f"`huggingface-cli download OFA-Sys/ofa-{size}` (the OFA-Sys transformers-branch format), or set "
        f"{CHECKPOINT_ENV} to a folder holding it (or holding ofa-{size}/); use --random-init for random "
        "weights"
    )


def check_checkpoint_config(folder: Path, cfg: OFAConfig, name: str) -> None:
    """Refuse a checkpoint whose ``config.json`` describes another architecture than ``name``."""
    path = folder / "config.json"
    try:
        released = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{name}: cannot read {path}: {err}") from None
    expected = {
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.attention_heads,
        "encoder_ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "resnet_type": cfg.resnet_type,
    }
    wrong = {k: (released.get(k), v) for k, v in expected.items() if k in released and released[k] != v}
    if wrong:
        details = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise UserError(f"{name}: {path} describes another architecture: {details}")
