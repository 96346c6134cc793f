"""``results.png``: GenAcc per dataset per method (grouped bars) plus the average, like Table 1.

Matplotlib's object API with the Agg canvas: no display, no pyplot global state, safe in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from s3core.io import atomic_open


def plot_series(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple[str, list[float | None], list[float | None]]]]:
    """``(groups, [(method, genacc% per group, em% per group)])``; groups = datasets + ``Avg.``."""
    datasets: list[str] = []
    for res in results:
        for name in res["datasets"]:
            if name not in datasets:
                datasets.append(name)
    groups = [*datasets, "Avg."]
    series = []
    for res in results:
        cells = [res["datasets"].get(d) for d in datasets] + [res.get("average") or None]
        series.append((
            str(res["method"]),
            [100.0 * c["genacc"] if c else None for c in cells],
            [100.0 * c["em"] if c else None for c in cells],
        ))
    return groups, series


def write_results_plot(path: str | Path, results: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Write the grouped bar chart as PNG, atomically.  Each bar is labelled ``GenAcc`` with the EM
    underneath in parentheses, both in percent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups, series = plot_series(results)
    n_methods = max(1, len(series))
    width = 0.8 / n_methods
    fig = Figure(figsize=(max(6.0, 1.1 + len(groups) * (0.35 + 0.45 * n_methods)), 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i % 10}" for i in range(n_methods)]
    for j, (method, genacc, em) in enumerate(series):
        xs = [g + (j - (n_methods - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in genacc]
        bars = ax.bar(xs, heights, width=width * 0.95, label=method, color=colors[j])
        for b, v, e in zip(bars, genacc, em):
            if v is None:
                continue
            label = f"{v:.1f}" if e is None else f"{v:.1f}\n({e:.1f})"
            ax.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    if len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="0.6", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 132)  # room above 100 % for the labels and the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("GenAcc, % (EM in parentheses)")
    n = {d: r.get("n") for res in results for d, r in res["datasets"].items()}
    ax.set_title(title or "GenAcc (EM) per dataset; questions: " + ", ".join(f"{d} {v}" for d, v in n.items()),
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncols=min(n_methods, 4), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    target = Path(path)
    with atomic_open(target, "wb") as fh:
        fig.savefig(fh, format="png")
    return target
