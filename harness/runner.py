"""Execute runs: one RunSpec -> a trained, evaluated model -> one finished row in the store.

A finished spec is never run twice (its hash is its identity). A run that dies leaves its row as
``running`` and a per-epoch checkpoint next to the store; executing the spec again resumes there.
Every run goes through one skeleton (:meth:`Runner.execute`); what depends on the task's output
(a class label, or text from an encoder-decoder) is its objective (``harness/objectives/``).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from petlbench.benchmarks.data import TaskData
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.suites import Suite, TaskSpec
from petlbench.errors import UserError

from .checkpoint import load_artifact, save_artifact
from .image_cache import ImageCache, default_cache_dir
from .memory import PeakMemory
from .objectives import Objective, RunContext, count_parameters, objective_for
from .provenance import collect_provenance
from .robustness import DEFAULT_EPSILONS, check_fgsm_options, merge_fgsm
from .spec import RunSpec
from .stages import StageRun, train_stages
from .store import Store
from .trainer import dtype_name

if TYPE_CHECKING:  # the OFA task data type, named for typing only
    from petlbench.benchmarks.datasets.ofa_loaders import Seq2SeqTaskData


@dataclass
class RunResult:
    """One spec's outcome, whoever computed it: the numbers, and how they came about (computed here
    with ``wall_time_s`` and ``provenance``, read back finished from the store (``skipped``; with
    ``waited`` when another process ran it meanwhile), or failed with ``error``)."""

    spec: RunSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    waited: bool = False
    error: str | None = None
    wall_time_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def runtime_deviations(result: dict[str, Any]) -> list[dict[str, str]]:
    """Deviations only the finished run knows: a method that could not do what its reference does
    on this run (Adapt's pruning stopping above its target), caption metrics computed by the
    pure-Python fallback instead of coco-caption (no Java)."""
    described = result.get("method") or {}
    out = []
    if described.get("reached_target") is False:
        what = described.get("warning") or "pruning stopped above its target"
        out.append({"id": "pruning-target-not-reached", "what": str(what)})
    out += list(((result.get("eval") or {}).get("caption_metrics") or {}).get("deviations") or [])
    return out


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else,
    or a device this machine does not have, is one line before anything is built."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device!r} is not a device here; use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device} was asked for but no CUDA device is available; use --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0...)"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    return resolved


def epoch_candidates(history: list[dict[str, Any]], test_key: str) -> dict[str, Any] | None:
    """The record's ``selection`` block of a ``--test-by-epoch`` run: the test score after every
    epoch (every training stage's), and the one the protocol reports (the model after the last
    epoch). The leaderboard's selection inflation is the best of them minus the reported one: what
    choosing the epoch on the test split would have claimed. None for a run with no epochs."""
    scores = [float(h[test_key]) for h in history if test_key in h]
    if not scores:
        return None
    return {
        "candidates": "epochs",
        "metric": test_key,
        "test_by_candidate": scores,
        "selected_test": scores[-1],
        "note": "test scored after every epoch for this column only; never read by training or selection",
    }


class Runner:
    def __init__(
        self,
        store: Store | None,
        suite: Suite,
        *,
        data_root: Path | None = None,
        device: str = "auto",
        checkpoint_dir: Path | None = None,
        image_cache: Path | str | None = "default",
    ) -> None:
        self.store = store
        self.suite = suite
        self.data_root = data_root
        self.device = resolve_device(device)
        self.checkpoint_dir = checkpoint_dir
        # Decoded images on disk, shared by runs and processes (harness/image_cache.py): "default" is
        # <store folder>/image-cache (beside the checkpoints; a worker built from checkpoint_dir finds
        # the same one), None turns it off. Decode workers: this process's torch threads (1 in a
        # --jobs worker, so N workers never start N x N decoders).
        if image_cache == "default":
            image_cache = default_cache_dir(checkpoint_dir) if checkpoint_dir is not None else None
        threads = torch.get_num_threads()
        self.image_cache = ImageCache(Path(image_cache), workers=threads) if image_cache is not None else None
        self.on_wait: Callable[[RunSpec], None] | None = None  # told once when a spec is busy elsewhere
        self.poll_s = 2.0
        self._task_cache: dict[str, TaskData | Seq2SeqTaskData] = {}

    def _task_data(self, task: TaskSpec, decode_size: int | None = None) -> TaskData | Seq2SeqTaskData:
        """The task's data; with ``decode_size`` decoded as a square of that size (shorter side to it,
        centre crop) for an augmentation that crops from a larger image (VPT FGVC's Resize(256) +
        RandomCrop(224))."""
        key = f"{task.name}@{decode_size}" if decode_size else task.name
        if key not in self._task_cache:
            spec = task
            if decode_size:
                spec = dataclasses.replace(
                    task, args={**task.args, "image_size": decode_size, "resize": "center_crop"}
                )
            try:
                self._task_cache[key] = load_task(spec, self.data_root)
            except UserError as err:
                raise UserError(f"suite {self.suite.name!r}, task {task.name!r}: {err}") from None
        return self._task_cache[key]

    def run(self, spec: RunSpec, on_step: Callable[[int, int, float], None] | None = None) -> RunResult:
        """Run one spec unless the store already holds it finished; the store sees running ->
        finished (or failed). A spec another live process is running is waited for, not trained
        twice (``skipped``, with ``waited``); a dead process's claim is taken over and the run
        resumes from its checkpoint."""
        if self.store is None:
            raise RuntimeError("Runner.run needs a store; a worker calls Runner.compute")
        waited = False
        while True:
            record = self.store.get(spec.run_id)
            if record is not None and record.status == "finished":
                self.drop_checkpoints(spec.run_id)  # a run killed between commit and clean-up
                return RunResult(spec, record.metrics, record.result, skipped=True, waited=waited)
            state = self.store.claim(spec, self.provenance(spec))
            if state == "claimed":
                break
            if state == "busy":
                if not waited and self.on_wait is not None:
                    self.on_wait(spec)
                waited = True
                time.sleep(self.poll_s)
        try:
            computed = self.compute(spec, on_step)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            self.store.mark_failed(spec.run_id, f"{exc.__class__.__name__}: {exc}")
            raise
        self.finish(computed)
        return computed

    def drop_checkpoints(self, run_id: str) -> None:
        if self.checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir / run_id, ignore_errors=True)

    def provenance(self, spec: RunSpec) -> dict[str, Any]:
        data = self._task_data(self.suite.task(spec.task))
        return collect_provenance(
            {
                "suite_version": self.suite.version,
                "suite_sha256": self.suite.sha256,
                "data": data.meta,
                "device": str(self.device),
            }
        )

    def compute(self, spec: RunSpec, on_step: Callable[[int, int, float], None] | None = None) -> RunResult:
        """Train and evaluate one spec without touching the store (what a remote worker runs)."""
        task = self.suite.task(spec.task)
        data = self._task_data(task)
        provenance = self.provenance(spec)
        started = time.perf_counter()
        metrics, result = self.execute(spec, task, data, on_step)
        result["deviations"] = list(spec.deviations) + runtime_deviations(result)
        result["protocol_source"] = dict(spec.protocol_source)
        result["protocol_refs"] = dict(spec.protocol_refs)
        return RunResult(
            spec, metrics, result, wall_time_s=time.perf_counter() - started, provenance=provenance
        )

    def finish(self, computed: RunResult) -> None:
        """Record a computed run as finished and drop its checkpoints."""
        assert self.store is not None and computed.wall_time_s is not None
        self.store.mark_finished(
            computed.spec.run_id, computed.metrics, computed.result, computed.wall_time_s, computed.provenance
        )
        self.drop_checkpoints(computed.spec.run_id)

    def context(self) -> RunContext:
        return RunContext(self.device, self.data_root, self.image_cache, self._task_data, self.artifact_path)

    def objective(self, spec: RunSpec, task: TaskSpec, data: Any) -> Objective:
        """The spec's objective, its options checked and its task model built."""
        objective = objective_for(spec, data)(self.context(), spec, task, data)
        objective.check()
        objective.build()
        return objective

    def execute(
        self,
        spec: RunSpec,
        task: TaskSpec,
        data: Any,
        on_step: Callable[[int, int, float], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The one run skeleton: build, split, train the method's stages (selection metric after
        every epoch), score selection and evaluation splits, count, attack, save. Returns (metrics,
        result). A search trial (stage "search") is scored on the selection split and never reads
        the evaluation split: hyperparameters are chosen without seeing test data."""
        objective = self.objective(spec, task, data)
        splits = objective.splits()
        method, device = objective.method, self.device
        selection_key = f"selection_{objective.metric_name}"
        test_key = f"test_{objective.metric_name}"
        observe = None
        if spec.measure.get("test_by_epoch") and not objective.searching:

            def observe() -> dict[str, float]:
                return {test_key: objective.score(splits.final)}

        result: dict[str, Any] = {}
        # A training-free method that builds its head from the training split (Tip-Adapter's cache)
        # runs its stages too; they hold no trainable stage, so no optimiser is ever built.
        if type(method).trains or any(stage.prepare is not None for stage in method.stages()):
            run = StageRun(
                spec.run_id,
                spec.seed,
                objective.protocol,
                device,
                self.checkpoint_dir / spec.run_id if self.checkpoint_dir is not None else None,
                on_step,
            )
            with PeakMemory(device) as train_peak:
                trained = train_stages(
                    run,
                    objective.model,
                    method,
                    objective.head,
                    lambda trainer, evaluate: objective.fit(trainer, splits.train, evaluate),
                    lambda: {selection_key: objective.score(splits.selection)},
                    train_examples=len(splits.train),
                    batches=objective.batches(splits.train),
                    selection_batches=objective.selection_batches(splits.selection),
                    feature_cache=objective.feature_cache,
                    observe=observe,
                )
            trained["train"].update(
                dtype=dtype_name(device), memory=train_peak.result(), **objective.train_info()
            )
            result.update(trained)
            if observe is not None:
                result["selection"] = epoch_candidates(trained["history"], test_key)
        selection_score = objective.score(splits.selection)
        objective.before_evaluation()
        with PeakMemory(device) as eval_peak:
            t0 = time.perf_counter()
            evaluation = objective.evaluate(splits.final)
            eval_time = time.perf_counter() - t0
        metrics = {**evaluation.metrics, selection_key: selection_score}
        result["parameters"] = count_parameters(method, objective.head, objective.backbone)
        result["eval"] = {
            **evaluation.info,
            "examples": len(splits.final),
            "images_per_second": len(splits.final) / max(1e-9, eval_time),
            "dtype": dtype_name(device),
            "memory": eval_peak.result(),
        }
        result["cost"] = objective.cost(splits.final)
        if "fgsm" in spec.measure and not objective.searching:
            result["robustness"] = {"fgsm": objective.attack(splits.final, dict(spec.measure["fgsm"]))}
        if not objective.searching:
            self._save_artifact(spec, objective)
        result["method"] = method.describe()
        result["metric"] = objective.metric_name
        task_info = objective.task_info()
        if task_info is not None:
            result["task"] = task_info
        return metrics, result

    def artifact_path(self, run_id: str) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir.parent / "artifacts" / f"{run_id}.safetensors"

    def _save_artifact(self, spec: RunSpec, objective: Objective) -> None:
        """The trained method and head (safetensors), so a stored run can be re-measured later."""
        path = self.artifact_path(spec.run_id)
        if path is not None:
            save_artifact(path, objective.method, objective.model_head(), spec)

    def remeasure_robustness(
        self, run_id: str, epsilons: Sequence[float] | None = None, max_examples: int | None = None
    ) -> dict[str, Any]:
        """`bench robust RUN`: rebuild a stored run's trained model and measure FGSM again."""
        assert self.store is not None
        record = self.store.resolve(run_id)
        if record.status != "finished":
            raise UserError(f"run {record.run_id} is {record.status}; only finished runs can be re-measured")
        path = self.artifact_path(record.run_id)
        if path is None or not path.exists():
            raise UserError(
                f"no saved model for run {record.run_id} (expected {path}); run it again to re-create it"
            )
        spec = record.spec
        stored = (record.result.get("robustness") or {}).get("fgsm")
        if max_examples is None and stored:
            max_examples = stored.get("examples")  # the same examples, so the grids can merge
        check_fgsm_options({"epsilons": list(epsilons or DEFAULT_EPSILONS), "max_examples": max_examples})
        task = self.suite.task(spec.task)
        objective = self.objective(spec, task, self._task_data(task))
        load_artifact(path, objective.method, objective.model_head(), self.device)
        final = objective.evaluation_split()
        options = objective.remeasure_options(list(epsilons) if epsilons else None, max_examples)
        measured = objective.attack(final, options)
        if "skipped" in measured:
            raise UserError(f"run {spec.run_id}: {measured['skipped']}")
        result = dict(record.result)
        result["robustness"] = {"fgsm": merge_fgsm(stored, measured)}
        self.store.update_result(record.run_id, result)
        return measured
