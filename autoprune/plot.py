"""``pareto.png``: accuracy against latency and against size, the front highlighted, the base marked."""
from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_front(rows: list[dict[str, Any]], front_ids: set[str], base: dict[str, float] | None) -> bytes:
    """The figure as PNG bytes."""
    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label, scale in ((axes[0], "latency_ms", "latency (ms)", 1.0),
                                  (axes[1], "size_bytes", "size (KB)", 1 / 1024)):
        for subset, style in (([r for r in ok if not r["feasible"]], dict(c="#bbbbbb", marker="x", label="infeasible")),
                              ([r for r in ok if r["feasible"] and r["trial_id"] not in front_ids],
                               dict(c="#6baed6", marker="o", alpha=0.7, label="trial")),
                              (sorted([r for r in ok if r["trial_id"] in front_ids], key=lambda r: r[key]),
                               dict(c="#d62728", marker="o", s=40, label="Pareto front"))):
            if subset:
                ax.scatter([r[key] * scale for r in subset], [r["accuracy"] for r in subset], **style)
        if base:
            ax.scatter([base[key] * scale], [base["accuracy"]], c="black", marker="*", s=160, label="base model")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
