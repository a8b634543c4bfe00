"""Planning: suite x method x backbones x tasks x seeds -> RunSpecs, with the one pairing check and
the protocol layers (DESIGN section 6.1).

Every spec carries, beside the values it runs with, where each protocol value came from (suite,
task, method, search or user), the reference each suite/method value reproduces, and the named
deviations of the run from the reference protocol. ``bench plan`` prints exactly what ``bench run``
would execute, without training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from petlbench.backbones.registry import BackboneEntry, backbone_entries
from petlbench.benchmarks.datasets import FORMATS
from petlbench.benchmarks.suites import Suite, TaskSpec
from petlbench.errors import UserError
from petlbench.methods.registry import get_method

from .robustness import check_fgsm_options
from .spec import RunSpec

MAX_SEED = 2**32 - 1  # numpy's seed range; torch and Python take it whole, the store's INTEGER holds it

KIND_TOWERS = {"clip": ("image", "text"), "ofa": ("encoder", "decoder")}  # other kinds: ("image",)


def towers_of(entry: BackboneEntry) -> tuple[str, ...]:
    """The towers a backbone entry declares (or those of its kind)."""
    return tuple(entry.towers) if entry.towers else KIND_TOWERS.get(entry.kind, ("image",))


def check_seed(seed: object, what: str = "seed") -> int:
    """A seed is an integer in [0, 2**32 - 1] (numpy's range), else one line naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def plan_runs(
    method: str,
    suite: Suite,
    *,
    backbones: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    method_config: dict[str, Any] | None = None,
    protocol_overrides: dict[str, Any] | None = None,
    pretrained: bool = True,
    measure: dict[str, Any] | None = None,
    search_point: dict[str, Any] | None = None,
    extra_deviations: Sequence[dict[str, str]] = (),
) -> tuple[list[RunSpec], list[str]]:
    """Expand method x backbones x tasks x seeds into specs. Returns (specs, notes on skipped pairings).

    Backbones the user names must fit the method (a clear error otherwise); of the suite's default
    backbones, the ones that do not fit are skipped with a note. ``search_point`` holds the protocol
    values a hyperparameter search chose (layer ``search``); ``method_config`` the user's options,
    over the suite's ``method_config`` for the method, over the method's per-kind defaults.
    """
    method_cls = get_method(method)
    method_cls(method_config or {})  # a bad option fails before anything is planned
    for seed in seeds or suite.seeds:
        check_seed(seed)
    check_fgsm_options((measure or {}).get("fgsm"))
    entries = backbone_entries()
    explicit = backbones is not None
    names = list(backbones) if backbones is not None else list(suite.backbones)
    notes: list[str] = []
    chosen: list[str] = []
    for name in names:
        if name not in entries:
            raise UserError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(entries))}")
        kind = entries[name].kind
        try:
            method_cls.check_compatible(name, kind, towers_of(entries[name]))
        except UserError as err:
            if explicit:
                raise
            notes.append(f"skipped {name}: {err}")
            continue
        chosen.append(name)
    if not chosen:
        raise UserError(
            f"method {method!r} fits none of the backbones {', '.join(names)}: " + "; ".join(notes)
        )
    task_specs = [suite.task(t) for t in tasks] if tasks else list(suite.tasks)
    seed_list = list(seeds) if seeds else list(suite.seeds)
    user_protocol = dict(protocol_overrides or {})
    specs = []
    for backbone in chosen:
        # Options whose default depends on the backbone kind (the towers of an encoder-decoder), then
        # the suite's option defaults for the method, then the user's: the spec records what runs.
        given = {
            **method_cls.kind_defaults(entries[backbone].kind),
            **suite.method_config_for(method),
            **(method_config or {}),
        }
        try:
            config = method_cls(given).config_dict()
        except UserError as err:
            raise UserError(f"suite {suite.name!r}, method {method!r}: {err}") from None
        for task in task_specs:
            mismatch = _generative_mismatch(backbone, entries[backbone].generative, task)
            if mismatch:
                if explicit:
                    raise UserError(mismatch)
                notes.append(f"skipped {backbone} on {task.name}: {mismatch}")
                continue
            effective = suite.resolve_protocol(task, method, user_protocol, search_point)
            proto = effective.protocol.to_dict()
            deviations = run_deviations(
                suite, task, method, backbone, effective.source, proto, pretrained, method_cls.deviations
            )
            deviations += [dict(d) for d in extra_deviations]
            if suite.search is not None and search_point is None:
                deviations.append(
                    {
                        "id": "no-search",
                        "what": "fixed protocol values: the suite's reference search space was not searched "
                        "(bench sweep searches it)",
                    }
                )
            for seed in seed_list:
                specs.append(
                    RunSpec(
                        method=method,
                        method_config=config,
                        backbone=backbone,
                        suite=suite.name,
                        suite_version=str(suite.version),
                        task=task.name,
                        protocol=proto,
                        seed=int(seed),
                        measure=dict(measure or {}),
                        pretrained=bool(pretrained),
                        protocol_source=dict(effective.source),
                        protocol_refs=dict(effective.refs),
                        deviations=[dict(d) for d in deviations],
                    )
                )
    if not specs:
        raise UserError(f"nothing to run for method {method!r} on suite {suite.name!r}: " + "; ".join(notes))
    return specs, notes


