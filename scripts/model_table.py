"""Print (or write into README.md and docs/design.md) the table of DeepLab variants: backbone, output stride,
atrous rates, parameters and multiply-adds at 513x513 beside the V3+ paper's; then every paper row at output
stride 16 and 8, and the ResNet-101 gap stage by stage. Multiply-adds (conv and matmul, forward, batch 1, 21 classes) are
counted on the meta device (no memory, no time).

    python scripts/model_table.py              # print the Markdown tables
    python scripts/model_table.py --readme     # also replace the tables between their markers (README.md,
                                               # docs/design.md)
    python scripts/model_table.py --check      # also run forward + backward at 513x513 on the CPU (slow)
"""
from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import torch

from deeplab_lightning.models import create_model, list_models
from deeplab_lightning.models.analysis import PAPER_MULTIPLY_ADDS, multiply_adds



def rates(model: torch.nn.Module) -> str:
    if hasattr(model, "aspp") and hasattr(model.aspp, "atrous_rates"):
        return "ASPP " + ("/".join(map(str, model.aspp.atrous_rates)) or "1x1 + pooling")
    if hasattr(model, "cascade"):
        grid = "(" + ",".join(map(str, model.cascade.multi_grid)) + ")"
        return "blocks 5-7 at " + "/".join(map(str, model.cascade.block_rates)) + " x " + grid
    return f"fc6 {model.classifier.fc6.dilation[0]}"


def backbone_name(model: torch.nn.Module) -> str:
    backbone = model.backbone
    if hasattr(backbone, "depth"):
        mg = getattr(backbone, "multi_grid", None)
        return f"ResNet-{backbone.depth}" + (f", MG ({','.join(map(str, mg))})" if mg and set(mg) != {1} else "")
    if hasattr(backbone, "encoder"):
        return f"timm {backbone.encoder.pretrained_cfg['architecture']}"
    return {"VGG16Backbone": "VGG-16 atrous", "Xception65Backbone": "aligned Xception-65",
            "MobileNetV2Backbone": "MobileNetV2", "MobileNetV3LargeBackbone": "MobileNetV3-Large"
            }[type(backbone).__name__]


# Examples of the models that take any backbone (create_model(name, backbone=...)).
ANY_BACKBONE_EXAMPLES = [("deeplabv3plus", "mobilenetv2"), ("deeplabv3plus", "timm/convnext_tiny"),
                         ("deeplabv3plus", "timm/efficientnet_b3"), ("deeplabv3plus", "timm/regnety_040"),
                         ("deeplabv3plus", "timm/resnest50d")]


def _meta_model(name: str, output_stride: int | None = None, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes=21, output_stride=output_stride, **kwargs).eval()


def row(name: str, backbone: str | None = None) -> list[str]:
    model = _meta_model(name, **({"backbone": backbone} if backbone else {}))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    paper = PAPER_MULTIPLY_ADDS.get((name, model.output_stride))
    label = f"`{name}`" + (f" + `{backbone}`" if backbone else "")
    return [label, backbone_name(model), str(model.output_stride), rates(model), f"{params:.1f}",
            f"{multiply_adds(model):.2f}", f"{paper:.2f}" if paper else ""]


def tf_resnet101_beta_macs(output_stride: int, decoder: bool, size: int = 513, classes: int = 21
                           ) -> dict[str, float]:
    """Multiply-adds (billions) per stage of the TF reference's ResNet-101 DeepLab, from its layer list:
    ``resnet_v1_101_beta`` (stem of three 3x3 convs, 64-64-128) with each block's stride in its *last* unit
    (TF-slim's ``resnet_v1``), 'SAME' padding, then the same ASPP and decoder as ours. An analytic count; the
    same function with a 7x7 stem and strides in the first unit gives exactly what FlopCounterMode measures
    on this project's networks (checked in :func:`gap_table`)."""
    return _resnet101_macs(output_stride, decoder, size, classes, tf_geometry=True)


