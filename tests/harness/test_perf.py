"""`bench perf` and the peak-memory probe."""

import torch

from petlbench.cli import main
from petlbench.harness.memory import PeakMemory
from petlbench.harness.perf import measure_perf


def test_perf_on_tiny_vit_reports_throughput_flops_and_memory():
    perf = measure_perf("vpt", "tiny-vit", batch_size=8, steps=2, warmup=1, device=torch.device("cpu"))
    # 5 prompts x 64 + a 100-way linear head on 64-d features
    assert perf["trainable_parameters"] == 5 * 64 + 64 * 100 + 100
    assert perf["train_images_per_second"] > 0 and perf["eval_images_per_second"] > 0
    assert perf["forward_gmacs_per_image"] > 0
    assert (
        perf["achieved_train_flops_per_s"]
        == 6e9 * perf["forward_gmacs_per_image"] * perf["train_images_per_second"]
    )
    assert 0 < perf["utilisation"] == perf["achieved_train_flops_per_s"] / perf["roofline"]["flops_per_s"]
    assert perf["train_memory"]["kind"] == "peak RSS" and perf["train_memory"]["peak_mib"] > 10


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as small:
        torch.zeros(1)
    with PeakMemory(torch.device("cpu")) as big:
        x = torch.ones(64 * 2**20 // 4 * 8)  # 512 MiB, touched
        del x
    if small.result()["scope"] == "block" and big.result()["scope"] == "block":
        assert big.result()["peak_mib"] - small.result()["peak_mib"] > 400


def test_perf_refuses_a_method_that_trains_nothing(capsys):
    assert main(["perf", "--method", "zeroshot", "--backbone", "tiny-clip", "--steps", "1"]) == 2
    assert "trains nothing" in capsys.readouterr().err


def test_perf_reports_the_ratio_to_the_plain_backbone_measured_interleaved():
    calls = []
    perf = measure_perf(
        "vpt", "tiny-vit", steps=3, warmup=1, device=torch.device("cpu"), on_step=lambda *a: calls.append(a)
    )
    ratio = perf["speed_ratio"]
    # CPU defaults: a small batch; progress for every warm-up, timed (both models) and eval step
    assert perf["batch_size"] == 8 and calls == [(i, 2 * (1 + 3) + 3) for i in range(1, 12)]
    assert ratio["x_plain"] == ratio["method_step_ms"] / ratio["plain_step_ms"]
    # VPT's 5 prompts lengthen the sequence: more MACs than the plain backbone's, counted exactly
    assert perf["forward_gmacs_per_image"] > ratio["plain_forward_gmacs_per_image"] > 0
    mac_ratio = perf["forward_gmacs_per_image"] / ratio["plain_forward_gmacs_per_image"]
    assert ratio["per_mac"] == ratio["x_plain"] / mac_ratio
    assert perf["hardware"].endswith("threads)") and "linear head" in ratio["plain"]


def test_perf_help_names_the_defaults(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["perf", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 8 on CPU, 32 on GPU" in text and "default: 5 on CPU, 10 on GPU" in text