def run_deviations(
    suite: Suite,
    task: TaskSpec,
    method: str,
    backbone: str,
    source: dict[str, str],
    protocol: dict[str, Any],
    pretrained: bool,
    method_deviations: Sequence[dict[str, str]] = (),
) -> list[dict[str, str]]:
    """The named ways a run departs from its reference protocol: the suite's declared deviations
    that apply to it, the method implementation's own, every protocol value the user changed, and a
    random-weight backbone. Empty when the run is the reference protocol."""
    out = suite.deviations_for(task.name, method, backbone)
    out += [dict(d) for d in method_deviations]
    for key, layer in sorted(source.items()):
        if key == "shots" and protocol.get("shots") in suite.epochs_by_shots:
            continue  # a shot count the reference runs too (CoOp's 1/2/4/8/16): a variant, not a deviation
        if layer == "user":
            out.append({"id": f"user-{key}", "what": f"{key}={protocol[key]!r} set with --protocol"})
    if not pretrained:
        out.append({"id": "random-init", "what": "the backbone has random weights (--random-init)"})
    return out


def _generative_mismatch(backbone: str, backbone_generates: bool, task: TaskSpec) -> str | None:
    """Why ``backbone`` cannot run ``task`` (generative tasks need a generative encoder-decoder, the
    entry's declared ``generative``), or None."""
    generative = FORMATS.get(task.loader).generative
    if generative and not backbone_generates:
        return f"task {task.name!r} is generative (image + text -> text) and needs an ofa-* backbone"
    if backbone_generates and not generative:
        return f"{backbone!r} is generative; task {task.name!r} is classification"
    return None


def describe_plan(spec: RunSpec, suite: Suite) -> dict[str, Any]:
    """One line of ``bench plan --json``: what the run trains and with which protocol, where each
    value came from, the checkpoint and normalisation, the suite's search space, the deviations."""
    entry = backbone_entries()[spec.backbone]
    protocol = dict(spec.protocol)
    pretrained_tag = entry.pretrained if spec.pretrained else None
    line: dict[str, Any] = {
        "run_id": spec.run_id,
        "method": spec.method,
        "method_config": spec.method_config,
        "backbone": spec.backbone,
        "pretrained": pretrained_tag,
        "normalization": entry.normalization(),
        "suite": spec.suite,
        "suite_version": spec.suite_version,
        "task": spec.task,
        "seed": spec.seed,
        "stage": spec.stage,
        "protocol": protocol,
        "protocol_source": spec.protocol_source,
        "protocol_refs": spec.protocol_refs,
        "search_space": suite.search.describe(spec.method) if suite.search is not None else None,
        "deviations": spec.deviations,
    }
    return line
