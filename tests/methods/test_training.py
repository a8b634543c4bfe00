"""The contract every method shares: only its parameters train, the backbone stays bitwise frozen,
and loss falls / accuracy beats chance on a learnable offline task."""

import pytest
from smoke_training import backbone_unchanged, train_on

from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import load_suite

SMOKE = load_suite("smoke")


@pytest.mark.parametrize(("method", "backbone"), [("vpt", "tiny-vit"), ("vpt", "tiny-clip")])
def test_only_method_parameters_train_and_backbone_is_bitwise_unchanged(colors, method, backbone):
    trained = train_on(colors, method, backbone, {"deep": True}, epochs=2)  # checks what trains
    assert any(p.requires_grad for p in trained.model.parameters())
    assert not any(p.requires_grad for p in trained.model.backbone.parameters())
    assert backbone_unchanged(trained)
    assert trained.result.history[-1]["loss"] < trained.result.history[0]["loss"]


# vpt trains through the whole backbone (30 s): slow; the linear probe keeps the path in the default run
@pytest.mark.parametrize("method", [pytest.param("vpt", marks=pytest.mark.slow), "linear"])
def test_vpt_and_linear_probe_beat_chance_clearly_through_bench_run(tmp_path, method):
    """The README's main job, on the in-distribution tasks of the smoke suite with the tiny ViT."""
    from petlbench.cli import main
    from petlbench.harness.store import Store

    tasks = ["colors", "position", "digits"]
    args = [
        "run",
        "--method",
        method,
        "--suite",
        "smoke",
        "--backbone",
        "tiny-vit",
        "--tasks",
        ",".join(tasks),
    ]
    assert main([*args, "--store", str(tmp_path / "s.sqlite"), "--no-fgsm"]) == 0
    with Store(tmp_path / "s.sqlite") as store:
        accuracy_by_task = {r.spec.task: r.metrics["accuracy"] for r in store.records()}
    for task in tasks:
        chance = 100.0 / len(load_task(SMOKE.task(task), None).class_names)
        assert accuracy_by_task[task] > 2.5 * chance, (task, accuracy_by_task[task], chance)
