"""Print (or write into README.md) the table of DeepLab variants: backbone, output stride, atrous rates,
parameters and GFLOPs at 513x513. FLOPs are counted on the meta device (no memory, no time), one multiply-add
counted as 2 FLOPs, forward pass, batch 1, 21 classes.

    python scripts/model_table.py              # print the Markdown table
    python scripts/model_table.py --readme     # also replace the table between the markers in README.md
    python scripts/model_table.py --check      # also run forward + backward at 513x513 on the CPU (slow)
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from deeplab_lightning.models import create_model, list_models

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"


def rates(model: torch.nn.Module) -> str:
    if hasattr(model, "aspp") and hasattr(model.aspp, "atrous_rates"):
        return "ASPP " + "/".join(map(str, model.aspp.atrous_rates))
    if hasattr(model, "cascade"):
        grid = "(" + ",".join(map(str, model.cascade.multi_grid)) + ")"
        return "blocks 5-7 at " + "/".join(map(str, model.cascade.block_rates)) + " x " + grid
    return f"fc6 {model.classifier.fc6.dilation[0]}"


def backbone_name(model: torch.nn.Module) -> str:
    backbone = model.backbone
    if hasattr(backbone, "depth"):
        mg = getattr(backbone, "multi_grid", None)
        return f"ResNet-{backbone.depth}" + (f", MG ({','.join(map(str, mg))})" if mg and set(mg) != {1} else "")
    return {"VGG16Backbone": "VGG-16 atrous", "Xception65Backbone": "aligned Xception-65"}[type(backbone).__name__]


def row(name: str) -> list[str]:
    with torch.device("meta"):
        model = create_model(name, num_classes=21).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 513, 513))
    return [f"`{name}`", backbone_name(model), str(model.output_stride), rates(model), f"{params:.1f}",
            f"{counter.get_total_flops() / 1e9:.0f}"]


def check(name: str, size: int = 513) -> str:
    """Forward + backward of one image at ``size`` on the CPU; returns the seconds it took."""
    model = create_model(name, num_classes=21).train()
    start = time.perf_counter()
    logits = model(torch.randn(2, 3, size, size))
    if logits.shape != (2, 21, size, size):
        raise AssertionError(f"{name}: logits {tuple(logits.shape)} at input {size}x{size}")
    logits.mean().backward()
    return f"{time.perf_counter() - start:.1f}"


def table(run_check: bool = False) -> str:
    header = ["name", "backbone", "output stride (train)", "atrous rates", "params (M)", "GFLOPs @513"]
    header += ["CPU fwd+bwd 2x513² (s)"] if run_check else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in list_models():
        cells = row(name) + ([check(name)] if run_check else [])
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--check", action="store_true", help="run forward + backward at 513x513 (CPU, slow)")
    args = parser.parse_args()
    text = table(args.check)
    if args.readme:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        content = readme.read_text()
        if BEGIN not in content:
            raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
        new = re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{text}\n{END}", content, flags=re.S)
        readme.write_text(new)


if __name__ == "__main__":
    main()
