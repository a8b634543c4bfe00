"""A third-party backbone takes the built-ins' path: one module and one entry point in the
``petlbench.backbones`` group. Its entry declares kind, towers, normalisation and whether it is
generative, so planning pairs methods with it correctly without building it."""

import json
import os
import subprocess
import sys
import textwrap

from petlbench.backbones.registry import backbone_entries

PLUGIN = """
from petlbench.backbones.clip import CLIP_MEAN, CLIP_STD, build_tiny_clip
from petlbench.backbones.registry import IMAGE_TEXT, BackboneEntry

ENTRY = BackboneEntry(
    "ignored: the entry point's name wins",
    "clip",
    "a tiny CLIP from a plugin",
    lambda pretrained: build_tiny_clip("plug-clip", seed=7),
    pretrained=None,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    image_size=32,
    towers=IMAGE_TEXT,
)


def build_legacy(pretrained):
    return build_tiny_clip("plug-legacy", seed=7)
"""


def _site(tmp_path):
    site = tmp_path / "site"
    (site / "plug_backbones").mkdir(parents=True)
    (site / "plug_backbones" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "plug_backbones-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-backbones\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[petlbench.backbones]\n"
        "plug-clip = plug_backbones:ENTRY\n"
        "plug-legacy = plug_backbones:build_legacy\n"
        "plug-broken = plug_backbones_missing:ENTRY\n"
        "tiny-vit = plug_backbones:ENTRY\n"  # a plugin cannot shadow a built-in
    )
    return site


def _bench(site, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(site), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "petlbench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_every_builtin_registers_through_the_entry_point_group():
    entries = backbone_entries()
    assert {"tiny-clip", "micro-clip", "clip-vit-b16", "vit-b16", "swin-b", "ofa-test"} <= set(entries)
    assert all(e.source == "petlbench" and e.declared for e in entries.values())
    sizes = ("tiny", "medium", "base", "large", "huge", "test")
    assert {n for n, e in entries.items() if e.generative} == {f"ofa-{s}" for s in sizes}


def test_a_plugin_backbone_is_listed_planned_by_its_declared_facts_and_runs(tmp_path):
    site = _site(tmp_path)
    listing = _bench(site, "backbones")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[1]: line for line in listing.stdout.splitlines() if "plug-" in line}
    assert "clip" in rows["plug-clip"] and "plug-backbones" in rows["plug-clip"]
    assert "plugin" in rows["plug-legacy"] and "broken" in rows["plug-broken"]
    # CoOp needs a clip-kind backbone with a text tower: the declared entry says so, unbuilt
    plan = _bench(site, "plan", "--method", "coop", "--suite", "smoke", "--backbone", "plug-clip", "--json")
    assert plan.returncode == 0, plan.stderr
    lines = [json.loads(line) for line in plan.stdout.splitlines()]
    assert lines and {line["backbone"] for line in lines} == {"plug-clip"}
    # an undeclared (legacy builder) plugin is a "plugin" kind: CoOp is refused in one line
    refused = _bench(site, "plan", "--method", "coop", "--suite", "smoke", "--backbone", "plug-legacy")
    assert refused.returncode == 2 and "needs a clip backbone" in refused.stderr
    broken = _bench(site, "run", "--method", "vpt", "--suite", "smoke", "--backbone", "plug-broken")
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert "failed to import" in broken.stderr
    task = "shapes"
    run = _bench(
        site,
        *("run", "--method", "vpt", "--suite", "smoke", "--backbone", "plug-clip", "--tasks", task),
        *("--protocol", "epochs=1", "--no-fgsm", "--store", str(tmp_path / "s.sqlite"), "--json"),
    )
    assert run.returncode == 0, run.stderr
    # the shadowing attempt did not replace the built-in tiny-vit
    shadow = _bench(site, "backbones")
    (row,) = [line for line in shadow.stdout.splitlines() if line.split()[1:2] == ["tiny-vit"]]
    assert "petlbench" in row and "plug-backbones" not in row
