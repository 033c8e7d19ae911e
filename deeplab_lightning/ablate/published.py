"""Published numbers an ablation row reproduces: ``published: {ROW: ID or [IDs]}`` in an ablation file names entries
of ``published.yaml`` (paper, table, row label, the report column it compares with, the value and its source); the
report shows each beside the row's own number and their difference."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).with_name("published.yaml")


@functools.cache
def published_numbers() -> dict[str, dict[str, Any]]:
    """Every published number by id."""
    return {entry["id"]: entry for entry in yaml.safe_load(DATA.read_text())}


def check_ids(ids: list[Any], where: str) -> None:
    """Raise naming ``where`` and the known ids when one of ``ids`` is unknown."""
    unknown = [i for i in ids if i not in published_numbers()]
    if unknown:
        raise ValueError(f"{where}: unknown published number(s) {', '.join(map(repr, unknown))}; the ids are in "
                         f"{DATA} (e.g. {', '.join(list(published_numbers())[:3])})")


def label(entry: dict[str, Any]) -> str:
    """``V3 Table 5, MG(1, 2, 4) + ASPP(6, 12, 18): 76.58``."""
    paper = entry["paper"].split(" (")[0].replace("DeepLab ", "")
    return f"{paper} {entry['table']}, {entry['row']}: {entry['value']:.2f}"
