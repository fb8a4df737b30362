"""One figure comparing populations: EDFs of error, and error against FLOPs/params.

Left panel: the EDF of each population's validation error (a curve further up and to
the left is the better space), optionally also before fine-tuning (dashed). Right panel: each subnetwork's error against its
FLOPs-to-parameters ratio, the best ``top`` fraction outlined -- He & Xiao's finding is
that those cluster around one ratio. Written as a PNG (matplotlib's Agg backend).

>>> import numpy as np, tempfile, pathlib
>>> from bayesprune.spaces.population import Population
>>> pop = Population("toy", ("fc",), np.array([[2], [4]]), np.array([0.3, 0.1]),
...                  np.array([0.35, 0.2]), np.array([10.0, 20.0]), np.array([5.0, 8.0]), 40.0, 16.0)
>>> out = plot_edfs([pop], pathlib.Path(tempfile.mkdtemp()) / "edf.png", inherited=True)
>>> out.suffix, out.stat().st_size > 0
('.png', True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bayesprune.errors import ConfigError
from bayesprune.spaces.edf import edf  # noqa: E402
from bayesprune.spaces.population import Population  # noqa: E402


def plot_edfs(
    populations: Sequence[Population],
    path: str | os.PathLike,
    *,
    top: float = 0.1,
    inherited: bool = False,
    xlim: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Write the two-panel figure for ``populations`` to ``path`` (PNG) and return it.

    :param populations: measured populations (e.g. uniform and posterior-induced).
    :param path: where to write the PNG (parent folders are created).
    :param top: fraction of each population outlined as its best in the right panel.
    :param inherited: also draw (dashed) the EDF of the errors before fine-tuning.
    :param xlim: error range of the EDF panel (default: all errors; a few bad outliers
        can squeeze the interesting part to one side).
    :param title: figure title.
    """
    if not populations:
        raise ConfigError("plot_edfs: populations is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = [p.errors for p in populations]
    if inherited:
        shown += [p.errors_inherited for p in populations]
    lo = min(float(e.min()) for e in shown)
    hi = max(float(e.max()) for e in shown)
    pad = 0.05 * (hi - lo) + 1e-3
    grid = np.linspace(lo - pad, hi + pad, 400)
    fig, (ax_edf, ax_ratio) = plt.subplots(1, 2, figsize=(10, 4))
    for i, pop in enumerate(populations):
        color = f"C{i}"
        label = f"{pop.name} (n={len(pop)}, median {100 * np.median(pop.errors):.1f}%)"
        ax_edf.step(grid, pop.edf(grid), where="post", color=color, label=label)
        if inherited:
            before = edf(pop.errors_inherited, grid)
            label = f"{pop.name}, before fine-tune"
            ax_edf.step(grid, before, where="post", color=color, ls="--", alpha=0.7, label=label)
        best = pop.best(top)
        ax_ratio.scatter(pop.ratio, 100 * pop.errors, s=14, color=color, alpha=0.6, label=pop.name)
        ax_ratio.scatter(
            pop.ratio[best], 100 * pop.errors[best], s=40, facecolors="none", edgecolors="k"
        )
    ax_edf.set_xlabel("validation error")
    ax_edf.set_ylabel("fraction of subnetworks with error ≤ x (EDF)")
    ax_edf.set_ylim(0, 1.02)
    if xlim is not None:
        ax_edf.set_xlim(*xlim)
    ax_edf.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax_edf.legend(loc="lower right", fontsize=8)
    ax_edf.grid(alpha=0.3)
    ax_ratio.set_xscale("log")
    ax_ratio.set_xlabel("FLOPs per parameter")
    ax_ratio.set_ylabel("validation error (%)")
    ax_ratio.set_title(f"circled: best {100 * top:.0f}% of each space", fontsize=9)
    ax_ratio.legend(fontsize=8)
    ax_ratio.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
