"""The ``bench`` argument parser and its typed value converters (comma lists, seeds, KEY=VALUE
pairs, FGSM epsilons). Every malformed value is a one-line UserError, raised while parsing (``type=``)
or, for the repeated KEY=VALUE options, when the verb reads them (:func:`assignments`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from petlbench.errors import UserError

DEFAULT_STORE = Path("runs") / "petlbench.sqlite"
DEFAULT_LEADERBOARD = Path("leaderboard")
DEFAULT_RECORDS = DEFAULT_LEADERBOARD / "records"
DEFAULT_CACHE = DEFAULT_STORE.parent / "image-cache"  # beside the default store (harness/image_cache.py)
FGSM_EPS = "1/255,2/255,4/255,8/255"  # the default --fgsm-eps of run, plan, sweep and robust
TEST_BY_EPOCH_HELP = (
    "score the test split after every epoch, for the leaderboard's selection-inflation column (never "
    "read by training or selection; part of the run's identity)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _cache_options(p: argparse.ArgumentParser) -> None:
    """Where decoded images are kept between runs (``bench run`` and ``bench sweep``)."""
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="decoded-image cache shared by runs and processes (default: STORE's folder/image-cache)",
    )
    p.add_argument(
        "--no-image-cache", action="store_true", help="decode images in every run, keep nothing on disk"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="petlbench: train and compare parameter-efficient tuning methods")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for verb, text in (
        ("run", "train and evaluate a method on a suite"),
        (
            "plan",
            "print every run `bench run` would do (effective protocol, sources, deviations), no training",
        ),
    ):
        r = sub.add_parser(verb, help=text)
        r.add_argument("--method", required=True, help="a registered method (see `bench methods`)")
        r.add_argument(
            "--suite", required=True, help="a suite name (see `bench suites`) or a path to a suite YAML"
        )
        r.add_argument(
            "--backbone", type=csv_list, help="backbone(s), comma-separated (default: the suite's backbones)"
        )
        r.add_argument("--tasks", type=csv_list, help="a subset of the suite's tasks, comma-separated")
        r.add_argument("--seeds", type=seed_list, help="seeds, comma-separated (default: the suite's seeds)")
        r.add_argument("--data-root", type=Path, help="folder holding the suite's datasets")
        r.add_argument(
            "--store", type=Path, default=DEFAULT_STORE, help=f"results database (default {DEFAULT_STORE})"
        )
        r.add_argument(
            "--set",
            dest="method_options",
            action="append",
            metavar="KEY=VALUE",
            help="a method option, e.g. --set num_tokens=10 --set deep=true",
        )
        r.add_argument(
            "--protocol",
            dest="protocol_options",
            action="append",
            metavar="KEY=VALUE",
            help="override the suite protocol, e.g. --protocol epochs=20 --protocol lr=0.05",
        )
        r.add_argument(
            "--random-init", action="store_true", help="random backbone weights (architecture only)"
        )
        r.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
        if verb == "run":  # `bench plan` runs nothing
            r.add_argument(
                "--jobs",
                default="auto",
                help="runs at a time, each in a worker process with one thread (default auto: one per "
                "CPU core on CPU, 1 on CUDA; 1 runs in this process)",
            )
        r.add_argument(
            "--json", action="store_true", help="print the results as JSON lines instead of a table"
        )
        if verb == "run":
            _cache_options(r)
        r.add_argument("--no-fgsm", action="store_true", help="skip the FGSM robustness measurement")
        r.add_argument("--test-by-epoch", action="store_true", help=TEST_BY_EPOCH_HELP)
        eps_help = "FGSM epsilons in pixel space, comma-separated; fractions allowed (default %(default)s)"
        r.add_argument("--fgsm-eps", type=epsilons, default=FGSM_EPS, help=eps_help)
        r.add_argument(
            "--fgsm-examples",
            type=int,
            default=500,
            help="attack at most this many test examples (default %(default)s)",
        )

    me = sub.add_parser("methods", help="list registered methods; with NAME, a method's options")
    me.add_argument(
        "name", nargs="?", help="a method: its paper, needs, options with defaults, ranges and help"
    )
    for name, text in (
        ("suites", "available suites"),
        ("backbones", "registered backbones"),
    ):
        sub.add_parser(name, help=f"list {text}")

    s = sub.add_parser("show", help="summarise one stored run (--json: the raw record)")
    s.add_argument("run", help="a run id or a unique prefix of one")
    s.add_argument("--store", type=Path, default=DEFAULT_STORE)
    s.add_argument("--json", action="store_true", help="print the whole stored record as JSON")
    s.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also draw the method's figure of the run (Adapt: context lengths per layer, paper Fig. 3)",
    )

    rb = sub.add_parser("robust", help="re-measure FGSM robustness of a stored run")
    rb.add_argument("run", help="a run id or a unique prefix of one")
    rb.add_argument("--store", type=Path, default=DEFAULT_STORE)
    rb.add_argument("--suite", help="suite name or YAML path, if the run's suite is not a built-in")
    rb.add_argument("--data-root", type=Path)
    rb.add_argument("--fgsm-eps", type=epsilons, default=FGSM_EPS)
    rb.add_argument("--fgsm-examples", type=int, default=None)
    rb.add_argument("--device", default="auto")

    pf = sub.add_parser(
        "perf",
        help="time a method's train step against the plain backbone's, interleaved (random weights)",
        description="Speed and memory of a method's training step on a backbone's real architecture "
        "(random weights): absolute figures labelled with the hardware, and the ratio to the plain "
        "backbone's step (frozen backbone + linear head) timed step by step in the same process.",
    )
    pf.add_argument("--method", help="a registered method (see `bench methods`)")
    pf.add_argument("--backbone", help="e.g. vit-b16 or clip-vit-b16 (real architecture)")
    pf.add_argument(
        "--for-records",
        type=Path,
        metavar="FOLDER",
        help="instead: measure every (method, options, backbone) of these records (e.g. leaderboard/records) "
        "and write one JSON line each to --out (the leaderboard's speed column)",
    )
    pf.add_argument("--out", type=Path, help="with --for-records: the JSON-lines file to write")
    pf.add_argument("--set", dest="method_options", action="append", metavar="KEY=VALUE", help="an option")
    pf.add_argument("--batch-size", type=int, help="images per step (default: 8 on CPU, 32 on GPU)")
    pf.add_argument("--steps", type=int, help="timed steps of each (default: 5 on CPU, 10 on GPU)")
    pf.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    pf.add_argument("--json", action="store_true", help="print one JSON line")
    pf.add_argument(
        "--data",
        action="store_true",
        help="instead: time the image cache on a generated replica of --images JPEGs (decode, then read)",
    )
    pf.add_argument("--images", type=int, default=2000, help="with --data: JPEGs in the replica (2000)")
    pf.add_argument("--workers", type=int, help="with --data: decode processes (default: the cores)")
    pf.add_argument("--dir", type=Path, help="with --data: folder for the replica and cache (default: temp)")

    pt = sub.add_parser("pretrain", help="pretrain micro-clip / micro-vit on the synthetic world (CPU)")
    pt.add_argument("model", help="micro-clip or micro-vit")
    pt.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the shipped run's)")
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", type=Path, required=True, help="folder for <model>.safetensors and <model>.json")

    sw = sub.add_parser("sweep", help="methods x suite x seeds, optional grid search, local or on Ray")
    sw.add_argument("--methods", required=True, type=csv_list, help="methods, comma-separated")
    sw.add_argument("--suite", required=True)
    sw.add_argument("--backbone", type=csv_list, help="backbone(s), comma-separated (default: the suite's)")
    sw.add_argument("--tasks", type=csv_list, help="a subset of the suite's tasks, comma-separated")
    sw.add_argument("--seeds", type=seed_list, help="final seeds, comma-separated (default: the suite's)")
    sw.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a searched hyperparameter (protocol field or method option), e.g. --grid lr=0.1,0.01",
    )
    sw.add_argument("--search-seed", type=int, help="seed of the search trials (default: the first seed)")
    sw.add_argument(
        "--no-search",
        action="store_true",
        help="run the suite's fixed protocol, not its reference search space (recorded as a deviation)",
    )
    sw.add_argument("--set", dest="method_options", action="append", metavar="KEY=VALUE")
    sw.add_argument("--protocol", dest="protocol_options", action="append", metavar="KEY=VALUE")
    sw.add_argument("--executor", choices=("local", "ray"), default="local")
    sw.add_argument(
        "--jobs",
        default="1",
        help="local executor: runs at a time, each in a worker process with one thread (auto: one per core)",
    )
    sw.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one)")
    sw.add_argument("--cpus-per-run", type=float, default=1.0)
    sw.add_argument("--gpus-per-run", type=float, default=None, help="default: 1 on CUDA, else 0")
    sw.add_argument("--max-retries", type=int, default=3, help="retries of a run whose worker died")
    sw.add_argument("--store", type=Path, default=DEFAULT_STORE)
    sw.add_argument("--data-root", type=Path)
    sw.add_argument("--device", default="auto")
    sw.add_argument("--random-init", action="store_true")
    sw.add_argument("--no-fgsm", action="store_true")
    sw.add_argument("--test-by-epoch", action="store_true", help=TEST_BY_EPOCH_HELP)
    sw.add_argument("--fgsm-eps", type=epsilons, default=FGSM_EPS)
    sw.add_argument("--fgsm-examples", type=int, default=500)
    sw.add_argument("--json", action="store_true", help="print one JSON line per finished run")
    _cache_options(sw)

    da = sub.add_parser("data", help="check a suite's datasets on disk, or say how to get them")
    dsub = da.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dc = dsub.add_parser("check", help="layout, split files, every image present and decodable, hashes")
    dc.add_argument("--suite", required=True, help="a suite name or a path to a suite YAML")
    dc.add_argument("--data-root", type=Path, required=True, help="folder holding the suite's datasets")
    dc.add_argument("--tasks", type=csv_list, help="a subset of the suite's tasks, comma-separated")
    dc.add_argument(
        "--manifest",
        type=Path,
        help="file-hash manifest to write / check (default: DATA_ROOT/petlbench-manifest.json)",
    )
    dc.add_argument("--no-manifest", action="store_true", help="do not hash files")
    dc.add_argument("--no-decode", action="store_true", help="only check that files exist (fast)")
    dc.add_argument("--json", action="store_true", help="print the result as JSON")
    dc.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"decoded-image cache whose state to report (default {DEFAULT_CACHE})",
    )
    dca = dsub.add_parser(
        "cache", help="decode every task's evaluation split into the image cache once, ahead of a sweep"
    )
    dca.add_argument("--suite", required=True)
    dca.add_argument("--data-root", type=Path, required=True)
    dca.add_argument("--tasks", type=csv_list, help="a subset of the suite's tasks, comma-separated")
    dca.add_argument(
        "--backbone", type=csv_list, help="backbone(s) whose input size to decode for (default: the suite's)"
    )
    dca.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    dca.add_argument(
        "--workers", type=int, help="decode processes, one thread each (default: this machine's cores)"
    )
    dp = dsub.add_parser("prepare", help="say what is missing and where to get it; --download fetches it")
    dp.add_argument("--suite", required=True)
    dp.add_argument("--data-root", type=Path, required=True)
    dp.add_argument("--tasks", type=csv_list, help="a subset of the suite's tasks, comma-separated")
    dp.add_argument(
        "--download",
        action="store_true",
        help="download what public servers hold (original image archives, Hub datasets) into the layout",
    )

    lr = sub.add_parser("runs", help="list stored runs")
    lr.add_argument("--store", type=Path, default=DEFAULT_STORE)
    lr.add_argument("--method")
    lr.add_argument("--suite")

    ex = sub.add_parser("export", help="export finished runs as JSON lines (the leaderboard's records)")
    ex.add_argument("--store", type=Path, default=DEFAULT_STORE)
    ex.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RECORDS,
        help=f"records folder, one <suite>.jsonl per suite (default {DEFAULT_RECORDS})",
    )
    ex.add_argument(
        "--replace",
        action="store_true",
        help="make --out the store's runs: same run ids take the store's version, others are dropped "
        "(default: add new run ids, keep every record already there byte for byte)",
    )
    ex.add_argument("--include-failed", action="store_true", help="also export failed/unfinished runs")

    lb = sub.add_parser("leaderboard", help="build or check the leaderboard from exported records")
    lb_sub = lb.add_subparsers(dest="leaderboard_command", required=True, parser_class=_Parser)
    for name, text in (
        ("build", "build leaderboard.json, .md, .csv, index.html and the Pareto plot from the records"),
        ("check", "rebuild from the records and fail (exit 1) if the committed files differ"),
    ):
        lc = lb_sub.add_parser(name, help=text)
        lc.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help=f"default {DEFAULT_RECORDS}")
        lc.add_argument(
            "--out" if name == "build" else "--dir",
            dest="out",
            type=Path,
            default=DEFAULT_LEADERBOARD,
            help=f"{'output' if name == 'build' else 'committed'} folder (default {DEFAULT_LEADERBOARD})",
        )
    from petlbench.leaderboard.render import PLOT_COLUMNS

    lp = lb_sub.add_parser("plot", help="plot the built leaderboard's entries by any two columns")
    for flag, default in (("--x", "params"), ("--y", "accuracy")):
        lp.add_argument(flag, choices=list(PLOT_COLUMNS), default=default, help=f"default {default}")
    lp.add_argument(
        "--leaderboard",
        type=Path,
        default=DEFAULT_LEADERBOARD / "leaderboard.json",
        help=f"the built leaderboard (default {DEFAULT_LEADERBOARD / 'leaderboard.json'})",
    )
    lp.add_argument("--out", type=Path, help="an .svg or .png file (default <y>-vs-<x>.svg here)")
    return p


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def seed_list(value: str | None) -> list[int] | None:
    items = csv_list(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UserError(f"--seeds takes integers separated by commas, not {value!r}") from None


def assignments(values: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as JSON when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes key=value, not {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def epsilons(value: str) -> list[float]:
    """Parse '1/255,0.01' into floats."""
    out = []
    for item in csv_list(value) or []:
        num, sep, den = item.partition("/")
        try:
            out.append(float(num) / float(den) if sep else float(num))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fgsm-eps takes numbers or fractions like 8/255, not {item!r}") from None
        if out[-1] < 0:
            raise UserError(f"--fgsm-eps must be non-negative, not {item!r}")
    return out
