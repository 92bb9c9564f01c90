"""The report's line plots: B top-1 (mean ± sd over seeds) against a swept value or an evaluation shift."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path


def plot_sweep(points: dict[str, list[tuple[int, list[float]]]], param: str, title: str, path: Path,
               log_x: bool = True, baseline: float | None = None, secondary: dict | None = None) -> None:
    """Mean ± sd of each series against the swept value; ``baseline`` (ERM's mean) as a dashed line;
    ``secondary`` (value → G's content kept, %) on a right-hand axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    for name, series in points.items():
        xs = [v for v, _ in series]
        means = [statistics.mean(a) for _, a in series]
        sds = [statistics.stdev(a) if len(a) > 1 else 0.0 for _, a in series]
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=name.upper())
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="ERM")
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(sorted({v for series in points.values() for v, _ in series}))  # the measured values only
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(param)
    ax.set_ylabel("domain B test top-1 (%)")
    ax.set_title(textwrap.fill(title, 62), fontsize=8)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        right = ax.twinx()
        xs = sorted(secondary)
        line, = right.plot(xs, [secondary[x] for x in xs], color="tab:green", marker="s", linestyle=":",
                           label="G content kept")
        right.set_ylabel("G content kept (%)", color="tab:green")
        right.set_ylim(0, 100)
        handles, labels = handles + [line], labels + ["G content kept"]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
