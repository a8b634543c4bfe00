"""The generative path end to end: `bench run --method prefix --suite ofa-smoke`, resume, the
``ofa_tsv`` loader, and FGSM on the embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from petlbench.benchmarks.metrics.caption import FALLBACK_DEVIATION, coco_caption_unavailable
from petlbench.benchmarks.suites import load_suite
from petlbench.cli import main
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
        # 64 prefixes per layer (the OFA default), 2 + 2 layers of width 64, keys and values:
        # 2 * (2 * 2 * 64 * 64)
        params = rec.result["parameters"]
        assert params["method"] == 32_768 and params["head"] == 0
        assert rec.result["method"]["lengths"] == {"encoder": 64, "decoder": 64}
        assert rec.spec.method_config["length"] == 64  # recorded in the spec
        assert rec.result["eval"]["split"] == "val" and rec.result["eval"]["scored"]
        assert rec.spec.method_config["tower"] == "both"  # the encoder-decoder default, recorded
        assert rec.result["cost"]["per_example"] > 0
        assert rec.provenance["data"]["loader"] == "ofa_smoke"
    assert records["snli_ve"].result["eval"]["inference"] == "allcand"
    # coco-caption's scorers where pycocoevalcap and Java are installed, else the labelled fallback
    official = coco_caption_unavailable() is None
    caption = records["caption"].result["eval"]
    bleu = {"bleu1", "bleu2", "bleu3", "bleu4"}
    assert caption["extra"].keys() == bleu | {"cider", "meteor" if official else "meteor_exact"}
    assert caption["caption_metrics"]["backend"] == ("coco" if official else "python")
    fallback = [] if official else [FALLBACK_DEVIATION]
    assert [d["id"] for d in caption["caption_metrics"]["deviations"]] == fallback
    assert "spice" in caption["caption_metrics"]["skipped"] or "spice" in caption["extra"]


def test_caption_run_without_coco_caption_names_the_python_fallback(tmp_path, monkeypatch):
    from petlbench.benchmarks.metrics import caption as caption_metrics

    monkeypatch.setattr(caption_metrics, "coco_caption_unavailable", lambda: "java is not on PATH")
    store = tmp_path / "s.sqlite"
    argv = ["run", "--method", "prefix", "--suite", "ofa-smoke", "--tasks", "caption", "--no-fgsm"]
    assert main([*argv, "--store", str(store), "--protocol", "epochs=1"]) == 0
    caption = _records(store)["caption"].result["eval"]
    assert caption["caption_metrics"]["backend"] == "python"
    assert "meteor_exact" in caption["extra"] and "meteor" not in caption["extra"]
    assert "meteor" in caption["caption_metrics"]["skipped"]
    (deviation,) = caption["caption_metrics"]["deviations"]
    assert deviation["id"] == FALLBACK_DEVIATION and "java is not on PATH" in deviation["what"]
    assert FALLBACK_DEVIATION in {d["id"] for d in _records(store)["caption"].result["deviations"]}


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    from petlbench.harness.plan import plan_runs
    from petlbench.harness.runner import Runner

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
    from petlbench.harness.seq2seq_robustness import embedding_gradient_signs, fgsm_embeddings

    for name in ("snli_ve", "refcoco"):
        model, task, examples = _smoke_model(name)
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


def _smoke_model(name):
    """Prefix tuning's generator on an ofa-smoke task, built the way a run builds it: (model, the
    decoding task, its 64-pixel validation examples)."""
    from petlbench.benchmarks.datasets import load_task
    from petlbench.harness.plan import plan_runs
    from petlbench.harness.runner import Runner

    suite = load_suite("ofa-smoke")
    task_spec = suite.task(name)
    data = load_task(task_spec, None)
    (spec,), _ = plan_runs("prefix", suite, tasks=[name])
    objective = Runner(None, suite, device="cpu").objective(spec, task_spec, data)
    task = objective.decoding
    return objective.model, task, task.examples("val", 64, train=False)


def test_fgsm_on_ofa_uses_embedding_units_and_ignores_pixel_epsilons():
    from petlbench.errors import UserError
    from petlbench.harness.robustness import DEFAULT_EPSILONS
    from petlbench.harness.seq2seq_robustness import (
        DEFAULT_RMS_FRACTIONS,
        check_fgsm_options,
        fgsm_from_options,
        token_embedding_rms,
    )

    model, task, examples = _smoke_model("snli_ve")
    weight = model.backbone.embed_tokens.weight.detach().double()
    rows = [i for i in range(weight.shape[0]) if i != model.vocab.pad]
    rms = float(weight[rows].pow(2).mean().sqrt())
    assert token_embedding_rms(model) == pytest.approx(rms)
    assert DEFAULT_RMS_FRACTIONS == (0.0174, 0.0349, 0.0697, 0.1394)  # k/255 / 0.225, k = 1, 2, 4, 8

    # what `bench run` passes today: pixel fractions, no unit -> not applied, the embedding default grid
    pixel = {"epsilons": list(DEFAULT_EPSILONS), "max_examples": 4}
    out = fgsm_from_options(model, task, examples, pixel, batch_size=4)
    assert out["unit"] == "embedding" and out["examples"] == 4
    assert out["eps"] == pytest.approx([f * rms for f in DEFAULT_RMS_FRACTIONS])
    assert out["eps_relative"] == pytest.approx(list(DEFAULT_RMS_FRACTIONS))
    assert out["grid"]["source"] == "default"
    ignored = out["grid"]["ignored"]
    assert ignored["unit"] == "pixel" and ignored["eps"] == list(DEFAULT_EPSILONS)
    assert out["reference_rms"]["token_embedding_table"] == pytest.approx(rms)
    assert out["reference_rms"]["image_embeddings"] > 0
    assert out["max_perturbation"] == pytest.approx(out["eps"], rel=1e-5)
    assert len(out["accuracy"]) == len(out["drop"]) == 4

    # values explicitly in embedding units are used as they are
    given = {"epsilons": [0.0, 0.25], "unit": "embedding", "max_examples": 4}
    out = fgsm_from_options(model, task, examples, given, batch_size=4)
    assert out["eps"] == [0.0, 0.25] and out["grid"]["source"] == "user" and "ignored" not in out["grid"]
    assert out["accuracy"][0] == out["clean"]

    with pytest.raises(UserError, match="unit"):
        check_fgsm_options({"epsilons": [0.1], "unit": "pixels"})
    with pytest.raises(UserError, match="epsilons"):
        check_fgsm_options({"epsilons": [-1.0], "unit": "embedding"})


def test_vqa_test_split_without_answers_writes_the_submission_file(tmp_path):
    from petlbench.benchmarks.datasets.ofa_tsv import read_ofa_tsv, write_ofa_tsv
    from petlbench.benchmarks.ofa_tasks.smoke import FILES, write_ofa_tiny
    from petlbench.harness.plan import plan_runs
    from petlbench.harness.runner import Runner

    root = tmp_path / "data"
    write_ofa_tiny(root)
    test_rows = read_ofa_tsv(root / FILES["vqa"]["val"], "vqa")
    for i, row in enumerate(test_rows):
        row.uid, row.answers = str(9000 + i), {}  # a test split: question ids, no answers
    write_ofa_tsv(root / "vqa" / "vqa_test.tsv", "vqa", test_rows)
    suite_file = tmp_path / "vqa.yaml"
    files = {**FILES["vqa"], "test": "vqa/vqa_test.tsv"}
    suite_file.write_text(
        json.dumps(
            {
                "version": "t",
                "backbones": ["ofa-test"],
                "seeds": [0],
                "protocol": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.01},
                "tasks": [
                    {
                        "name": "vqa",
                        "loader": "ofa_tsv",
                        "args": {
                            "task": "vqa",
                            "files": files,
                            "tokenizer": "bpe",
                            "split_names": {"test": "test2015"},
                        },
                        "metric": "vqa_soft_accuracy",
                    }
                ],
            }
        )
    )
    suite = load_suite(suite_file)
    measure = {"fgsm": {"epsilons": [0.01], "unit": "embedding", "max_examples": 2}}
    (spec,), _ = plan_runs("prefix", suite, measure=measure)
    store_path = tmp_path / "s.sqlite"
    with Store(store_path) as store:
        runner = Runner(store, suite, data_root=root, checkpoint_dir=tmp_path / "checkpoints", device="cpu")
        rec = runner.run(spec)
    assert "vqa_soft_accuracy" not in rec.metrics and "selection_vqa_soft_accuracy" in rec.metrics
    ev = rec.result["eval"]
    assert (ev["split"], ev["protocol_split"], ev["scored"]) == ("test2015", "test", False)
    assert "fgsm" in rec.result["robustness"] and "skipped" in rec.result["robustness"]["fgsm"]
    sub = ev["submission"]
    path = tmp_path / "artifacts" / f"{spec.run_id}.vqa-test2015-results.json"
    assert sub["path"] == str(path) and sub["questions"] == len(test_rows) and sub["split"] == "test2015"
    assert (tmp_path / "artifacts" / f"{spec.run_id}.safetensors").is_file()  # next to the saved model
    results = json.loads(path.read_text())
    assert [r["question_id"] for r in results] == [9000 + i for i in range(len(test_rows))]
    candidates = {a for row in read_ofa_tsv(root / FILES["vqa"]["train"], "vqa") for a in row.answers}
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in candidates for r in results)


# Per-epoch training losses of `bench run --method prefix --suite ofa-smoke --protocol epochs=2` at
# seed 1 (ofa-test, random init, one thread), recorded before the run paths were unified (issue 16):
# the generative path must train exactly as it did. Tolerance: float32 kernels differ across CPUs.
PINNED_PREFIX_LOSSES = {
    "caption": [7.529423554738362, 6.535366694132487],
    "refcoco": [7.488671938578288, 6.566033522288005],
    "snli_ve": [0.6146871348222097, 0.5418245295683543],
    "vqa": [1.4700318972269695, 1.2759440342585247],
}


def test_ofa_smoke_prefix_losses_are_pinned(tmp_path):
    store = tmp_path / "s.sqlite"
    argv = ["run", "--method", "prefix", "--suite", "ofa-smoke", "--no-fgsm", "--jobs", "1"]
    assert main([*argv, "--store", str(store), "--protocol", "epochs=2"]) == 0
    losses = {name: [h["loss"] for h in rec.result["history"]] for name, rec in _records(store).items()}
    assert losses.keys() == PINNED_PREFIX_LOSSES.keys()
    for name, pinned in PINNED_PREFIX_LOSSES.items():
        assert losses[name] == pytest.approx(pinned, rel=1e-5), name
