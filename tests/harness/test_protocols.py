"""Paper-exact protocols (issue 14): the effective plan of every reference suite, its layers and
references, schedules as the references step them, seeded augmentation, the search space, and the
deviations a run records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from petlbench.benchmarks.suites import SCHEDULES, load_suite
from petlbench.cli import main
from petlbench.cli.leaderboard import installed_suite
from petlbench.errors import UserError
from petlbench.harness.plan import describe_plan, plan_runs
from petlbench.harness.runner import RunResult
from petlbench.harness.sweep import run_sweep
from petlbench.harness.trainer import TrainConfig, lr_lambda
from petlbench.methods.adapt import Adapt

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _plan(method: str, suite: str, **kw):
    s = load_suite(suite)
    specs, _ = plan_runs(method, s, **kw)
    return s, specs


# ----- method layer ----------------------------------------------------------------------------------


def test_adapt_on_fewshot11_plans_the_papers_protocol_from_the_method_layer():
    suite, specs = _plan("adapt", "fewshot11", tasks=["dtd"], seeds=[1])
    (spec,) = specs
    p = spec.protocol
    assert (p["batch_size"], p["lr"], p["epochs"], p["optimizer"], p["shots"]) == (4, 0.0025, 100, "sgd", 16)
    for key in ("batch_size", "lr", "epochs", "optimizer"):
        assert spec.protocol_source[key] == "method"
        assert "Adapt paper section 4.1" in spec.protocol_refs[key]
    # The suite's values for the rest, with their references.
    assert spec.protocol_source["weight_decay"] == "suite"
    assert "dassl/config/defaults.py:L153" in spec.protocol_refs["weight_decay"]
    # The suite's copy of the method's reference protocol cannot drift from the method's own.
    declared = Adapt.reference_protocol
    for key in ("optimizer", "lr", "batch_size", "epochs", "shots"):
        assert suite.method_protocol["adapt"][key] == declared[key]
    # The paper is silent on the schedule: a named deviation of Adapt's rows only.
    assert "adapt-schedule-unstated" in {d["id"] for d in spec.deviations}
    _, (coop,) = _plan("coop", "fewshot11", tasks=["dtd"], seeds=[1])
    assert "adapt-schedule-unstated" not in {d["id"] for d in coop.deviations}
    assert coop.protocol["batch_size"] == 32 and coop.protocol_source["batch_size"] == "suite"


def test_the_method_layer_sits_above_the_task_and_below_the_user():
    suite = load_suite("fewshot11")
    imagenet = suite.task("imagenet")
    assert suite.resolve_protocol(imagenet, "coop").protocol.epochs == 50  # task: CoOp's _ep50 configs
    eff = suite.resolve_protocol(imagenet, "adapt")
    assert eff.protocol.epochs == 100 and eff.source["epochs"] == "method"
    eff = suite.resolve_protocol(imagenet, "adapt", {"epochs": 3})
    assert eff.protocol.epochs == 3 and eff.source["epochs"] == "user" and "epochs" not in eff.refs
    # A user value equal to the layer below does not take the field over.
    eff = suite.resolve_protocol(suite.task("dtd"), "coop", {"lr": 0.002})
    assert eff.source["lr"] == "suite"


def test_base2new_coop_is_the_base_to_new_tables_baseline():
    _, specs = _plan("coop", "base2new", tasks=["dtd-base", "imagenet-base"], seeds=[1])
    by_task = {s.task: s for s in specs}
    dtd, imagenet = by_task["dtd-base"], by_task["imagenet-base"]
    assert (dtd.protocol["epochs"], dtd.protocol["batch_size"]) == (200, 32)
    assert imagenet.protocol["epochs"] == 50 and imagenet.protocol_source["epochs"] == "method"
    assert "vit_b16_ep50_ctxv1.yaml" in imagenet.protocol_refs["epochs"]
    assert dtd.method_config["ctx_init"] == "a photo of a"
    # CoCoOp keeps its own setting: 10 epochs, batch 1, 4 tokens from "a photo of a".
    _, (cocoop,) = _plan("cocoop", "base2new", tasks=["dtd-base"], seeds=[1])
    assert (cocoop.protocol["epochs"], cocoop.protocol["batch_size"]) == (10, 1)
    assert cocoop.method_config["ctx_init"] == "a photo of a" and cocoop.method_config["n_ctx"] == 4
    # The user's --set wins over the suite's option defaults.
    _, (mine,) = _plan("coop", "base2new", tasks=["dtd-base"], seeds=[1], method_config={"ctx_init": ""})
    assert mine.method_config["ctx_init"] == ""


# ----- checkpoint, normalisation, augmentation, schedules --------------------------------------------


def test_vtab1k_plans_the_original_in21k_checkpoint_with_imagenet_normalisation():
    suite, specs = _plan("vpt", "vtab1k", tasks=["dtd"], seeds=[42])
    line = describe_plan(specs[0], suite)
    assert line["pretrained"] == "timm:vit_base_patch16_224.orig_in21k"
    assert line["normalization"] == IMAGENET
    assert line["protocol"]["augmentation"] == "none"
    assert line["protocol"]["schedule"] == "vpt_linear_warmup_cosine_epoch"
    assert list(load_suite("vtab1k").seeds) == [42, 44, 82, 100, 800]


def test_fewshot11_augments_as_coop_and_fgvc_as_vpt():
    _, (few,) = _plan("coop", "fewshot11", tasks=["dtd"], seeds=[1])
    assert few.protocol["augmentation"] == "random_resized_crop_flip"
    assert few.protocol["schedule"] == "dassl_constant_warmup_cosine_epoch"
    assert few.protocol["warmup_lr"] == 1e-5
    _, (fgvc,) = _plan("vpt", "fgvc", tasks=["cub"], seeds=[42])
    assert fgvc.protocol["augmentation"] == "random_crop_flip" and fgvc.protocol["batch_size"] == 128
    _, (mini,) = _plan("vpt", "mini", tasks=["count"], seeds=[1], backbones=["micro-vit"])
    assert mini.protocol["augmentation"] == "none"
    assert mini.protocol["schedule"] == "linear_warmup_cosine_step"


@pytest.mark.parametrize("shots, epochs", [(1, 50), (2, 100), (4, 100), (8, 200), (16, 200)])
def test_coop_epochs_follow_the_shot_count(shots, epochs):
    _, (spec,) = _plan("coop", "fewshot11", tasks=["dtd"], seeds=[1], protocol_overrides={"shots": shots})
    assert spec.protocol["epochs"] == epochs and spec.protocol["shots"] == shots
    assert "COOP.md" in spec.protocol_refs["epochs"]
    # A shot count the reference runs too is a variant, not a deviation.
    assert not [d for d in spec.deviations if d["id"] == "user-shots"]
    _, (imagenet,) = _plan(
        "coop", "fewshot11", tasks=["imagenet"], seeds=[1], protocol_overrides={"shots": shots}
    )
    assert imagenet.protocol["epochs"] == 50


def test_a_shot_count_without_reference_epochs_asks_for_them():
    with pytest.raises(UserError, match="no epoch count for shots=3"):
        _plan("coop", "fewshot11", tasks=["dtd"], seeds=[1], protocol_overrides={"shots": 3})
    _, (spec,) = _plan(
        "coop", "fewshot11", tasks=["dtd"], seeds=[1], protocol_overrides={"shots": 3, "epochs": 7}
    )
    assert spec.protocol["epochs"] == 7
    assert {"user-shots", "user-epochs"} <= {d["id"] for d in spec.deviations}


def _lrs(schedule: str, epochs: int, warmup: float, steps: int, lr: float = 0.002) -> list[float]:
    cfg = TrainConfig(epochs=epochs, batch_size=1, lr=lr, warmup_epochs=warmup, schedule=schedule)
    f = lr_lambda(cfg, steps)
    return [lr * f(s) for s in range(epochs * steps)]


def test_dassl_schedule_is_constant_warmup_then_cosine_stepped_per_epoch():
    lrs = _lrs("dassl_constant_warmup_cosine_epoch", epochs=4, warmup=1, steps=3)
    per_epoch = [lrs[3 * e : 3 * e + 3] for e in range(4)]
    assert all(len(set(e)) == 1 for e in per_epoch)  # one value per epoch
    assert per_epoch[0][0] == pytest.approx(1e-5)
    # Dassl with WARMUP_RECOUNT: epoch e >= 1 uses lr (1 + cos(pi (e - 1) / MAX_EPOCH)) / 2.
    for e in range(1, 4):
        assert per_epoch[e][0] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 4)))
    # Independently: torch's CosineAnnealingLR(T_max=MAX_EPOCH) behind a constant warm-up epoch.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4)
    expected = [1e-5]
    for _ in range(3):
        expected.append(opt.param_groups[0]["lr"])
        cos.step()
    assert [e[0] for e in per_epoch] == pytest.approx(expected)


def test_vpt_schedule_starts_at_zero_and_steps_per_epoch():
    lrs = _lrs("vpt_linear_warmup_cosine_epoch", epochs=20, warmup=10, steps=2, lr=1.0)
    per_epoch = lrs[::2]
    assert lrs[0] == 0.0 and lrs[1] == 0.0  # factor 0 for every step of epoch 0
    assert per_epoch[5] == pytest.approx(0.5)
    assert per_epoch[10] == pytest.approx(1.0)
    assert per_epoch[15] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    ours = _lrs("linear_warmup_cosine_step", epochs=20, warmup=10, steps=2, lr=1.0)
    assert ours[0] == pytest.approx(1 / 20)  # ours: per step, (step + 1) / warmup


def test_every_schedule_has_a_described_formula_and_bad_values_are_refused():
    assert set(SCHEDULES) == {
        "linear_warmup_cosine_step",
        "dassl_constant_warmup_cosine_epoch",
        "vpt_linear_warmup_cosine_epoch",
    }
    suite = load_suite("fewshot11")
    with pytest.raises(UserError, match="schedule"):
        suite.resolve_protocol(suite.task("dtd"), "coop", {"schedule": "nope"})
    with pytest.raises(UserError, match="whole number"):
        suite.resolve_protocol(suite.task("dtd"), "coop", {"warmup_epochs": 0.5})
    with pytest.raises(UserError, match="augmentation"):
        suite.resolve_protocol(suite.task("dtd"), "coop", {"augmentation": "mixup"})


# ----- search space ----------------------------------------------------------------------------------


def test_vtab1k_plan_carries_vpts_grid_with_batch_scaling():
    suite, specs = _plan("vpt", "vtab1k", tasks=["dtd"], seeds=[42])
    space = describe_plan(specs[0], suite)["search_space"]
    (phase,) = space["phases"]
    assert phase["lr"] == [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05]
    assert phase["weight_decay"] == [0.01, 0.001, 0.0001, 0.0]
    assert space["lr_scaling"] == "batch/256"
    assert "tune_vtab.py:L100" in space["refs"]["lr_scaling"]
    # A bench run of a suite with a search space runs fixed values: named.
    assert "no-search" in {d["id"] for d in specs[0].deviations}
    fgvc = load_suite("fgvc").search.describe("vpt")["phases"][0]
    assert len(fgvc["lr"]) == 9 and 0.05 not in fgvc["lr"]
    e2vpt = load_suite("vtab1k").search.describe("e2vpt")["phases"]
    assert e2vpt[0]["prune"] == [False] and e2vpt[1]["token_prune_percent"] == list(range(10, 100, 10))


class ScriptedExecutor:
    """Runs nothing: scores each spec with ``score(spec)`` (tests the sweep's planning and choice)."""

    def __init__(self, score):
        self.score = score
        self.seen: list = []

    def run(self, specs, on_done=None):
        out = []
        for spec in specs:
            self.seen.append(spec)
            done = RunResult(spec, {"accuracy": 1.0, "selection_accuracy": self.score(spec)}, {})
            out.append(done)
            if on_done:
                on_done(done)
        return out


def test_the_sweep_searches_the_suites_space_scales_lr_and_breaks_ties_to_the_smaller_lr(tmp_path):
    from petlbench.harness.store import Store

    suite = load_suite("vtab1k")
    # Every point scores the same: VPT's tie-break keeps the smallest lr, then the largest weight decay.
    executor = ScriptedExecutor(lambda spec: 50.0)
    store = Store(tmp_path / "s.sqlite")
    result = run_sweep(store, suite, executor, ["vpt"], tasks=["dtd"])
    trials = [s for s in executor.seen if s.stage == "search"]
    finals = [s for s in executor.seen if s.stage == "final"]
    assert len(trials) == 40 and {s.seed for s in trials} == {42}
    lrs = sorted({s.protocol["lr"] for s in trials})
    assert lrs[0] == pytest.approx(0.05 * 64 / 256) and lrs[-1] == pytest.approx(50.0 * 64 / 256)
    assert all(s.protocol_source["lr"] == "search" for s in trials)
    assert result.chosen[("vpt", "vit-b16", "dtd")] == {"lr": 0.05, "weight_decay": 0.01}
    assert [s.seed for s in finals] == [42, 44, 82, 100, 800]
    assert [s.protocol["lr"] for s in finals] == pytest.approx([0.05 * 64 / 256] * 5)
    assert not [d for s in finals for d in s.deviations if d["id"] in ("no-search", "user-lr")]


def test_e2vpt_searches_lr_and_wd_unpruned_then_the_pruning_rates(tmp_path):
    from petlbench.harness.store import Store

    def score(spec):
        cfg = spec.method_config
        if not cfg["prune"]:
            return (
                60.0 if (spec.protocol["lr"], spec.protocol["weight_decay"]) == (2.5 * 0.25, 0.001) else 10.0
            )
        return 70.0 if (cfg["token_prune_percent"], cfg["segment_prune_percent"]) == (30, 60) else 20.0

    executor = ScriptedExecutor(score)
    result = run_sweep(Store(tmp_path / "s.sqlite"), load_suite("vtab1k"), executor, ["e2vpt"], tasks=["dtd"])
    trials = [s for s in executor.seen if s.stage == "search"]
    assert len(trials) == 40 + 81
    second = trials[40:]
    assert {(s.protocol["lr"], s.protocol["weight_decay"]) for s in second} == {(2.5 * 0.25, 0.001)}
    assert result.chosen[("e2vpt", "vit-b16", "dtd")] == {
        "lr": 2.5,
        "weight_decay": 0.001,
        "prune": True,
        "token_prune_percent": 30,
        "segment_prune_percent": 60,
    }
    finals = [s for s in executor.seen if s.stage == "final"]
    assert {s.method_config["token_prune_percent"] for s in finals} == {30.0}


# ----- bench plan ------------------------------------------------------------------------------------


def test_bench_plan_json_prints_every_run_without_training(capsys, tmp_path):
    args = ["plan", "--method", "adapt", "--suite", "fewshot11", "--tasks", "dtd,eurosat"]
    args += ["--json", "--no-fgsm"]
    code = main(args)
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 * 3  # two tasks x seeds 1-3
    keys = {
        "method",
        "method_config",
        "backbone",
        "pretrained",
        "normalization",
        "task",
        "seed",
        "protocol",
        "protocol_source",
        "search_space",
        "deviations",
    }
    assert keys <= set(lines[0])
    assert lines[0]["protocol"]["augmentation"] == "random_resized_crop_flip"
    assert lines[0]["protocol_source"]["batch_size"] == "method"
    assert lines[0]["pretrained"] == "open_clip:ViT-B-16-quickgelu/openai"
    assert not (tmp_path / "runs").exists()
    # The plan's run ids are the ones bench run stores.
    suite = load_suite("fewshot11")
    specs, _ = plan_runs("adapt", suite, tasks=["dtd", "eurosat"])
    assert [line["run_id"] for line in lines] == [s.run_id for s in specs]


def test_bench_plan_table_and_errors(capsys):
    assert main(["plan", "--method", "vpt", "--suite", "vtab1k", "--tasks", "dtd", "--seeds", "42"]) == 0
    assert "bench plan: 1 runs of vpt on vtab1k" in capsys.readouterr().out
    assert main(["plan", "--method", "coop", "--suite", "fewshot11", "--protocol", "shots=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs" in err[0]


# ----- augmentation through the trainer ---------------------------------------------------------------


class _Stop(Exception):
    pass


def _recording_trainer(
    tmp_path, epochs, *, stop_at_epoch=None, start_epoch=0, augmentation="random_resized_crop_flip"
):
    """A linear probe on tiny-vit whose image-tower inputs are recorded per epoch: (train, seen, model),
    where ``train(data, cache_features=True)`` fits it with ``augmentation``."""
    from petlbench.backbones import build_backbone
    from petlbench.backbones.classifier import ImageClassifier
    from petlbench.backbones.heads import LinearHead
    from petlbench.harness.objectives.classification import fit_classifier
    from petlbench.harness.trainer import Trainer
    from petlbench.methods.base import Callback
    from petlbench.methods.linear import LinearProbe

    torch.manual_seed(0)
    backbone = build_backbone("tiny-vit")
    method = LinearProbe()
    method.attach(backbone)
    model = ImageClassifier(backbone, LinearHead(backbone.feature_dim, 2), method)
    seen: list[tuple[int, bool, torch.Tensor]] = []
    original = model.features
    trainer_ref = {}

    def features(pixels):
        epoch = trainer_ref["epoch"]
        seen.append((epoch, model.training, pixels.detach().clone()))
        return original(pixels)

    model.features = features  # type: ignore[method-assign]

    class Epochs(Callback):
        def on_train_start(self, ctx):
            trainer_ref["epoch"] = start_epoch

        def on_epoch_end(self, ctx):
            trainer_ref["epoch"] = ctx.epoch + 1

        def on_step_end(self, ctx):
            if stop_at_epoch is not None and ctx.epoch == stop_at_epoch:
                raise _Stop  # dies in the middle of that epoch: its checkpoint is the epoch before

    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=0.1, seed=3)
    trainer = Trainer(
        model,
        method,
        cfg,
        head=model.head,
        device=torch.device("cpu"),
        checkpoint_path=tmp_path / "ckpt.pt",
        callbacks=[Epochs()],
    )

    def train(data, cache_features=True):
        return fit_classifier(trainer, model, data, augmentation=augmentation, cache_features=cache_features)

    return train, seen, model


def _images():
    from petlbench.benchmarks.data import TensorImageDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, torch.tensor([0, 1, 0, 1]))


def _train_batches(seen, epoch):
    return torch.cat([p for e, training, p in seen if e == epoch and training])


def test_two_epochs_see_different_crops_and_a_resumed_run_replays_them(tmp_path):
    data = _images()
    train, seen, _ = _recording_trainer(tmp_path / "a", 2)
    train(data)
    first, second = _train_batches(seen, 0), _train_batches(seen, 1)
    raw = data.images.float() / 255
    assert first.shape == second.shape == (4, 3, 32, 32)
    assert not torch.equal(first, second)  # a new crop every epoch (same batch order or not)
    assert not any(torch.equal(first.sort(0).values, raw.sort(0).values) for _ in [0])
    # Killed after epoch 0, then resumed from its checkpoint: epoch 1 replays the same crops.
    killed, _, _ = _recording_trainer(tmp_path / "b", 2, stop_at_epoch=1)
    with pytest.raises(_Stop):
        killed(data)
    resumed, seen_resumed, _ = _recording_trainer(tmp_path / "b", 2, start_epoch=1)
    result = resumed(data)
    assert result.resumed_from_epoch == 1
    assert torch.equal(_train_batches(seen_resumed, 1), second)


def test_evaluation_never_augments_and_no_augmentation_keeps_the_pixels(tmp_path):
    from petlbench.harness.objectives.classification import predict

    data = _images()
    train, seen, model = _recording_trainer(tmp_path, 1)
    train(data)
    seen.clear()
    predict(model, data, torch.device("cpu"), batch_size=4)
    (_, training, pixels), *_ = seen
    assert not training and torch.equal(pixels, data.images.float() / 255)
    plain, seen_plain, _ = _recording_trainer(tmp_path / "plain", 1, augmentation="none")
    plain(data, cache_features=False)  # run the tower on the pixels to see them
    batch = _train_batches(seen_plain, 0)
    assert sorted(batch.flatten().tolist()) == sorted((data.images.float() / 255).flatten().tolist())


# ----- Adapt prunes where it runs; deviations are stored and shown ---------------------------------------


def test_adapt_on_mini_prunes_to_its_target_and_records_it(tmp_path):
    from petlbench.harness.runner import Runner

    suite = load_suite("mini")
    (spec,), _ = plan_runs("adapt", suite, tasks=["shapes-16shot"], seeds=[1], backbones=["micro-clip"])
    assert spec.method_config["accumulation_steps"] == 2 and spec.method_config["target_tokens"] is None
    torch.set_num_threads(1)
    computed = Runner(None, suite, device="cpu").compute(spec)
    described = computed.result["method"]
    assert described["pruning_steps"] > 0
    assert described["initial_tokens"] == 4 * 16 + 3 * 16
    assert described["active_total"] == described["target_tokens"] == round(112 / 3)
    assert described["reached_target"] is True
    assert computed.result["deviations"] == []


def test_a_run_stores_its_deviations_and_the_leaderboard_shows_them(tmp_path, capsys):
    from petlbench.harness.store import Store
    from petlbench.leaderboard.build import build_leaderboard
    from petlbench.leaderboard.records import export_store, load_records

    store = tmp_path / "runs" / "s.sqlite"
    args = ["run", "--method", "linear", "--suite", "smoke", "--tasks", "colors", "--seeds", "1"]
    args += ["--backbone", "tiny-vit", "--store", str(store), "--no-fgsm", "--protocol", "epochs=2"]
    assert main(args) == 0
    (record,) = Store(store).records()
    assert [d["id"] for d in record.result["deviations"]] == ["user-epochs"]
    assert record.spec.protocol_source["epochs"] == "user"
    export_store(store, tmp_path / "records")
    doc = build_leaderboard(load_records(tmp_path / "records"), [], suites=installed_suite)
    (row,) = doc["rows"]
    assert [d["id"] for d in row["deviations"]] == ["user-epochs"]
    assert [d["id"] for d in doc["entries"][0]["deviations"]] == ["user-epochs"]


def test_a_sweep_of_no_method_is_refused(capsys):
    assert main(["sweep", "--methods", ",", "--suite", "smoke", "--store", "/tmp/petl-none.sqlite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --methods names no method"
