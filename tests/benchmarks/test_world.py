"""The synthetic world: scenes, captions, the word tokenizer and the downstream task loader."""

import numpy as np
import pytest
import torch

from petlbench.backbones.word_tokenizer import PAD, SOS, UNK, WordTokenizer
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import load_suite
from petlbench.benchmarks.synthetic import world
from petlbench.benchmarks.synthetic.tasks import TASKS, make_task_split
from petlbench.errors import UserError


def test_scenes_are_seeded_and_captions_describe_them():
    a = world.sample_scenes(np.random.default_rng(3), 200)
    b = world.sample_scenes(np.random.default_rng(3), 200)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("shape", "color", "count"))
    rng = np.random.default_rng(0)
    caps = world.captions(a, rng, keep=1.0)
    names = list(world.ALL_COLORS)
    for i, cap in enumerate(caps):
        assert names[a.color[i]] in cap.split()
        if a.count[i] == 1:
            assert cap.startswith("a ") and world.SIZES[a.size[i]] in cap
        else:
            assert cap.split()[0] in ("two", "three", "four")
    # held-out colours and stripes never appear in pretraining scenes
    assert not set(a.color.tolist()) & {names.index("pink"), names.index("cyan")}
    assert not a.striped.any()


def test_every_caption_word_is_in_the_vocabulary():
    vocab = set(world.vocabulary())
    scenes = world.sample_scenes(np.random.default_rng(1), 500, striped_fraction=0.5)
    for cap in world.captions(scenes, np.random.default_rng(2)):
        assert set(cap.rstrip(".").split()) <= vocab, cap
    for task in TASKS.values():
        for template in task.templates:
            for name in task.class_names:
                assert set(template.format(name).rstrip(".").split()) <= vocab


def test_word_tokenizer_puts_eot_at_the_highest_id():
    tok = WordTokenizer(["a", "red", "circle"], context_length=6)
    ids = tok(["a red circle.", "a blue circle in the corner"])
    eot = tok.eot
    assert ids[0].tolist() == [SOS, 3, 4, 5, eot, PAD]
    assert ids[1].tolist() == [SOS, 3, UNK, 5, UNK, eot]  # truncated, EOT kept last
    assert int(ids.argmax(-1)[1]) == 5 and tok.vocab_size == eot + 1


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_splits_are_balanced_deterministic_and_distinct(name):
    images, labels = make_task_split(name, 64, seed=0, split="train")
    again, _ = make_task_split(name, 64, seed=0, split="train")
    other, _ = make_task_split(name, 64, seed=0, split="test")
    assert images.shape == (64, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    counts = np.bincount(labels, minlength=len(TASKS[name].class_names))
    assert counts.max() - counts.min() <= 1


def test_striped_task_differs_from_plain_only_in_background_statistics():
    plain, _ = make_task_split("world-shapes", 128, seed=0, split="test")
    striped, _ = make_task_split("world-shapes-striped", 128, seed=0, split="test")
    # stripes add large local variation to the background
    grad = lambda x: np.abs(np.diff(x.astype(np.float32), axis=-1)).mean()  # noqa: E731
    assert grad(striped) > 2 * grad(plain)


def test_mini_suite_loads_through_the_world_loader():
    suite = load_suite("mini")
    assert suite.backbones == ("micro-clip", "micro-vit") or list(suite.backbones) == [
        "micro-clip",
        "micro-vit",
    ]
    data = load_task(suite.task("count"), None)
    assert data.class_names == ["one", "two", "three", "four"]
    assert len(data.split("train")) == 800 and data.meta["world"] == world.WORLD_VERSION
    assert suite.protocol_for(suite.task("colors-16shot"), "vpt").shots == 16
    assert torch.equal(data.split("train").images, load_task(suite.task("count"), None).split("train").images)


def test_bad_world_args_are_user_errors(tmp_path):
    from petlbench.benchmarks.suites import TaskSpec

    with pytest.raises(UserError, match="task"):
        load_task(TaskSpec(name="x", loader="world", args={"task": "nope"}), None)
    with pytest.raises(UserError, match="n_train"):
        load_task(TaskSpec(name="x", loader="world", args={"task": "world-count", "n_train": 2}), None)