def _resnet101_macs(output_stride: int, decoder: bool, size: int, classes: int, tf_geometry: bool
                    ) -> dict[str, float]:
    macs: dict[str, float] = {}

    def conv(stage: str, h: int, k: int, cin: int, cout: int) -> None:
        macs[stage] = macs.get(stage, 0.0) + h * h * k * k * cin * cout / 1e9

    h = math.ceil(size / 2)
    if tf_geometry:
        for cin, cout in ((3, 64), (64, 64), (64, 128)):
            conv("stem", h, 3, cin, cout)
    else:
        conv("stem", h, 7, 3, 64)
    cin, h, stride, low_h = (128 if tf_geometry else 64), math.ceil(h / 2), 4, 0
    for b, (base, units) in enumerate(((64, 3), (128, 4), (256, 23), (512, 3))):
        stage, depth = f"block{b + 1}", 4 * base
        for u in range(units):
            strided = (u == units - 1 if tf_geometry else u == 0 and b > 0) and b < 3 and 2 * stride <= output_stride
            out_h = math.ceil(h / 2) if strided else h
            if cin != depth:
                conv(stage, out_h, 1, cin, depth)  # projection shortcut
            conv(stage, h, 1, cin, base)  # TF and torchvision: the stride is in the 3x3 conv
            conv(stage, out_h, 3, base, base)
            conv(stage, out_h, 1, base, depth)
            if b == 0:
                low_h = out_h if not tf_geometry or u < units - 1 else low_h  # TF taps block1/unit_2
            h, cin, stride = out_h, depth, stride * (2 if strided else 1)
    conv("ASPP", h, 1, 2048, 256)
    for _ in range(3):
        conv("ASPP", h, 3, 2048, 256)
    conv("ASPP", 1, 1, 2048, 256)
    conv("ASPP", h, 1, 5 * 256, 256)
    if decoder:
        conv("decoder", low_h, 1, 256, 48)
        conv("decoder", low_h, 3, 256 + 48, 256)
        conv("decoder", low_h, 3, 256, 256)
        conv("decoder", low_h, 1, 256, classes)
    else:
        conv("ASPP", h, 1, 256, classes)
    return macs


def paper_table() -> str:
    """Every row of the V3+ paper's multiply-add tables: the paper's value, ours, and the TF geometry's."""
    lines = ["| model | output stride | V3+ paper (B) | ours (B) | ours / paper | TF geometry, counted (B) |",
             "|---|---|---|---|---|---|"]
    for (name, output_stride), paper in PAPER_MULTIPLY_ADDS.items():
        ours = multiply_adds(_meta_model(name, output_stride))
        tf = (f"{sum(tf_resnet101_beta_macs(output_stride, 'plus' in name).values()):.2f}"
              if "resnet" in name else "")
        lines.append(f"| `{name}` | {output_stride} | {paper:.2f} | {ours:.2f} | {ours / paper:.3f} | {tf} |")
    return "\n".join(lines)


def gap_table() -> str:
    """ResNet-101 V3+ stage by stage: ours (measured) vs the TF reference's geometry (counted)."""
    lines = ["| stage | ours OS16 (B) | TF geometry OS16 (B) | ours OS8 (B) | TF geometry OS8 (B) |",
             "|---|---|---|---|---|"]
    columns = []
    for output_stride in (16, 8):
        by_module = multiply_adds(_meta_model("deeplabv3plus_resnet101", output_stride), by_module=True)
        ours = {"stem": by_module["backbone.conv1"], "ASPP": by_module["aspp"], "decoder": by_module["decoder"]}
        ours |= {f"block{i}": by_module[f"backbone.layer{i}"] for i in range(1, 5)}
        counted = _resnet101_macs(output_stride, True, 513, 21, tf_geometry=False)
        if any(abs(counted[k] - ours[k]) > 1e-6 for k in ours):
            raise AssertionError(f"the analytic count {counted} disagrees with the measured {ours}")
        columns += [ours, tf_resnet101_beta_macs(output_stride, True)]
    for stage in ("stem", "block1", "block2", "block3", "block4", "ASPP", "decoder", "total"):
        cells = [sum(c.values()) if stage == "total" else c[stage] for c in columns]
        lines.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


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
    header = ["name", "backbone", "output stride (train)", "atrous rates", "params (M)", "multiply-adds @513 (B)",
              "V3+ paper (B)"]
    header += ["CPU fwd+bwd 2x513² (s)"] if run_check else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in list_models():
        cells = row(name) + ([check(name)] if run_check else [])
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    for name, backbone in ANY_BACKBONE_EXAMPLES:
        lines.append("| " + " | ".join(row(name, backbone) + ([""] if run_check else [])) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md and docs/design.md")
    parser.add_argument("--check", action="store_true", help="run forward + backward at 513x513 (CPU, slow)")
    args = parser.parse_args()
    tables = {"model-table": table(args.check), "macs-table": paper_table() + "\n\n" + gap_table()}
    print(tables["macs-table"])
    if args.readme:
        root = Path(__file__).resolve().parents[1]
        for marker, text in tables.items():
            document = root / ("README.md" if marker == "model-table" else "docs/design.md")
            content = document.read_text()
            begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
            if begin not in content:
                raise SystemExit(f"{document} has no {begin} ... {end} markers")
            content = re.sub(f"{re.escape(begin)}.*?{re.escape(end)}", f"{begin}\n{text}\n{end}", content,
                             flags=re.S)
            document.write_text(content)


if __name__ == "__main__":
    main()
