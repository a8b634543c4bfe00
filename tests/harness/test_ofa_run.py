"""The generative path end to end: `bench run --method prefix --suite ofa-smoke`, resume, the
``ofa_tsv`` loader, and FGSM on the embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from petlbench.benchmarks.suites import load_suite
from petlbench.harness.cli import main
from petlbench.harness.store import Store

TASKS = ("refcoco", "snli_ve", "caption", "vqa")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    # Generated smoke data goes to a per-session cache; one thread is much faster for these tiny
    # models on a shared 2-core machine.
    monkeypatch.setenv("PETLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _records(store_path):
    with Store(store_path) as store:
        return {r.spec.task: r for r in store.records()}


def test_bench_run_prefix_on_ofa_smoke_trains_all_four_tasks(tmp_path):
    store = tmp_path / "s.sqlite"
    args = ["run", "--method", "prefix", "--suite", "ofa-smoke", "--store", str(store), "--no-fgsm", "--json"]
    assert main([*args, "--protocol", "epochs=3"]) == 0
    records = _records(store)
    assert set(records) == set(TASKS)
    suite = load_suite("ofa-smoke")
    for name, rec in records.items():
        assert rec.status == "finished"
        losses = [h["loss"] for h in rec.result["history"]]
        assert len(losses) == 3 and losses[-1] < losses[0], (name, losses)
        metric = suite.task(name).metric
        assert rec.result["metric"] == metric and 0.0 <= rec.metrics[metric] <= 100.0
        assert f"selection_{metric}" in rec.metrics
        # 100 prefixes per layer, 2 + 2 layers of width 64, keys and values: 2 * (2 * 2 * 64 * 100)
        params = rec.result["parameters"]
        assert params["method"] == 51_200 and params["head"] == 0
        assert rec.result["method"]["lengths"] == {"encoder": 100, "decoder": 100}
        assert rec.spec.method_config["tower"] == "both"  # the encoder-decoder default, recorded
        assert rec.result["cost"]["per_example"] > 0
        assert rec.provenance["data"]["loader"] == "ofa_smoke"
    assert records["snli_ve"].result["eval"]["inference"] == "allcand"
    assert records["caption"].result["eval"]["extra"].keys() == {"bleu4", "cider", "meteor_exact"}


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    from petlbench.harness.runner import Runner, plan_runs

    suite = load_suite("ofa-smoke")
    (spec,), _ = plan_runs("prefix", suite, tasks=["vqa"], protocol_overrides={"epochs": 3})

    def crash_at(step_limit):
        def on_step(step, total, loss):
            if step == step_limit:
                raise KeyboardInterrupt

        return on_step

    killed = tmp_path / "killed" / "s.sqlite"
    with Store(killed) as store:
        runner = Runner(store, suite, checkpoint_dir=killed.parent / "checkpoints", device="cpu")
        with pytest.raises(KeyboardInterrupt):
            runner.run(spec, on_step=crash_at(5))  # 3 steps per epoch: dies in the second epoch
        resumed = runner.run(spec)
    clean = tmp_path / "clean" / "s.sqlite"
    with Store(clean) as store:
        uninterrupted = Runner(store, suite, checkpoint_dir=clean.parent / "checkpoints", device="cpu").run(
            spec
        )
    assert resumed.result["train"]["resumed_from_epoch"] == {"stage": "train", "epoch": 1}
    assert [h["loss"] for h in resumed.result["history"]] == [
        h["loss"] for h in uninterrupted.result["history"]
    ]
    assert resumed.metrics == uninterrupted.metrics


def test_ofa_tsv_loader_reads_released_format_files(tmp_path):
    from petlbench.benchmarks.ofa_tasks.smoke import FILES, write_ofa_tiny

    root = tmp_path / "data"
    write_ofa_tiny(root)
    suite_file = tmp_path / "tsv.yaml"
    tasks = [
        {
            "name": task,
            "loader": "ofa_tsv",
            "args": {"task": task, "files": FILES[task], "tokenizer": "bpe", "beam": 2},
            "metric": metric,
        }
        for task, metric in (("snli_ve", "snli_ve_accuracy"), ("refcoco", "acc@0.5"))
    ]
    suite_file.write_text(
        json.dumps(
            {
                "version": "t",
                "backbones": ["ofa-test"],
                "seeds": [0],
                "protocol": {
                    "epochs": 1,
                    "batch_size": 4,
                    "optimizer": "adamw",
                    "lr": 0.01,
                    "eval_split": "val",
                    "selection_split": "val",
                },
                "tasks": tasks,
            }
        )
    )
    store = tmp_path / "s.sqlite"
    argv = ["run", "--method", "bitfit-ofa", "--suite", str(suite_file), "--data-root", str(root)]
    assert main([*argv, "--store", str(store), "--no-fgsm"]) == 0
    records = _records(store)
    assert {t: r.status for t, r in records.items()} == {"snli_ve": "finished", "refcoco": "finished"}
    assert records["refcoco"].result["eval"]["examples"] == 3
    # OFA's BitFit: per layer the pre-attention (+ pre-cross-attention) and pre-FFN LayerNorm biases,
    # fc1 and fc2 biases; plus each tower's final LayerNorm: 2 * (64 + 64 + 256 + 64) + 64 and
    # 2 * (3 * 64 + 256 + 64) + 64
    assert records["snli_ve"].result["parameters"]["method"] == 960 + 1_088


def test_fgsm_on_embeddings_at_eps_zero_equals_clean(tmp_path):
    from petlbench.benchmarks.datasets import load_task
    from petlbench.harness.runner import plan_runs
    from petlbench.harness.seq2seq import ExampleSet, GenerativeTask, build_generator
    from petlbench.harness.seq2seq_robustness import embedding_gradient_signs, fgsm_embeddings

    suite = load_suite("ofa-smoke")
    for name in ("snli_ve", "refcoco"):
        task_spec = suite.task(name)
        data = load_task(task_spec, None)
        (spec,), _ = plan_runs("prefix", suite, tasks=[name])
        model, tok = build_generator(spec, data, torch.device("cpu"))
        task = GenerativeTask(data, tok, task_spec.metric)
        examples = ExampleSet(data.split("val"), data.task, tok, data.options, 64, train=False)
        out = fgsm_embeddings(model, task, examples, epsilons=[0.0, 0.5], batch_size=8, max_examples=8)
        assert out["eps"] == [0.0, 0.5] and out["examples"] == 8
        assert out["accuracy"][0] == out["clean"] and out["drop"][0] == 0.0
        assert out["max_perturbation"] == [0.0, 0.5]
        model.eval()
        batch = task.collate([examples[i] for i in range(4)], torch.device("cpu"))
        s_text, s_image = embedding_gradient_signs(model, batch)
        assert s_text.abs().sum() > 0 and s_image.abs().sum() > 0
        clean = task.predict(model, batch)
        zero = task.predict(model, batch, text_offset=0.0 * s_text, image_offset=0.0 * s_image)
        assert zero == clean
        with torch.no_grad():
            ref = model(batch.src, batch.pixels, batch.prev)
            mem = model.encode(batch.src, batch.pixels, text_offset=0 * s_text, image_offset=0 * s_image)
            assert torch.equal(model.logits(batch.prev, mem), ref)
