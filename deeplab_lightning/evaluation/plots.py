"""Matplotlib figures shared by the wandb report, the ablation report and the notebook (``display(fig)``)."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
from matplotlib.container import BarContainer
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


HATCHED = {"facecolor": "white", "edgecolor": "dimgray", "hatch": "///", "linewidth": 0.8}


def _labels(values: Sequence[float]) -> list[str]:
    return [f"{v:.1f}" if np.isfinite(v) else "" for v in values]


def ablation_figure(rows: Sequence[dict], metrics: dict[str, str], title: str,
                    noisy_throughput: Collection[str] = (), suspect: Collection[str] = ()) -> Figure:
    """Three panels over the runs of an ablation: mIoU (one bar per evaluation variant present in ``rows``),
    training images/s and parameters (M). ``metrics`` maps row keys to legend labels; a run whose ``status`` is not
    ``done`` is named with its status and has no bars; the images/s of the runs named in ``noisy_throughput``
    (measured over too few steps) are drawn hatched and pale, and the panel says they are too noisy to compare;
    the mIoU bars of the runs named in ``suspect`` are hatched and their ``note`` is printed under the figure."""
    present = [k for k in metrics if any(row.get(k) is not None for row in rows)]
    y = np.arange(len(rows))
    fig = Figure(figsize=(13, 1.8 + 0.5 * len(rows)))
    axes = fig.subplots(1, 3, sharey=True, gridspec_kw={"width_ratios": [2, 1, 1]})
    height = 0.8 / max(len(present), 1)
    for i, key in enumerate(present):
        values = [100 * row[key] if row.get(key) is not None else np.nan for row in rows]
        errors = np.array([[v - 100 * row[f"{key}_low"], 100 * row[f"{key}_high"] - v]
                           if row.get(f"{key}_low") is not None else [np.nan, np.nan]
                           for v, row in zip(values, rows)]).T  # the 95 % interval of a mean over seeds
        bars = axes[0].barh(y + (i - (len(present) - 1) / 2) * height, values, height, label=metrics[key],
                            xerr=errors if np.isfinite(errors).any() else None, capsize=3,
                            error_kw={"elinewidth": 1, "ecolor": "black"})
        axes[0].bar_label(bars, labels=_labels(values), fontsize=7, padding=2)
    intervals = any(row.get(f"{key}_low") is not None for row in rows for key in present)
    axes[0].set_xlabel("val mIoU (%)" + (", mean over seeds with its 95 % interval" if intervals else ""))
    if present:
        axes[0].legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(present), frameon=False)
    for bars in (c for c in axes[0].containers if isinstance(c, BarContainer)):  # after the legend: plain keys
        for bar, row in zip(bars, rows):
            if row["run"] in suspect:
                bar.set(hatch="///", edgecolor="white", linewidth=0)
    for ax, key, label in ((axes[1], "train_img_s", "train images / s"), (axes[2], "params_M", "parameters (M)")):
        values = [row.get(key) if row.get(key) is not None else np.nan for row in rows]
        bars = ax.barh(y, values, 0.6, color="tab:gray")
        ax.bar_label(bars, labels=_labels(values), fontsize=7, padding=2)
        if key == "train_img_s" and noisy_throughput:
            for bar, row in zip(bars, rows):
                if row["run"] in noisy_throughput:
                    bar.set(**HATCHED)
            label += "\n(hatched: too few steps measured to compare)"
        ax.set_xlabel(label)
    for ax in axes:  # room for the bar labels
        ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
    axes[0].set_yticks(y, [f"{row['run']} ({row['status']})" if row.get("status", "done") != "done" else row["run"]
                           for row in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    notes = [f"{row['run']}: {row['note']}" for row in rows if row["run"] in suspect and row.get("note")]
    if notes:  # under the panels, as many lines as runs noted
        fig.set_figheight(fig.get_figheight() + 0.22 * (len(notes) + 1))
        fig.text(0.01, 0.01, "\n".join(["Hatched mIoU bars:", *notes]), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.22 * (len(notes) + 1.5) / fig.get_figheight() if notes else 0, 1, 1))
    return fig


def trimap_figure(rows: Sequence[dict], title: str) -> Figure:
    """mIoU within a band of each width around object boundaries (V1 Fig. 5, V3+ Fig. 5a) for every row that
    measured it (``trimap_curve``: [[width px, mIoU], ...]), after the dense CRF dashed in the same colour."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, row in enumerate(r for r in rows if r.get("trimap_curve")):
        colour = f"C{i % 10}"
        for key, style, suffix in (("trimap_curve", "-", ""), ("trimap_curve_crf", "--", " +CRF")):
            if row.get(key):
                widths, values = zip(*row[key])
                ax.plot(widths, [100 * v for v in values], style, color=colour, marker="o", markersize=3,
                        label=f"{row['run']}{suffix}")
    band = next((r.get("trimap_band") for r in rows if r.get("trimap_band")), None)
    ax.set_xlabel("band width around " + ("void pixels" if band == "void" else "label boundaries") + " (px)")
    ax.set_ylabel("mIoU within the band (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
