"""Each CLIP method of issue 18 beats zero-shot CLIP on a mini few-shot task (micro-clip, seed 1,
the mini suite's protocol). Slow: one full training run per method."""

import pytest

# (method, task): the task where each was checked; zero-shot micro-clip scores shapes-16shot 62.25,
# new-colors-16shot 74.79 (seed 1; the committed mini leaderboard has the same values for seeds 1-3).
CELLS = [
    ("kgcoop", "shapes-16shot"),
    ("clip-adapter", "shapes-16shot"),
    ("tip-adapter", "shapes-16shot"),
    ("tip-adapter-f", "shapes-16shot"),
    ("clip-lora", "shapes-16shot"),
    ("maple", "new-colors-16shot"),
    ("ivlp", "new-colors-16shot"),
    ("promptsrc", "new-colors-16shot"),
]


def _accuracy(tmp_path, method, task):
    from petlbench.cli import main
    from petlbench.harness.store import Store

    store = tmp_path / f"{method}.sqlite"
    args = ["run", "--method", method, "--suite", "mini", "--backbone", "micro-clip", "--tasks", task]
    assert main([*args, "--seeds", "1", "--store", str(store), "--no-fgsm", "--jobs", "1"]) == 0
    (record,) = Store(store).records()
    return record.metrics["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "task"), CELLS)
def test_beats_zero_shot(tmp_path, method, task):
    assert _accuracy(tmp_path, method, task) > _accuracy(tmp_path, "zeroshot", task)
