"""Where a DeepLab training step spends its convolution time: each convolution shape of V3 ResNet-101 at
output stride 8 (512x512 input, batch 16 -> 64x64 features), timed alone forward + backward (input and
weight gradients) in bf16 channels-last, with the rate it reaches. For the atrous 3x3 convolutions it also
times the same arithmetic done the way the original DeepLab code did it (TensorFlow's ``atrous_conv2d``:
space-to-batch by the rate, an ordinary 3x3 convolution, batch-to-space) and an undilated 3x3 convolution of
the same shape; for 1x1 convolutions, the same product as one matrix multiplication.

    python benchmarks/conv_probe.py            # CUDA only
"""
from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table


console = Console(width=150)  # wide enough that logs keep each table row on one line


def space_to_batch(x: torch.Tensor, rate: int) -> torch.Tensor:
    """[N, C, H, W] -> [rate² N, C, H / rate, W / rate]: the rate x rate phase grids stacked in the batch."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // rate, rate, w // rate, rate).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(rate * rate * n, c, h // rate, w // rate)


def batch_to_space(x: torch.Tensor, rate: int) -> torch.Tensor:
    """Inverse of :func:`space_to_batch`."""
    b, c, h, w = x.shape
    n = b // (rate * rate)
    x = x.reshape(rate, rate, n, c, h, w).permute(2, 3, 4, 0, 5, 1)
    return x.reshape(n, c, h * rate, w * rate)


def _time_ms(fn, warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _fwd_bwd(forward, x: torch.Tensor, weight: torch.Tensor):
    def step() -> None:
        x.grad = weight.grad = None
        y = forward(x, weight)
        y.backward(torch.ones_like(y))

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=64, help="feature map side (512 / output stride 8)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    dev, n, s = torch.device("cuda"), args.batch, args.side
    # (what, in channels, out channels, kernel, rate, how many per step in V3-R101 OS8 with multi-grid (1,2,4))
    shapes = [
        ("layer3 1x1 reduce", 1024, 256, 1, 1, 22), ("layer3 3x3", 256, 256, 3, 2, 23),
        ("layer3 1x1 expand", 256, 1024, 1, 1, 23), ("layer4 1x1 reduce", 2048, 512, 1, 1, 2),
        ("layer4 3x3", 512, 512, 3, 4, 1), ("layer4 3x3", 512, 512, 3, 8, 1), ("layer4 3x3", 512, 512, 3, 16, 1),
        ("layer4 1x1 expand", 512, 2048, 1, 1, 3), ("ASPP 3x3", 2048, 256, 3, 12, 1),
        ("ASPP 3x3", 2048, 256, 3, 24, 1), ("ASPP 3x3", 2048, 256, 3, 36, 1), ("ASPP 1x1", 2048, 256, 1, 1, 1),
    ]
    table = Table(title=f"{torch.cuda.get_device_name(dev)}: conv fwd+bwd, bf16 channels-last, batch {n}, "
                        f"{s}x{s}")
    for col in ("conv", "rate", "x/step", "cuDNN ms", "TFLOP/s", "rate 1 ms", "space-to-batch ms", "as matmul ms"):
        table.add_column(col, justify="left" if col == "conv" else "right")
    rows = []
    for what, cin, cout, k, rate, count in shapes:
        x = torch.randn(n, cin, s, s, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w = torch.randn(cout, cin, k, k, device=dev, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last) * 0.01
        w.requires_grad_(True)
        flop = 3 * 2 * n * s * s * cin * cout * k * k  # forward + input grad + weight grad
        pad = rate * (k // 2)
        row = {"conv": what, "rate": rate, "count": count,
               "cudnn_ms": _time_ms(_fwd_bwd(partial(F.conv2d, padding=pad, dilation=rate), x, w))}
        row["tflops"] = flop / row["cudnn_ms"] / 1e9
        row["rate1_ms"] = row["s2b_ms"] = row["matmul_ms"] = float("nan")
        if k == 3 and rate > 1:
            row["rate1_ms"] = _time_ms(_fwd_bwd(partial(F.conv2d, padding=1), x, w))
            if s % rate == 0:
                def s2b(a: torch.Tensor, b: torch.Tensor, r: int = rate) -> torch.Tensor:
                    a = space_to_batch(a, r).contiguous(memory_format=torch.channels_last)
                    return batch_to_space(F.conv2d(a, b, padding=1), r)

                row["s2b_ms"] = _time_ms(_fwd_bwd(s2b, x, w))
        if k == 1:
            def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                flat = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])  # channels-last: a view, no copy
                return (flat @ b.view(b.shape[0], -1).t()).view(a.shape[0], a.shape[2], a.shape[3], -1)

            row["matmul_ms"] = _time_ms(_fwd_bwd(mm, x, w))
        rows.append(row)
        table.add_row(what, str(rate), str(count), f"{row['cudnn_ms']:.2f}", f"{row['tflops']:.0f}",
                      *(f"{row[key]:.2f}" for key in ("rate1_ms", "s2b_ms", "matmul_ms")))
        del x, w
    total = sum(r["cudnn_ms"] * r["count"] for r in rows)
    console.print(table)
    console.print(f"sum over one V3-R101 OS8 step's layer3/layer4/ASPP convolutions: {total:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
