"""Render docs/paper_rows.yaml (each paper table row -> config and command) as the Markdown table in
docs/design.md between its markers.

    python scripts/paper_table.py            # print the table
    python scripts/paper_table.py --write    # also replace it in docs/design.md
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "docs" / "paper_rows.yaml"
DESIGN = REPO / "docs" / "design.md"
BEGIN, END = "<!-- paper-rows:begin -->", "<!-- paper-rows:end -->"


def command(row: dict) -> str:
    """The row's command line: train with its config, then evaluate the final weights its way."""
    config = f"experiments/{row['config']}.yaml"
    if row.get("ablation"):
        return f"`deeplab-lightning ablate experiments/ablations/{row['ablation']}.yaml`"
    fit = f"`deeplab-lightning fit --config {config}`"
    if row.get("command", "fit") == "fit":
        return fit
    args = " ".join(row.get("args", []))
    ckpt = f"runs/{row['config']}/checkpoints/last.ckpt"
    return f"{fit}, then `deeplab-lightning {row['command']} --config {config} {args} --ckpt_path {ckpt}`".replace(
        "  ", " ")


def table(rows: list[dict]) -> str:
    lines = ["| paper | table | row | paper mIoU | command | reproducible here |", "|---|---|---|---|---|---|"]
    for row in rows:
        miou = f"{row['miou']:.2f}" if row.get("miou") is not None else "see the paper"
        lines.append(f"| {row['paper']} | {row['table']} | {row['row']} | {miou} | {command(row)} | "
                     f"{'no: needs ' + row['needs'] if row.get('needs') else 'yes'} |")
    return "\n".join(lines)


def rendered() -> str:
    return table(yaml.safe_load(ROWS.read_text())["rows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in docs/design.md")
    args = parser.parse_args()
    text = rendered()
    print(text)
    if args.write:
        design = DESIGN.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        DESIGN.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, design, flags=re.S))


if __name__ == "__main__":
    main()
