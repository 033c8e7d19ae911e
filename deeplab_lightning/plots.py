"""Matplotlib figures shared by the wandb report, the ablation report and the notebook (``display(fig)``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state, fine in notebooks


def confusion_matrix_figure(confmat: torch.Tensor | np.ndarray, class_names: Sequence[str],
                            title: str = "Confusion matrix (rows: truth, normalised)") -> Figure:
    """Heatmap of a [C, C] confusion matrix (rows: ground truth, columns: prediction), each row divided by
    its number of pixels so that the diagonal is the per-class recall."""
    counts = np.asarray(confmat, dtype=np.float64)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig = Figure(figsize=(2 + 0.45 * n, 1.6 + 0.45 * n))
    ax = fig.subplots()
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if rows[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
