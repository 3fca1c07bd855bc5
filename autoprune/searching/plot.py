"""``pareto.png``: the first objective against each other one, the front highlighted, the base marked."""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

from autoprune.objectives import Objective

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_front(rows: list[dict[str, Any]], front_ids: set[str], base: dict[str, float] | None,
               objectives: Sequence[Objective]) -> bytes:
    """The figure as PNG bytes: one panel per objective after the first (two or three objectives: one or two)."""
    ok = [r for r in rows if r["status"] == "ok"]
    y = objectives[0]
    panels = objectives[1:]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, constrained_layout=True)
    for ax, x in zip(axes[0], panels):
        front = sorted([r for r in ok if r["trial_id"] in front_ids], key=lambda r: r[x.name])
        for subset, style in (([r for r in ok if not r["feasible"]], {"c": "#bbbbbb", "marker": "x", "label": "infeasible"}),
                              ([r for r in ok if r["feasible"] and r["trial_id"] not in front_ids],
                               {"c": "#6baed6", "marker": "o", "alpha": 0.7, "label": "trial"}),
                              (front, {"c": "#d62728", "marker": "o", "s": 40, "label": "Pareto front"})):
            if subset:
                ax.scatter([r[x.name] * x.scale for r in subset], [r[y.name] * y.scale for r in subset], **style)
        if base:
            ax.scatter([base[x.name] * x.scale], [base[y.name] * y.scale], c="black", marker="*", s=160,
                       label="base model")
        ax.set_xlabel(f"{x.label} ({x.direction[:3]})")
        ax.set_ylabel(f"{y.label} ({y.direction[:3]})")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(loc="best", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
