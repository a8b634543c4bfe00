"""Plan and execute runs: one RunSpec -> a trained, evaluated model -> one finished row in the store.

A finished spec is never run twice (its hash is its identity). A run that dies leaves its row as
``running`` and a per-epoch checkpoint next to the store; executing the spec again resumes there.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petlbench.backbones.base import Backbone
from petlbench.backbones.classifier import ImageClassifier
from petlbench.backbones.heads import LinearHead, TextClassifierHead
from petlbench.backbones.registry import backbone_entry, build_backbone
from petlbench.benchmarks.augment import get_augmentation
from petlbench.benchmarks.data import TaskData, TensorImageDataset
from petlbench.benchmarks.datasets import load_task
from petlbench.benchmarks.fewshot import few_shot_splits
from petlbench.benchmarks.metrics import get_metric
from petlbench.benchmarks.suites import Protocol, Suite, TaskSpec
from petlbench.errors import UserError
from petlbench.methods.base import Method, StageContext

from .building import attach_method, out_of_memory_as_user_error, refuse_nothing_to_train
from .checkpoint import CheckpointError, load_state, save_state
from .data import materialize, to_pixels
from .flops import image_gmacs, text_gmacs_per_prompt
from .image_cache import ImageCache, default_cache_dir
from .leakage import refuse_leakage
from .memory import PeakMemory
from .provenance import collect_provenance
from .robustness import DEFAULT_EPSILONS, check_fgsm_options, fgsm, merge_fgsm
from .spec import RunSpec
from .store import Store
from .trainer import TrainConfig, Trainer, TrainResult, image_features, predict


@dataclass
class RunOutcome:
    spec: RunSpec
    skipped: bool
    metrics: dict[str, Any]
    result: dict[str, Any]
    waited: bool = False  # another process ran it while this one waited


@dataclass
class ComputedRun:
    spec: RunSpec
    metrics: dict[str, Any]
    result: dict[str, Any]
    wall_time_s: float
    provenance: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _read_stage(path: Path, device: torch.device) -> dict[str, Any] | None:
    """A finished stage's saved state, or None (and the file dropped) when it cannot be read."""
    try:
        return load_state(path, device)
    except CheckpointError as err:
        import warnings

        warnings.warn(f"{err}; discarded, re-running that stage", stacklevel=2)
        path.unlink(missing_ok=True)
        return None


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


def make_head(method: Method, backbone: Backbone, data: TaskData, task: TaskSpec) -> torch.nn.Module:
    class_names = list(task.class_names) if task.class_names else data.class_names
    return head_for(method, backbone, class_names, list(task.templates))


def head_for(
    method: Method, backbone: Backbone, class_names: Sequence[str], templates: Sequence[str]
) -> torch.nn.Module:
    """The method's own head if it builds one (CoOp), else a text head on CLIP, a linear one elsewhere."""
    custom = method.make_head(backbone, list(class_names), list(templates))
    if custom is not None:
        return custom
    kind = method.head
    if kind == "auto":
        kind = "text" if backbone.kind == "clip" else "linear"
    if kind == "text":
        return TextClassifierHead(backbone, list(class_names), list(templates))
    return LinearHead(backbone.feature_dim, len(class_names))


def count_parameters(method: Method, head: torch.nn.Module, backbone: Backbone) -> dict[str, Any]:
    """Trainable parameters the method owns, with and without the head, and percentages with the
    denominator named (DESIGN section 4)."""
    head_params = sum(p.numel() for p in head.parameters() if p.requires_grad)
    own = method.num_trainable_parameters()
    total = backbone.num_parameters()
    out: dict[str, Any] = {
        "method": own,
        "head": head_params,
        "with_head": own + head_params,
        "backbone_total": total,
        "percent_of_backbone": 100.0 * own / total,
        "denominator": "all backbone parameters",
    }
    if backbone.kind == "clip":
        no_emb = backbone.num_parameters(exclude=["towers.text.token_embedding"])
        out["backbone_without_token_embedding"] = no_emb
        out["percent_of_backbone_without_token_embedding"] = 100.0 * own / no_emb
    return out


