"""Render docs/paper_rows.yaml (each paper table row -> config or ablation file and command, with its published
number from docs/paper_numbers.yaml) as the Markdown tables in docs/design.md between its markers.

    python scripts/paper_table.py            # print the tables
    python scripts/paper_table.py --write    # also replace them in docs/design.md
"""
from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "docs" / "paper_rows.yaml"
NUMBERS = REPO / "docs" / "paper_numbers.yaml"
ABLATIONS = REPO / "experiments" / "ablations"
PUBLISHED = REPO / "deeplab_lightning" / "ablate" / "published.yaml"  # the ablation files' `published:` ids
DESIGN = REPO / "docs" / "design.md"
BEGIN, END = "<!-- paper-rows:begin -->", "<!-- paper-rows:end -->"
COLUMNS = {"mIoU": "", "mIoU_os8": " (OS 8)", "mIoU_os16": " (OS 16)", "mIoU_os32": " (OS 32)",
           "mIoU_ms_flip": " (+MS/flip)"}  # an ablation report's columns, as the table names them


@functools.lru_cache(maxsize=1)
def published_rows() -> tuple[dict[str, Any], ...]:
    """Every published row of docs/paper_numbers.yaml, its table's keys merged in (read once)."""
    return tuple({**{k: v for k, v in table.items() if k != "rows"}, **row}
                 for table in yaml.safe_load(NUMBERS.read_text()) for row in table["rows"])


def published(paper: str, table: str, row: str, eval_os: int | None = None) -> dict[str, Any]:
    """The published row labelled ``row`` in ``paper``'s ``table`` (``eval_os`` tells apart rows of one label, as
    the model zoo's checkpoints evaluated two ways)."""
    found = [e for e in published_rows() if (e["paper"], e["table"], e["row"]) == (paper, table, row)
             and (eval_os is None or e.get("eval_os") == eval_os)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} rows of docs/paper_numbers.yaml are {paper} {table} {row!r}"
                          + (f" at eval OS {eval_os}" if eval_os else ""))
    return found[0]


def short_paper(name: str) -> str:
    """``DeepLab V3 (arXiv 1706.05587)`` (deeplab_lightning/ablate/published.yaml) -> ``V3``."""
    return name.split(" (")[0].replace("DeepLab ", "")


def ablation_numbers(row: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(run, report column, published row) for each number an ablation row reproduces: from the row's ``numbers``
    or from the ablation file's ``published:`` ids."""
    if "numbers" in row:
        return [(run, column, published(row["paper"], row["table"], label))
                for run, columns in row["numbers"].items() for column, label in columns.items()]
    spec = yaml.safe_load((ABLATIONS / f"{row['ablation']}.yaml").read_text())
    entries = {e["id"]: e for e in yaml.safe_load(PUBLISHED.read_text())}
    out = []
    for run, ids in (spec.get("published") or {}).items():
        for i in ids if isinstance(ids, list) else [ids]:
            e = entries[i]
            out.append((run, e["column"], published(short_paper(e["paper"]), e["table"], e["row"], e.get("eval_os"))))
    return out


def command(row: dict[str, Any]) -> str:
    """The row's command line: train with its config, then evaluate the final weights its way."""
    if row.get("ablation"):
        return f"`deeplab-lightning ablate experiments/ablations/{row['ablation']}.yaml`"
    config = f"experiments/{row['config']}.yaml"
    fit = f"`deeplab-lightning fit --config {config}`"
    if row.get("command", "fit") == "fit":
        return fit
    args = " ".join(row.get("args", []))
    ckpt = row.get("checkpoint") or f"runs/{row['config']}/checkpoints/last.ckpt"
    first = f"`deeplab-lightning convert {row['convert']} --output {ckpt}`" if row.get("convert") else fit
    return f"{first}, then `deeplab-lightning {row['command']} --config {config} {args} --ckpt_path {ckpt}`".replace(
        "  ", " ")


def number(row: dict[str, Any]) -> str:
    if row.get("ablation"):
        return "; ".join(f"{run}{COLUMNS[column]}: {entry['value']:.2f}" for run, column, entry in ablation_numbers(row))
    return f"{row['miou']:.2f}" if row.get("miou") is not None else "none"


def status(row: dict[str, Any]) -> str:
    if row.get("needs"):
        return f"no: needs {row['needs']}"
    if row.get("no_number"):
        return f"no published number: {row['no_number']}"
    return "yes"


def deviations(row: dict[str, Any], configs: dict[str, Any]) -> list[str]:
    """The deviations the row keeps: its own ``deviations`` (an ablation whose runs change the recipe) or its
    config's."""
    return row["deviations"] if "deviations" in row else configs[row["config"]].get("deviations", [])


def notes(row: dict[str, Any], configs: dict[str, Any]) -> str:
    return "; ".join([*([row["note"]] if row.get("note") else []), *deviations(row, configs)])


def rendered() -> str:
    spec = yaml.safe_load(ROWS.read_text())
    lines = ["| paper | table | row | paper mIoU | command | reproducible here | notes, deviations kept |",
             "|---|---|---|---|---|---|---|"]
    for row in spec["rows"]:
        lines.append(f"| {row['paper']} | {row['table']} | {row['row']} | {number(row)} | {command(row)} | "
                     f"{status(row)} | {notes(row, spec['configs'])} |")
    lines += ["", "Published rows on VOC, SBD and Cityscapes that no config or ablation file reproduces:", "",
              "| paper | table | rows (paper mIoU) | why not |", "|---|---|---|---|"]
    for item in spec["not_covered"]:
        rows = "; ".join(f"{label} ({published(item['paper'], item['table'], label)['value']:.2f})"
                         for label in item["rows"])
        lines.append(f"| {item['paper']} | {item['table']} | {rows} | {item['reason']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the tables in docs/design.md")
    args = parser.parse_args()
    text = rendered()
    print(text)
    if args.write:
        design = DESIGN.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        DESIGN.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, design, flags=re.S))


if __name__ == "__main__":
    main()
