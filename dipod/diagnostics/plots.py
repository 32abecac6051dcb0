"""PNG line plots of a metric against samples: one line per variant, mean +- std band over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

Series = tuple[np.ndarray, np.ndarray]
"""(x, y) of one run, x increasing."""


def mean_std_over_runs(runs: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs on a common x grid (the union of their x within the range all runs cover).

    Runs of one variant usually log at the same sample counts, so the interpolation is exact there;
    it only matters when seeds log at different counts (episodes of different lengths).
    """
    low = max(float(x[0]) for x, _ in runs)
    high = min(float(x[-1]) for x, _ in runs)
    grid = np.unique(np.concatenate([x for x, _ in runs]))
    grid = grid[(grid >= low) & (grid <= high)]
    values = np.stack([np.interp(grid, x, y) for x, y in runs])  # (R, X)
    return grid, values.mean(0), values.std(0)


def plot_metric(
    variants: dict[str, list[Series]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colors: dict[str, str] | None = None,
) -> Path:
    """Write one PNG: per variant the mean over its runs as a line and +- one std as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (label, runs) in enumerate(sorted(variants.items())):
        runs = [r for r in runs if len(r[0])]
        if not runs:
            continue
        color = (colors or {}).get(label, f"C{i}")
        grid, mean, std = mean_std_over_runs(runs)
        seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
        marker = "o" if len(grid) <= 12 else None
        ax.plot(grid, mean, color=color, marker=marker, markersize=3, linewidth=1.8, label=f"{label} ({seeds})")
        if len(runs) > 1:
            ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="mean ± std over seeds", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
