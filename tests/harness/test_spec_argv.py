"""A spec written as ``bench run`` arguments (harness/spec_argv.py, the leaderboard's reproduce
command) plans back to the same run ids through the CLI's own parser and planning."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from petlbench.benchmarks.suites import load_suite
from petlbench.cli.leaderboard import installed_suite
from petlbench.cli.parser import build_parser
from petlbench.cli.plan import planned
from petlbench.harness.plan import plan_runs
from petlbench.harness.spec_argv import cli_value, eps_text, run_argv

RECORDS = Path(__file__).resolve().parents[2] / "leaderboard" / "records" / "mini.jsonl"


def _replanned(spec: dict[str, Any], seeds: list[int]) -> list[str]:
    """The run ids `bench run` plans from the arguments written for ``spec`` and ``seeds``. A
    version-1 spec (the committed records: no ``version``, or 1) is compared in its own shape: the
    planner writes version 2, whose id differs by design (harness/spec.py), with every identity
    field equal."""
    base = installed_suite(spec["suite"]).base_protocol(spec["task"], spec["method"])
    _, specs = planned(build_parser().parse_args(run_argv(spec, seeds, base)))
    version = spec.get("version", 1)
    return sorted(dataclasses.replace(s, version=version).run_id for s in specs)


@pytest.mark.parametrize("method", ["adapt", "coop", "lora"])
def test_committed_records_plan_back_to_their_run_ids(method: str) -> None:
    """A prompt method and a PEFT method of the committed mini records: every seed of one cell."""
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    first = next(r for r in records if r["spec"]["method"] == method)
    cell = {k: v for k, v in first["spec"].items() if k != "seed"}
    same = [r for r in records if {k: v for k, v in r["spec"].items() if k != "seed"} == cell]
    seeds = sorted(r["spec"]["seed"] for r in same)
    assert len(seeds) > 1
    assert _replanned(first["spec"], seeds) == sorted(r["run_id"] for r in same)


CASES = {
    "options of several types and protocol overrides": dict(
        method="lora",
        method_config={"rank": 4, "alpha": 4.5, "merge": True, "targets": "q,k,v", "tower": "image"},
        protocol_overrides={
            "lr": 0.01,
            "epochs": 3,
            "schedule": "vpt_linear_warmup_cosine_epoch",
            "weight_decay": 0.0,
        },
    ),
    "a string option that reads as JSON, random init, no FGSM": dict(
        method="coop",
        method_config={"ctx_init": "1", "n_ctx": 4, "template": "a photo of a {}."},
        pretrained=False,
        measure={},
    ),
    "custom FGSM epsilons and examples": dict(
        method="adapt",
        protocol_overrides={"batch_size": 8},
        measure={"fgsm": {"epsilons": [2 / 255, 0.01], "max_examples": 100}},
    ),
    "the test score per epoch (--test-by-epoch)": dict(
        method="vpt",
        measure={"fgsm": {"epsilons": [1 / 255], "max_examples": 500}, "test_by_epoch": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_constructed_specs_plan_back_to_their_run_ids(case: str) -> None:
    options = dict(CASES[case])
    method = options.pop("method")
    specs, _ = plan_runs(
        method, load_suite("mini"), backbones=["micro-clip"], tasks=["colors-16shot"], seeds=[1, 3], **options
    )
    assert len(specs) == 2
    assert _replanned(specs[0].to_dict(), [3, 1]) == sorted(s.run_id for s in specs)


def test_the_arguments_name_only_what_differs_from_the_suite() -> None:
    specs, _ = plan_runs(
        "lora",
        load_suite("mini"),
        backbones=["micro-clip"],
        tasks=["colors-16shot"],
        seeds=[2],
        method_config={"targets": "q,v", "merge": True},
        protocol_overrides={"lr": 0.01},
        pretrained=False,
        measure={"fgsm": {"epsilons": [1 / 255, 0.01], "max_examples": 7}},
    )
    spec = specs[0].to_dict()
    argv = run_argv(spec, [2], installed_suite("mini").base_protocol("colors-16shot", "lora"))
    protocol = [argv[i + 1] for i, a in enumerate(argv) if a == "--protocol"]
    assert protocol == ["lr=0.01"]
    assert "--random-init" in argv and "--no-fgsm" not in argv
    assert argv[argv.index("--fgsm-eps") + 1] == "1/255,0.01"
    assert argv[argv.index("--fgsm-examples") + 1] == "7"
    assert "merge=true" in argv and "targets=q,v" in argv
    head = "run --method lora --suite mini --backbone micro-clip --tasks colors-16shot --seeds 2"
    assert shlex.join(argv[:11]) == head


def test_values_are_written_as_the_parser_reads_them() -> None:
    assert [cli_value(v) for v in ("q,v", "1", "true", 2, 0.5, False, None, [1, 2])] == [
        "q,v",
        '"1"',
        '"true"',
        "2",
        "0.5",
        "false",
        "null",
        "[1,2]",
    ]
    assert [eps_text(e) for e in (8 / 255, 0.01, 0.0)] == ["8/255", "0.01", "0.0"]
