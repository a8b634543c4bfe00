"""A composed method ``a+b`` on a suite: the protocol, option defaults and deviations its parts
declare there, and ``bench methods a+b`` listing each part's options as ``--set`` addresses them."""

from __future__ import annotations

import pytest

from petlbench.benchmarks.suites import Suite, load_suite
from petlbench.cli import main
from petlbench.errors import UserError
from petlbench.harness.plan import plan_runs
from petlbench.methods.registry import get_method, method_options

SUITE = """
name: compose-check
version: "1"
description: per-method layers for a composition
backbones: [tiny-vit]
seeds: [1]
protocol:
  epochs: 30
  batch_size: 32
  eval_batch_size: 256
  optimizer: sgd
  lr: 0.1
  weight_decay: 0.0001
  momentum: 0.9
  warmup_epochs: 1
  grad_clip: 1.0
  selection_split: val
  train_split: train
  eval_split: test
  shots: null
method_protocol:
  vpt:
    lr: {value: 0.5, ref: "vpt's reference"}
  bitfit:
    lr: 0.5
    batch_size: 32  # the suite's value: BitFit's own protocol is VPT's
  adapter:
    lr: 0.01
    epochs: 3
method_config:
  vpt:
    num_tokens: 7
deviations:
  - id: bitfit-only
    what: a deviation the suite declares for BitFit runs
    methods: [bitfit]
tasks:
  - name: colors
    loader: synthetic
    args: {kind: colors, n_train: 384, n_val: 128, n_test: 256, image_size: 32, seed: 0, shift: none}
    templates: ["a {} shape."]
"""


@pytest.fixture
def suite(tmp_path) -> Suite:
    path = tmp_path / "compose-check.yaml"
    path.write_text(SUITE)
    return load_suite(path)


@pytest.mark.parametrize("method", ["vpt+bitfit", "bitfit+vpt"])
def test_a_composition_runs_the_protocol_its_parts_agree_on(suite, method):
    task = suite.task("colors")
    eff = suite.resolve_protocol(task, method)
    vpt = suite.resolve_protocol(task, "vpt")
    # Both parts' blocks set lr 0.5 (only VPT's cites a reference: the run records it in either order).
    assert eff.protocol.lr == 0.5
    assert eff.source["lr"] == "method" and eff.refs["lr"] == "vpt's reference"
    assert eff.protocol == vpt.protocol
    assert eff.source == vpt.source and eff.refs == vpt.refs


def test_parts_whose_protocols_differ_are_refused_in_one_line(suite):
    task = suite.task("colors")
    with pytest.raises(UserError) as err:
        suite.resolve_protocol(task, "vpt+adapter")
    assert str(err.value) == (
        "suite 'compose-check', task 'colors', method 'vpt+adapter': its parts train with different "
        "epochs, lr (vpt: epochs=30, lr=0.5; adapter: epochs=3, lr=0.01); choose with --protocol "
        "epochs=VALUE lr=VALUE"
    )
    # The user's values sit above every part's layer: they settle the fields the parts disagree on.
    eff = suite.resolve_protocol(task, "vpt+adapter", {"epochs": 3, "lr": 0.5})
    assert (eff.protocol.epochs, eff.protocol.lr) == (3, 0.5)
    # the user's epochs=3 repeats Adapter's but is new to VPT's protocol: the highest layer is recorded
    assert (eff.source["epochs"], eff.source["lr"]) == ("user", "user")
    assert eff.source["batch_size"] == "suite" and "lr" not in eff.refs


def test_a_composed_plan_takes_each_parts_option_defaults_and_deviations(suite):
    assert suite.method_config_for("vpt+bitfit") == {"vpt.num_tokens": 7}
    assert [d["id"] for d in suite.deviations_for("colors", "vpt+bitfit", "tiny-vit")] == ["bitfit-only"]
    assert suite.deviations_for("colors", "vpt", "tiny-vit") == []
    (spec,), _ = plan_runs("bitfit+vpt", suite)
    assert spec.method_config["vpt"]["num_tokens"] == 7
    assert spec.protocol["lr"] == 0.5 and spec.protocol_source["lr"] == "method"
    assert spec.protocol_refs["lr"] == "vpt's reference"
    assert "bitfit-only" in {d["id"] for d in spec.deviations}


def test_bench_methods_lists_each_parts_options_under_its_name(capsys):
    assert main(["methods", "vpt+bitfit"]) == 0
    text = capsys.readouterr().out
    assert "options (--set KEY=VALUE):\n  vpt:\n    vpt.num_tokens: int = 5  in [1, 4,096]\n" in text
    assert "\n        p (KMnP/vpt NUM_TOKENS default" in text
    assert "\n  bitfit:\n    bitfit.variant: str = 'all'\n        all (every bias)" in text
    composed = get_method("vpt+bitfit")
    names = [opt.name for opt in method_options(composed)]
    assert names[:2] == ["vpt.num_tokens", "vpt.deep"] and names[-2:] == ["bitfit.variant", "bitfit.tower"]
    # every listed name is a key --set accepts, and sets that part's option
    config = composed.config_from_dict({"vpt.num_tokens": 10, "bitfit.variant": "ofa"})
    assert (config.vpt.num_tokens, config.bitfit.variant) == (10, "ofa")
    assert (
        composed.config_from_dict({opt.name: opt.default for opt in method_options(composed)})
        == composed.Config()
    )
