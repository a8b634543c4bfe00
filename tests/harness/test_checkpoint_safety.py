"""Checkpoints and user files are never unpickled: a planted payload cannot run, a corrupt
checkpoint restarts cleanly (issue 15, item 1)."""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch

from petlbench.errors import UserError
from petlbench.harness.checkpoint import CheckpointError, load_state, save_state
from petlbench.harness.objectives.classification import fit_classifier

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _trainer(checkpoint: Path, epochs: int = 2):
    from petlbench.backbones import build_backbone
    from petlbench.backbones.classifier import ImageClassifier
    from petlbench.backbones.heads import LinearHead
    from petlbench.benchmarks.data import TensorImageDataset
    from petlbench.harness.trainer import TrainConfig, Trainer
    from petlbench.methods.vpt import VPT

    torch.manual_seed(0)
    backbone = build_backbone("tiny-vit")
    method = VPT({"num_tokens": 2})
    method.attach(backbone)
    model = ImageClassifier(backbone, LinearHead(backbone.feature_dim, 2), method)
    g = torch.Generator().manual_seed(1)
    data = TensorImageDataset(
        torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8), torch.tensor([0, 1] * 4)
    )
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=0.1, seed=0)
    trainer = Trainer(
        model, method, cfg, head=model.head, device=torch.device("cpu"), checkpoint_path=checkpoint
    )
    return trainer, data


def test_state_round_trips_with_int_keys_tuples_and_nan(tmp_path):
    state = {
        "step": 3,
        "opt": {"state": {0: {"m": torch.ones(2)}}, "groups": [{"lr": 0.1, "params": [0]}]},
        "history": [(1, "image", 0, 2)],
        "loss": float("nan"),
        "none": None,
    }
    save_state(tmp_path / "c.safetensors", state)
    back = load_state(tmp_path / "c.safetensors")
    assert back["opt"]["state"][0]["m"].tolist() == [1.0, 1.0] and back["step"] == 3
    assert back["history"] == [[1, "image", 0, 2]] and math.isnan(back["loss"]) and back["none"] is None


def test_a_planted_pickle_checkpoint_cannot_execute_code_and_training_restarts(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "stage0-train.safetensors"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0, "evil": _Payload(marker)}, ckpt)  # what an attacker would plant
    with pytest.raises(CheckpointError):
        load_state(ckpt)
    trainer, data = _trainer(ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_classifier(trainer, trainer.model, data)
    assert not marker.exists()
    assert result.resumed_from_epoch is None and len(result.history) == 2
    assert any("discarded" in str(w.message) for w in caught)


def test_a_truncated_checkpoint_leads_to_a_clean_restart_equal_to_an_uninterrupted_run(tmp_path):
    reference, data = _trainer(tmp_path / "ref" / "c.safetensors")
    expected = fit_classifier(reference, reference.model, data).history
    ckpt = tmp_path / "cut" / "c.safetensors"
    first, _ = _trainer(ckpt, epochs=1)
    fit_classifier(first, first.model, data)  # a checkpoint after epoch 0 ...
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # ... truncated by a crash or a disk
    again, _ = _trainer(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_classifier(again, again.model, data)
    assert result.resumed_from_epoch is None
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in expected])


def test_no_unpickling_anywhere_in_the_package():
    """No pickle.load and no torch.load(weights_only=False) on any path a user or the store hands us."""
    offenders = []
    for folder in ("backbones", "benchmarks", "harness", "leaderboard", "methods", "petlbench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in (
                r"pickle\.loads?\(",
                r"weights_only\s*=\s*False",
                r"torch\.load\((?![^)]*weights_only=True)",
            ):
                if re.search(pattern, text):
                    offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert offenders == []


def test_the_vqa_answer_table_is_read_as_plain_data_only(tmp_path):
    from petlbench.benchmarks.datasets.ofa_loaders import read_answer_table

    marker = tmp_path / "pwned"
    evil = tmp_path / "ans2label.pkl"
    evil.write_bytes(pickle.dumps({"yes": _Payload(marker)}))
    with pytest.raises(UserError, match="refusing"):
        read_answer_table(evil)
    assert not marker.exists()
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"no": 1, "yes": 0}))
    assert read_answer_table(good) == {"no": 1, "yes": 0}
    as_json = tmp_path / "answers.json"
    as_json.write_text('["yes", "no"]')
    assert read_answer_table(as_json) == {"yes": 0, "no": 1}
