"""Error analysis of an ablation's runs, from the per-image confusion matrices each evaluation saved: in
``<output_dir>/analysis/``, every finished run's images ranked by their own mIoU (``<run>_per_image.csv``, worst
first) and the gallery of its worst images (``<run>_worst.png``: image, ground truth, prediction, class legend)."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from ..evaluation.per_image import per_image_miou, ranked, read_per_image
from ..runs.folder import write_text_atomic
from .spec import PlannedRun, folder_name

FOLDER = "analysis"


def write_analysis(runs: list[PlannedRun], run_rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the ranking and copy the gallery of every done run's single-scale evaluation; returns the files."""
    written = []
    for run, row in zip(runs, run_rows):
        relative = (row.get("per_image") or {}).get("mIoU") if row.get("status") == "done" else None
        if relative is None or not (run.folder / relative).is_file():
            continue
        (out_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        matrices = read_per_image(run.folder / relative)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["rank", "id", "mIoU"])
        writer.writerows([rank, image, f"{value:.4f}"] for rank, (image, value) in
                         enumerate(ranked(matrices.ids, per_image_miou(matrices)), 1))
        target = out_dir / FOLDER / f"{folder_name(run.name)}_per_image.csv"
        write_text_atomic(target, text.getvalue())
        written.append(target)
        gallery = row.get("worst_images")
        if gallery and (run.folder / gallery).is_file():
            copy = out_dir / FOLDER / f"{folder_name(run.name)}_worst.png"
            shutil.copyfile(run.folder / gallery, copy)
            written.append(copy)
    return written