def measure_cost(backbone: Backbone, method: Method, head: torch.nn.Module) -> dict[str, Any]:
    """GMACs per image (fvcore convention, see harness/flops.py), and the text tower's cost per
    class prompt with how the method really runs it (once and cached, or per image)."""
    cost: dict[str, Any] = {"unit": "GMACs", "image_size": backbone.image_size}
    cost["image_gmacs"] = image_gmacs(backbone, method)
    if backbone.kind == "clip":
        per_prompt = text_gmacs_per_prompt(backbone, method, head)
        prompts = int(getattr(head, "token_ids", torch.empty(0)).shape[0]) or None
        cost["text_gmacs_per_prompt"] = per_prompt
        cost["text_prompts"] = prompts
        if method.needs_text_encoder_per_image:
            cost["text_runs"] = "per image"
        elif backbone.tower("text").has_trainable_parameters() or (
            not isinstance(head, LinearHead) and any(p.requires_grad for p in head.parameters())
        ):  # prompts in the text tower's slots, or in a head that runs the text tower (CoOp)
            cost["text_runs"] = "per step in training, once at inference"
        else:
            cost["text_runs"] = "once (cached)"
    return cost


def _dtype_name(device: torch.device) -> str:
    """How the trainer and evaluator compute (they autocast to bf16 on CUDA only)."""
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


