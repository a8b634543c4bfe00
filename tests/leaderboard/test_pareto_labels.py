"""The Pareto plot's point labels are placed by adjustText: apart from each other, and the same bytes
on every rebuild."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt  # noqa: E402

from petlbench.leaderboard.render import place_labels, render_pareto  # noqa: E402

# eight methods crowded into one corner of the plot, as the micro-backbone ones are, and two far away
NAMES = ["adapter", "bitfit", "bitfit-ofa", "cocoop", "coop", "e2vpt", "lora", "vpt"]
POINTS = [(4000 + 300 * i, 68.0 + 0.3 * (i % 3), name) for i, name in enumerate(NAMES)]
POINTS += [(1.0, 55.0, "zeroshot"), (8e5, 86.0, "full")]


def _doc() -> dict:
    entries = [
        {
            "suite": "mini",
            "suite_version": "2",
            "backbone": "micro-clip",
            "label": name,
            "headline": {"mean": y},
            "efficiency": {"trainable_params_with_head": x},
        }
        for x, y, name in POINTS
    ]
    return {"suites": [{"suite": "mini", "suite_version": "2"}], "entries": entries}


def test_crowded_labels_do_not_overlap():
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter([p[0] for p in POINTS], [p[1] for p in POINTS])
    ax.set_xscale("log")
    texts = [ax.text(x, y, name, fontsize=7) for x, y, name in POINTS]
    fig.tight_layout()
    before = [t.get_window_extent() for t in texts]
    assert any(a.overlaps(b) for a, b in itertools.combinations(before, 2))  # the problem
    place_labels(ax, texts)
    fig.canvas.draw()
    after = [t.get_window_extent() for t in texts]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(after, 2))
    plt.close(fig)


def test_placed_labels_render_the_same_bytes_every_time():
    first, second = render_pareto(_doc()), render_pareto(_doc())
    assert first == second
    assert all(f">{name}<" in first["pareto.svg"].decode() for _, _, name in POINTS)
