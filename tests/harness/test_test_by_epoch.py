"""``--test-by-epoch``: the test score after every epoch, for the leaderboard's selection-inflation
column, recorded beside a run that is otherwise the same (same losses, selection and metrics)."""

from __future__ import annotations

import dataclasses

import pytest

from petlbench.benchmarks.suites import load_suite
from petlbench.errors import UserError
from petlbench.harness.plan import plan_runs
from petlbench.harness.runner import Runner, epoch_candidates

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(method: str, suite: str = "smoke", task: str = "digits", **measure):
    (spec,), _ = plan_runs(
        method,
        load_suite(suite),
        backbones=["tiny-vit"] if suite == "smoke" else None,
        tasks=[task],
        seeds=[1],
        protocol_overrides={"epochs": 3},
        measure=measure,
    )
    return spec


def test_the_test_score_per_epoch_is_recorded_and_changes_nothing_else():
    plain = _spec("vpt")
    scored = _spec("vpt", test_by_epoch=True)
    assert scored.run_id != plain.run_id  # a measurement the run makes is part of its identity
    runner = Runner(None, load_suite("smoke"), device="cpu")
    a, b = runner.compute(plain), runner.compute(scored)
    assert b.metrics == a.metrics
    assert [h["loss"] for h in b.result["history"]] == [h["loss"] for h in a.result["history"]]
    assert [h["selection_accuracy"] for h in b.result["history"]] == [
        h["selection_accuracy"] for h in a.result["history"]
    ]
    assert "selection" not in a.result and all("test_accuracy" not in h for h in a.result["history"])
    selection = b.result["selection"]
    tests = [h["test_accuracy"] for h in b.result["history"]]
    assert len(tests) == 3 and selection["test_by_candidate"] == tests
    # the reported number is the model after the last epoch: the same scorer gives the same value
    assert selection["selected_test"] == tests[-1] == b.metrics["accuracy"]
    assert selection["candidates"] == "epochs"
    # stage results (what later stages' prepare hooks see) never carry the test score
    assert all("test_accuracy" not in s for s in b.result["stages"])


def test_a_search_trial_never_scores_the_test_split():
    spec = dataclasses.replace(_spec("linear", test_by_epoch=True), stage="search")
    out = Runner(None, load_suite("smoke"), device="cpu").compute(spec)
    assert "selection" not in out.result
    assert all("test_accuracy" not in h for h in out.result["history"])


def test_epoch_candidates_reads_every_stage_and_none_without_epochs():
    history = [
        {"stage": "train", "epoch": 0, "test_accuracy": 50.0},
        {"stage": "train", "epoch": 1, "test_accuracy": 70.0},
        {"stage": "rewind", "epoch": 0, "test_accuracy": 60.0},
    ]
    out = epoch_candidates(history, "test_accuracy")
    assert out is not None
    assert out["test_by_candidate"] == [50.0, 70.0, 60.0] and out["selected_test"] == 60.0
    assert epoch_candidates([], "test_accuracy") is None


def test_base_to_new_refuses_a_test_score_per_epoch():
    """Base-to-new tests new classes with a head built after training: no per-epoch test score."""
    from types import SimpleNamespace

    from petlbench.harness.objectives import ClassificationObjective

    suite = load_suite("smoke")
    spec = _spec("vpt", test_by_epoch=True)
    runner = Runner(None, suite, device="cpu")
    base_to_new = SimpleNamespace(class_names=["zero", "one"], meta={"eval_class_names": ["seven", "eight"]})
    with pytest.raises(UserError, match="base-to-new"):
        ClassificationObjective(runner.context(), spec, suite.task("digits"), base_to_new).check()
    plain = SimpleNamespace(class_names=["zero", "one"], meta={})
    ClassificationObjective(runner.context(), spec, suite.task("digits"), plain).check()  # accepted