def protocol_of(spec: RunSpec) -> Protocol:
    return Protocol(**spec.protocol)


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
        self._task_cache: dict[str, TaskData] = {}

    def _task_data(self, task: TaskSpec, decode_size: int | None = None) -> TaskData:
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

    def run(self, spec: RunSpec, on_step: Callable[[int, int, float], None] | None = None) -> RunOutcome:
        """Run one spec unless the store already holds it finished; the store sees running ->
        finished (or failed). A spec another live process is running is waited for, not trained
        twice (``RunOutcome.skipped``, with ``waited``); a dead process's claim is taken over and the
        run resumes from its checkpoint."""
        if self.store is None:
            raise RuntimeError("Runner.run needs a store; a worker calls Runner.compute")
        waited = False
        while True:
            record = self.store.get(spec.run_id)
            if record is not None and record.status == "finished":
                self.drop_checkpoints(spec.run_id)  # a run killed between commit and clean-up
                return RunOutcome(spec, True, record.metrics, record.result, waited=waited)
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
        return RunOutcome(spec, False, computed.metrics, computed.result)

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

    def compute(self, spec: RunSpec, on_step: Callable[[int, int, float], None] | None = None) -> ComputedRun:
        """Train and evaluate one spec without touching the store (what a remote worker runs)."""
        task = self.suite.task(spec.task)
        data = self._task_data(task)
        provenance = self.provenance(spec)
        started = time.perf_counter()
        metrics, result = self._execute(spec, task, data, on_step)
        result["deviations"] = list(spec.deviations) + runtime_deviations(result)
        result["protocol_source"] = dict(spec.protocol_source)
        result["protocol_refs"] = dict(spec.protocol_refs)
        return ComputedRun(spec, metrics, result, time.perf_counter() - started, provenance)

    def finish(self, computed: ComputedRun) -> None:
        """Record a computed run as finished and drop its checkpoints."""
        assert self.store is not None
        self.store.mark_finished(
            computed.spec.run_id, computed.metrics, computed.result, computed.wall_time_s, computed.provenance
        )
        self.drop_checkpoints(computed.spec.run_id)

    def _execute(
        self,
        spec: RunSpec,
        task: TaskSpec,
        data: TaskData,
        on_step: Callable[[int, int, float], None] | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if getattr(data, "generative", False) or backbone_entry(spec.backbone).generative:
            from .seq2seq import run_seq2seq  # image + text -> text on an encoder-decoder

            return run_seq2seq(self, spec, task, data, on_step)
        protocol = protocol_of(spec)
        model = self.build_model(spec, task, data)
        backbone, method, head = model.backbone, model.method, model.head
        method_cls = type(method)

        size, interp = backbone.image_size, backbone.interpolation
        # Few-shot picks are made on labels alone, so only the picked images are ever decoded.
        # A search trial never trains on the split it is scored on: trainval (VTAB's train800val200)
        # holds the selection split, so a search trains on train (train800) alone.
        train_name = protocol.train_split
        if spec.stage == "search" and train_name == "trainval" and protocol.selection_split == "val":
            train_name = "train"
        refuse_leakage(task, self.data_root, (train_name, protocol.selection_split), protocol.eval_split)
        train_split, selection_split = few_shot_splits(
            data, train_name, protocol.selection_split, protocol.shots, spec.seed
        )
        decode = get_augmentation(protocol.augmentation).decode_size(size)
        if decode != size:  # the same picks (labels and seed are the same), decoded larger to crop from
            train_split, _ = few_shot_splits(
                self._task_data(task, decode), train_name, protocol.selection_split, protocol.shots, spec.seed
            )
        train = materialize(train_split, decode, interp, cache=self.image_cache)
        selection = materialize(selection_split, size, interp, cache=self.image_cache, stream=True)
        # A search trial (stage "search") is scored on the selection split and never reads the
        # evaluation split: hyperparameters are chosen without seeing test data.
        searching = spec.stage == "search"
        disk = self.image_cache
        final = (
            selection
            if searching
            else materialize(data.split(protocol.eval_split), size, interp, cache=disk, stream=True)
        )
        metric = get_metric(task.metric)
        num_classes = len(task.class_names or data.class_names)
        cache = not backbone.tower("image").has_trainable_parameters()
        cached: dict[int, torch.Tensor] = {}

        def score(split: TensorImageDataset) -> float:
            feats = None
            if cache:
                if id(split) not in cached:
                    cached[id(split)] = image_features(model, split, self.device, protocol.eval_batch_size)
                feats = cached[id(split)]
            preds = predict(model, split, self.device, protocol.eval_batch_size, features=feats)
            return float(metric(preds, split.labels, num_classes))

        selection_key = f"selection_{task.metric}"
        result: dict[str, Any] = {}
        # A training-free method that builds its head from the training split (Tip-Adapter's cache)
        # runs its stages too; they hold no trainable stage, so no optimiser is ever built.
        if method_cls.trains or any(stage.prepare is not None for stage in method.stages()):
            with PeakMemory(self.device) as train_peak:
                trained = self._train_stages(
                    spec,
                    protocol,
                    model,
                    method,
                    train,
                    on_step,
                    lambda: {selection_key: score(selection)},
                    cache,
                    selection=selection,
                )
            trained["train"]["memory"] = train_peak.result()
            result.update(trained)
        selection_score = score(selection)
        # Base-to-new (CoCoOp): the model trained on the base classes is tested on new classes, with
        # a head built for their names; only a CLIP text head can name classes it was not trained on.
        eval_names = None if searching else data.meta.get("eval_class_names")
        if eval_names:
            eval_head = head_for(method, backbone, list(eval_names), list(task.templates))
            if isinstance(eval_head, LinearHead):
                raise UserError(
                    f"task {task.name!r} tests on classes unseen in training: it needs a method with a "
                    "text head on a CLIP backbone (a linear head cannot name new classes)"
                )
            model.head = eval_head.to(self.device)
            num_classes = len(eval_names)
        with PeakMemory(self.device) as eval_peak:
            t0 = time.perf_counter()
            final_score = score(final)
            eval_time = time.perf_counter() - t0
        metrics = {task.metric: final_score, selection_key: selection_score}
        result["parameters"] = count_parameters(method, head, backbone)
        result["eval"] = {
            "split": protocol.selection_split if searching else protocol.eval_split,
            "examples": len(final),
            "images_per_second": len(final) / max(1e-9, eval_time),
            "feature_cache": cache,
            "dtype": _dtype_name(self.device),
            "memory": eval_peak.result(),
        }
        result["cost"] = measure_cost(backbone, method, head)
        if "fgsm" in spec.measure and not searching:
            result["robustness"] = {"fgsm": self._fgsm(spec, model, final, num_classes)}
        if not searching:
            self._save_artifact(spec, model)
        result["method"] = method.describe()
        result["metric"] = task.metric
        return metrics, result

    def build_model(self, spec: RunSpec, task: TaskSpec, data: TaskData) -> ImageClassifier:
        """Backbone + method (attached, freshly initialised under the run's seed) + head, on device."""
        seed_everything(spec.seed)
        backbone = build_backbone(spec.backbone, pretrained=spec.pretrained)
        method = attach_method(spec, backbone)
        with out_of_memory_as_user_error(f"the head of {spec.method!r} on {spec.backbone}"):
            head = make_head(method, backbone, data, task)
        model = ImageClassifier(backbone, head, method)
        refuse_nothing_to_train(spec, model)
        return model.to(self.device)

    def _fgsm(self, spec: RunSpec, model: ImageClassifier, data: TensorImageDataset, classes: int) -> dict:
        opts = spec.measure["fgsm"]
        return fgsm(
            model,
            data,
            classes,
            epsilons=opts.get("epsilons", DEFAULT_EPSILONS),
            device=self.device,
            max_examples=opts.get("max_examples"),
        )

    def artifact_path(self, run_id: str) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir.parent / "artifacts" / f"{run_id}.safetensors"

    def _save_artifact(self, spec: RunSpec, model: ImageClassifier) -> None:
        """The trained method and head (safetensors), so a stored run can be re-measured later."""
        path = self.artifact_path(spec.run_id)
        if path is None:
            return
        from safetensors.torch import save_file

        assert model.method is not None
        tensors = {f"method.{k}": v.contiguous().cpu() for k, v in model.method.method_state().items()}
        tensors.update(
            {f"head.{k}": v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"run_id": spec.run_id, "spec": spec.canonical_json()})
        tmp.replace(path)

    def remeasure_robustness(
        self, run_id: str, epsilons: Sequence[float] | None = None, max_examples: int | None = None
    ) -> dict[str, Any]:
        """`bench robust RUN`: rebuild a stored run's trained model and measure FGSM again."""
        record = self.store.resolve(run_id)
        if record.status != "finished":
            raise UserError(f"run {record.run_id} is {record.status}; only finished runs can be re-measured")
        path = self.artifact_path(record.run_id)
        if path is None or not path.exists():
            raise UserError(
                f"no saved model for run {record.run_id} (expected {path}); run it again to re-create it"
            )
        from safetensors.torch import load_file

        spec = record.spec
        stored = (record.result.get("robustness") or {}).get("fgsm")
        if max_examples is None and stored:
            max_examples = stored.get("examples")  # the same examples, so the grids can merge
        check_fgsm_options({"epsilons": list(epsilons or DEFAULT_EPSILONS), "max_examples": max_examples})
        task = self.suite.task(spec.task)
        data = self._task_data(task)
        if getattr(data, "generative", False):
            from .seq2seq import remeasure_seq2seq

            measured = remeasure_seq2seq(self, spec, task, data, load_file(str(path)), epsilons, max_examples)
            merged = merge_fgsm(stored, measured)
            self.store.update_result(record.run_id, {**record.result, "robustness": {"fgsm": merged}})
            return measured
        model = self.build_model(spec, task, data)
        tensors = load_file(str(path), device=str(self.device))
        assert model.method is not None
        model.method.load_method_state({k[7:]: v for k, v in tensors.items() if k.startswith("method.")})
        model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        protocol = protocol_of(spec)
        final = materialize(
            data.split(protocol.eval_split),
            model.backbone.image_size,
            model.backbone.interpolation,
            cache=self.image_cache,
            stream=True,
        )
        classes = len(task.class_names or data.class_names)
        measured = fgsm(
            model,
            final,
            classes,
            epsilons=epsilons or DEFAULT_EPSILONS,
            device=self.device,
            max_examples=max_examples,
        )
        result = dict(record.result)
        result["robustness"] = {"fgsm": merge_fgsm(stored, measured)}
        self.store.update_result(record.run_id, result)
        return measured

    def _train_stages(
        self,
        spec: RunSpec,
        protocol: Protocol,
        model: ImageClassifier,
        method: Method,
        train: TensorImageDataset | None,
        on_step: Callable[[int, int, float], None] | None,
        evaluate: Callable[[], dict[str, float]],
        cache: bool,
        *,
        fit: Callable[[Trainer, Callable[[], dict[str, float]]], TrainResult] | None = None,
        batches: Callable[[], Iterator[Any]] | None = None,
        train_examples: int | None = None,
        selection: TensorImageDataset | None = None,
    ) -> dict[str, Any]:
        """Run the method's stages in order. A finished stage leaves its state on disk, so a crash
        resumes in the stage it was in; within a stage the trainer resumes from its last epoch.

        ``fit``, ``batches`` and ``train_examples`` replace the classification defaults (cross-entropy
        on ``train``'s labels, its (pixels, labels) batches and size) for another objective."""
        run_dir = self.checkpoint_dir / spec.run_id if self.checkpoint_dir is not None else None
        stage_results: dict[str, dict[str, Any]] = {}
        history: list[dict[str, Any]] = []
        train_info: dict[str, Any] = {
            "train_examples": train_examples if train_examples is not None else len(train),
            "device": str(self.device),
            "feature_cache": cache,
            "train_time_s": 0.0,
            "images": 0,
            "resumed_from_epoch": None,
            "resumed_after_stages": [],  # finished stages read back from disk (a run that resumed)
        }

        def image_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, len(train), protocol.batch_size):
                yield (
                    to_pixels(train.images[start : start + protocol.batch_size], self.device),
                    train.labels[start : start + protocol.batch_size].to(self.device),
                )

        batches = batches or image_batches

        def selection_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            assert selection is not None
            for start in range(0, len(selection), protocol.eval_batch_size):
                yield (
                    to_pixels(selection.images[start : start + protocol.eval_batch_size], self.device),
                    selection.labels[start : start + protocol.eval_batch_size].to(self.device),
                )

        for index, stage in enumerate(method.stages()):
            done = run_dir / f"stage{index}-{stage.name}.done.safetensors" if run_dir is not None else None
            state = _read_stage(done, self.device) if done is not None and done.exists() else None
            if state is not None:
                method.load_method_state(state["method"])
                model.head.load_state_dict(state["head"])
                stage_results[stage.name] = state["result"]
                history.extend(state["history"])
                train_info["resumed_after_stages"].append(stage.name)
                continue
            if stage.prepare is not None:
                stage.prepare(
                    StageContext(
                        model,
                        method,
                        self.device,
                        spec.seed,
                        batches,
                        dict(stage_results),
                        selection_batches if selection is not None else None,
                    )
                )
            stage_history: list[dict[str, Any]] = []
            if stage.train:
                trainer = Trainer(
                    model,
                    method,
                    TrainConfig(
                        epochs=stage.epochs or protocol.epochs,
                        batch_size=protocol.batch_size,
                        optimizer=protocol.optimizer,
                        lr=protocol.lr,
                        weight_decay=protocol.weight_decay,
                        momentum=protocol.momentum,
                        warmup_epochs=protocol.warmup_epochs,
                        grad_clip=protocol.grad_clip,
                        eval_batch_size=protocol.eval_batch_size,
                        seed=spec.seed + 7919 * index,
                        schedule=protocol.schedule,
                        warmup_lr=protocol.warmup_lr,
                        augmentation=protocol.augmentation,
                    ),
                    device=self.device,
                    checkpoint_path=run_dir / f"stage{index}-{stage.name}.safetensors"
                    if run_dir is not None
                    else None,
                    callbacks=method.callbacks(),
                    progress=on_step,
                    cache_features=cache,
                )
                trained = fit(trainer, evaluate) if fit is not None else trainer.fit(train, evaluate=evaluate)
                stage_history = [{"stage": stage.name, **h} for h in trained.history]
                train_info["train_time_s"] += trained.train_time_s
                train_info["images"] += trained.train_images
                if trained.resumed_from_epoch is not None:
                    train_info["resumed_from_epoch"] = {
                        "stage": stage.name,
                        "epoch": trained.resumed_from_epoch,
                    }
            stage_result = {
                "stage": stage.name,
                **evaluate(),
                "trainable_parameters": method.num_trainable_parameters(),
            }
            stage_results[stage.name] = stage_result
            history.extend(stage_history)
            if done is not None:
                save_state(
                    done,
                    {
                        "method": method.method_state(),
                        "head": model.head.state_dict(),
                        "result": stage_result,
                        "history": stage_history,
                    },
                )
        train_info["images_per_second"] = (
            train_info["images"] / train_info["train_time_s"] if train_info["train_time_s"] > 0 else None
        )
        train_info["epochs"] = sum(1 for h in history if "epoch" in h)
        train_info["seconds_per_epoch"] = (
            train_info["train_time_s"] / train_info["epochs"] if train_info["epochs"] else None
        )
        train_info["dtype"] = _dtype_name(self.device)
        return {"history": history, "stages": list(stage_results.values()), "train": train_info}
