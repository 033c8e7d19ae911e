"""From runs to rows: each row of an ablation aggregates the runs of its seeds into the mean, standard deviation,
n and 95 % interval of every metric (:mod:`.statistics`), its paired difference to the baseline row, the
published numbers it reproduces and what it cost in device-hours."""
from __future__ import annotations

from typing import Any

from ..evaluation.per_image import (PerImageMatrices, bootstrap_delta_interval, bootstrap_interval, image_deltas,
                                    read_per_image)
from .published import label, published_numbers
from .report import SUMMARISED
from .spec import Ablation, PlannedRun
from .statistics import paired, summarize

AVERAGED = ("train_img_s", "eval_img_s", "params_M")  # per-run measurements a row shows the mean of
SUMMED = ("train_device_h", "eval_device_h")  # costs a row adds up over its seeds
T_INTERVAL, BOOTSTRAP = "t over seeds", "bootstrap over images"  # how an interval was obtained


def row_results(ablation: Ablation, runs: list[PlannedRun], run_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report row per ablation row from the report rows of its runs (``status`` ``done`` or not): metrics
    summarised over the done seeds, missing seeds named, the paired difference to ``ablation.baseline``, the
    published numbers and the summed cost."""
    by_row: dict[str, list[tuple[PlannedRun, dict[str, Any]]]] = {}
    for run, result in zip(runs, run_rows):
        by_row.setdefault(run.row, []).append((run, result))
    rows = [_row(name, members) for name, members in by_row.items()]
    if ablation.baseline is not None:
        base = next(r for r in rows if r["run"] == ablation.baseline)
        for row in rows:
            if row is not base:
                _compare(row, base, by_row[row["run"]], by_row[base["run"]])
    for row in rows:
        _published(row, ablation.published.get(row["run"], []))
    return rows


def _row(name: str, members: list[tuple[PlannedRun, dict[str, Any]]]) -> dict[str, Any]:
    first_run = members[0][0]
    done = [(run, result) for run, result in members if result.get("status", "done") == "done"]
    # a row of one run keeps everything that run recorded (checkpoint, evaluation output stride ...)
    single = {k: v for k, v in members[0][1].items() if k not in ("row", "seed")} if len(members) == 1 else {}
    row: dict[str, Any] = {**single, "run": name, **first_run.grid_values}
    seeded = first_run.seed is not None
    if seeded:
        row["seeds"] = [run.seed for run, _ in done]
        missing = [run.seed for run, result in members if result.get("status", "done") != "done"]
        if missing:
            row["missing_seeds"] = missing
    if len(done) == len(members):
        row["status"] = "done"
    elif not seeded:
        row["status"] = members[0][1].get("status")
    else:
        row["status"] = f"{len(done)} of {len(members)} seeds done"
    row["n"] = len(done)
    if not done:
        return row
    results = [result for _, result in done]
    for key in SUMMARISED:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            summary = summarize(values)
            row[key] = summary.mean
            row.update({f"{key}_std": summary.std, f"{key}_low": summary.low, f"{key}_high": summary.high,
                        f"{key}_interval": T_INTERVAL if summary.n > 1 else None})
            if summary.n == 1:  # one run: how much the score depends on which images the split holds
                matrices = _per_image(*done[0], key)
                if matrices is not None:
                    row[f"{key}_low"], row[f"{key}_high"] = bootstrap_interval(matrices)
                    row[f"{key}_interval"] = BOOTSTRAP
    for key in AVERAGED:
        values = [r[key] for r in results if r.get(key) is not None]
        row[key] = sum(values) / len(values) if values else None
    for key in SUMMED:
        values = [r[key] for r in results if r.get(key) is not None]
        row[key] = sum(values) if values else None
    row["steps"] = min(r.get("steps") or 0 for r in results)
    row["train_img_s_steps"] = min(r.get("train_img_s_steps") or 0 for r in results)
    for key in ("trimap_curve", "trimap_curve_crf"):  # the mean curve over seeds, per band width
        curves = [r[key] for r in results if r.get(key)]
        if curves:
            row[key] = [[width, sum(c[i][1] for c in curves) / len(curves)] for i, (width, _) in enumerate(curves[0])]
    row.update({k: results[0][k] for k in ("trimap_width", "trimap_band") if results[0].get(k) is not None})
    classes = [r["predicted_classes"] for r in results if r.get("predicted_classes") is not None]
    if classes:
        row["predicted_classes"] = min(classes)
    return row


def _compare(row: dict[str, Any], base: dict[str, Any], members: list, base_members: list) -> None:
    """The paired differences of ``row`` to the baseline, per metric, over their common done seeds."""
    def by_seed(group: list, key: str) -> dict[int, float]:
        return {(run.seed if run.seed is not None else 0): result[key] for run, result in group
                if result.get("status", "done") == "done" and result.get(key) is not None}

    for key in SUMMARISED:
        difference = paired(by_seed(members, key), by_seed(base_members, key))
        if difference is None:
            continue
        row.update({f"{key}_delta": difference.mean, f"{key}_delta_low": difference.low,
                    f"{key}_delta_high": difference.high, f"{key}_p": difference.p,
                    f"{key}_paired_seeds": list(difference.seeds),
                    f"{key}_delta_interval": T_INTERVAL if difference.n > 1 else None})
        distinguishable, how = difference.distinguishable, f"{difference.n} seed{'s' if difference.n != 1 else ''}"
        if difference.n == 1:  # one seed each: the paired bootstrap over the images both evaluated
            seed = difference.seeds[0]
            ours = next(((r, x) for r, x in members if (r.seed or 0) == seed), None)
            theirs = next(((r, x) for r, x in base_members if (r.seed or 0) == seed), None)
            a, b = (_per_image(*ours, key) if ours else None), (_per_image(*theirs, key) if theirs else None)
            if a is not None and b is not None and set(a.ids.tolist()) == set(b.ids.tolist()):
                low, high = bootstrap_delta_interval(b, a)
                row.update({f"{key}_delta_low": low, f"{key}_delta_high": high, f"{key}_delta_interval": BOOTSTRAP})
                distinguishable, how = not (low <= 0.0 <= high), "one seed (bootstrap over images)"
                if key == "mIoU":
                    row["image_changes"] = image_changes(b, a)
        if key == "mIoU":
            row["vs_baseline"] = verdict(distinguishable, how)


def verdict(distinguishable: bool | None, how: str) -> str:
    """The plain-words reading of a paired interval obtained ``how`` ("3 seeds", ...)."""
    if distinguishable is None:
        return f"no interval with {how}"
    return f"differs from the baseline ({how})" if distinguishable else \
        f"not distinguishable from the baseline with {how}"


def _per_image(run: PlannedRun, result: dict[str, Any], key: str) -> PerImageMatrices | None:
    """The per-image confusion matrices behind ``result[key]``, or None when the run saved none (or they are
    unreadable: the row then has no bootstrap interval)."""
    relative = (result.get("per_image") or {}).get(key)
    if relative is None:
        return None
    try:
        return read_per_image(run.folder / relative)
    except (OSError, ValueError):
        return None


def image_changes(base: PerImageMatrices, other: PerImageMatrices, count: int = 5) -> dict[str, list]:
    """The images a row improves and breaks most relative to the baseline: ``count`` (id, per-image mIoU change
    in points) each, largest first."""
    deltas = image_deltas(base, other)
    pairs = [(str(i), 100 * float(d)) for i, d in zip(deltas.ids, deltas.delta) if d == d]
    return {"improves": sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:count],
            "breaks": sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:count]}


def _published(row: dict[str, Any], ids: list[str]) -> None:
    """Each published number of ``row``, with ours - published (in percentage points) where the row has it."""
    entries = []
    for entry in (published_numbers()[i] for i in ids):
        ours = row.get(entry["column"])
        entries.append({"id": entry["id"], "label": label(entry), "column": entry["column"], "value": entry["value"],
                        "ours_minus_published": None if ours is None else 100 * ours - entry["value"],
                        "source": entry["source"]})
    if entries:
        row["published"] = entries
