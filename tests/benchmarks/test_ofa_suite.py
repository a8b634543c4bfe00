"""The ofa suite as data: per-task epochs from the paper / script, the recorded deviations, the
dataset split names results carry, and the loaders' ``split_names`` check."""

from __future__ import annotations

import pytest

from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData, check_smoke_args, check_tsv_args
from petlbench.benchmarks.suites import load_suite
from petlbench.errors import UserError

REFCOCO = ("refcoco-testA", "refcoco-testB", "refcocoplus-testA", "refcocoplus-testB", "refcocog-test")


def test_ofa_protocol_per_task():
    suite = load_suite("ofa")
    for name in REFCOCO:  # train_refcoco_prefix.sh L42: 100 epochs; the paper: >= 40 on RefCOCO
        p = suite.protocol_for(suite.task(name))
        assert (p.epochs, p.batch_size, p.lr, p.warmup_epochs) == (100, 128, 0.03, 6.0)
        assert (p.weight_decay, p.grad_clip, p.optimizer) == (0.01, 1.0, "adamw")
    for name in ("snli_ve", "caption", "vqa"):  # ours: nothing is published
        p = suite.protocol_for(suite.task(name))
        assert p.epochs == 20 and p.warmup_epochs == pytest.approx(0.06 * 20)
    assert suite.protocol_for(suite.task("vqa")).eval_split == "val"
    vqa = suite.task("vqa")
    assert vqa.args["files"]["test"] == "vqa_data/vqa_test.tsv"
    assert vqa.args["split_names"] == {"val": "val", "test": "test2015"}
    assert suite.task("refcocog-test").args["split_names"] == {"val": "val-u", "test": "test-u"}


def test_ofa_deviations_name_what_is_ours():
    suite = load_suite("ofa")
    ids = {d.id for d in suite.deviations}
    assert {
        "epochs-unpublished",
        "refcoco-script-on-plus-and-g",
        "schedule-cosine",
        "prefix-length-64",
        "vqa-no-add-object",
        "vqa-scored-on-val",
        "fgsm-embedding-eps-ours",
    } <= ids
    on_vqa = {d["id"] for d in suite.deviations_for("vqa", "prefix", "ofa-base")}
    assert {"epochs-unpublished", "vqa-no-add-object", "prefix-length-64"} <= on_vqa
    on_refcoco = {d["id"] for d in suite.deviations_for("refcoco-testA", "bitfit-ofa", "ofa-base")}
    assert "epochs-unpublished" not in on_refcoco and "prefix-length-64" not in on_refcoco
    assert "schedule-cosine" in on_refcoco


def test_split_names_are_checked_and_named():
    base = {"task": "vqa", "files": {"train": "t.tsv", "test": "x.tsv"}}
    check_tsv_args({**base, "split_names": {"test": "test-dev"}})
    for bad in ({"dev": "x"}, {"test": ""}, {"test": 3}):
        with pytest.raises(UserError, match="split_names"):
            check_tsv_args({**base, "split_names": bad})
    with pytest.raises(UserError, match="split_names"):
        check_smoke_args({"task": "vqa", "split_names": {"nope": "x"}})
    data = Seq2SeqTaskData("v", "vqa", {}, {"split_names": {"test": "test2015"}})
    assert data.split_name("test") == "test2015" and data.split_name("val") == "val"
