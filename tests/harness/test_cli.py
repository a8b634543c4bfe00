"""The `bench` command end to end on the offline smoke suite: results, skip-on-rerun, determinism,
one-line errors with exit status 2."""

import json
import subprocess
import sys
import textwrap

import pytest

from petlbench.benchmarks.suites import load_suite
from petlbench.cli import main
from petlbench.harness.store import Store

SMOKE = load_suite("smoke")
TASK = SMOKE.tasks[0].name


def _run(tmp_path, *extra, store="s.sqlite"):
    return main(["run", "--store", str(tmp_path / store), *extra])


def test_run_stores_a_finished_result_and_a_rerun_does_no_work(tmp_path, capsys):
    args = ["--method", "linear", "--suite", "smoke", "--backbone", "tiny-vit", "--tasks", TASK]
    assert _run(tmp_path, *args, "--protocol", "epochs=2") == 0
    with Store(tmp_path / "s.sqlite") as store:
        (rec,) = store.records()
        assert rec.status == "finished" and rec.spec.method == "linear" and rec.spec.task == TASK
        assert rec.provenance["packages"]["torch"]
        assert rec.result["parameters"]["method"] == 0 and rec.result["parameters"]["head"] > 0
        train, evaluation = rec.result["train"], rec.result["eval"]
        assert train["epochs"] == 2 and train["seconds_per_epoch"] == train["train_time_s"] / 2
        assert train["dtype"] == evaluation["dtype"] == "float32"
        assert train["memory"]["peak_mib"] > 0 and evaluation["images_per_second"] > 0
        first_finished = rec.finished_at
    capsys.readouterr()
    assert _run(tmp_path, *args, "--protocol", "epochs=2", "--json") == 0
    line = json.loads(capsys.readouterr().out)
    assert line["skipped"] is True
    with Store(tmp_path / "s.sqlite") as store:
        (rec,) = store.records()
        assert rec.finished_at == first_finished and rec.attempts == 1


def test_same_seed_same_numbers(tmp_path):
    args = [
        "--method",
        "vpt",
        "--suite",
        "smoke",
        "--backbone",
        "tiny-clip",
        "--tasks",
        TASK,
        "--protocol",
        "epochs=2",
        "--set",
        "dropout=0.1",
        "--set",
        "deep=true",
    ]
    assert _run(tmp_path, *args, store="a.sqlite") == 0
    assert _run(tmp_path, *args, store="b.sqlite") == 0
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        (ra,), (rb,) = a.records(), b.records()
    assert ra.run_id == rb.run_id
    assert ra.metrics == rb.metrics
    assert [h["loss"] for h in ra.result["history"]] == [h["loss"] for h in rb.result["history"]]


def _bench(*args, env_extra=None, cwd=None):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "petlbench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--method", "nope", "--suite", "smoke"], "unknown method 'nope'"),
        (["run", "--method", "vpt", "--suite", "nope"], "nope"),
        (["run", "--method", "vpt", "--suite", "smoke", "--backbone", "nope"], "unknown backbone 'nope'"),
        (
            ["run", "--method", "zeroshot", "--suite", "smoke", "--backbone", "tiny-vit"],
            "needs a clip backbone",
        ),
        (["run", "--method", "vpt", "--suite", "smoke", "--data-root", "/does/not/exist"], "not a folder"),
        (["run", "--method", "vpt", "--suite", "smoke", "--set", "num_tokens=lots"], "num_tokens"),
        (["run", "--method", "vpt"], "--suite"),
        (["plan", "--method", "vpt", "--suite", "smoke", "--jobs", "2"], "unrecognized arguments: --jobs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = (
        _bench(*args, "--store", str(tmp_path / "s.sqlite"))
        if args[0] == "run" and "--suite" in args
        else _bench(*args)
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_malformed_suite_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: '1'\ntasks: [ {name: x\n")
    proc = _bench("run", "--method", "vpt", "--suite", str(bad), "--store", str(tmp_path / "s.sqlite"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.yaml" in proc.stderr


PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

from petlbench.backbones.slots import InputTokens
from petlbench.methods.base import Method


@dataclass
class OneTokenConfig:
    scale: float = 0.02


class OneToken(Method):
    """A throwaway plugin: one shallow prompt token."""

    name = "onetoken"
    family = "prompt"
    paper = "test plugin"
    Config = OneTokenConfig

    def attach(self, backbone):
        tower = backbone.tower("image")
        self.token = nn.Parameter(torch.randn(1, tower.width) * self.config.scale)
        tower.slots[0].input_tokens = InputTokens(self.token, mode="keep")
'''


def test_plugin_distribution_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    (site / "onetoken_plugin").mkdir(parents=True)
    (site / "onetoken_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "onetoken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onetoken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[petlbench.methods]\nonetoken = onetoken_plugin:OneToken\n")
    env = {"PYTHONPATH": str(site), "COLUMNS": "200"}
    listing = _bench("methods", env_extra=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "onetoken" in line)
    assert "plugin" in row and "onetoken-plugin" in row
    run = _bench(
        "run",
        "--method",
        "onetoken",
        "--suite",
        "smoke",
        "--backbone",
        "tiny-vit",
        "--tasks",
        TASK,
        "--protocol",
        "epochs=1",
        "--store",
        str(tmp_path / "s.sqlite"),
        env_extra=env,
    )
    assert run.returncode == 0, run.stderr
    with Store(tmp_path / "s.sqlite") as store:
        (rec,) = store.records()
    assert rec.status == "finished" and rec.spec.method == "onetoken"
    assert rec.result["parameters"]["method"] == 64  # one token of width 64 on tiny-vit


def test_show_plots_adapt_context_lengths_and_refuses_methods_without_a_figure(tmp_path, capsys):
    """`bench show RUN --plot` draws the paper's Figure 3 from the stored masks of an Adapt run."""
    adapt = ["--suite", "smoke", "--backbone", "tiny-clip", "--tasks", TASK, "--protocol", "epochs=1"]
    assert _run(tmp_path, "--method", "adapt", *adapt, "--set", "accumulation_steps=2") == 0
    assert _run(tmp_path, "--method", "zeroshot", *adapt[:6]) == 0
    with Store(tmp_path / "s.sqlite") as store:
        runs = {r.spec.method: r.run_id for r in store.records()}
    png = tmp_path / "fig" / "adapt.png"
    capsys.readouterr()
    assert main(["show", runs["adapt"][:10], "--store", str(tmp_path / "s.sqlite"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in capsys.readouterr().err
    code = main(["show", runs["zeroshot"][:10], "--store", str(tmp_path / "s.sqlite"), "--plot", str(png)])
    assert code == 2 and "has no figure" in capsys.readouterr().err


def test_every_verb_of_the_parser_has_its_module_and_function():
    """`main` finds each verb's ``cmd_<verb>`` in the module VERBS names, and VERBS names no verb the
    parser lacks."""
    import importlib

    from petlbench.cli import VERBS
    from petlbench.cli.parser import build_parser

    (sub,) = build_parser()._subparsers._group_actions  # the one verb argument
    assert sorted(sub.choices) == sorted(VERBS)
    for verb, module in VERBS.items():
        assert callable(getattr(importlib.import_module(f"petlbench.cli.{module}"), f"cmd_{verb}"))
