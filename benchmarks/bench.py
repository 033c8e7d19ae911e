"""Training and inference throughput of this project's DeepLabs next to their peers, in one process.

    python benchmarks/bench.py --device cuda                 # real shapes: 512x512, batch 16, 21 classes
    python benchmarks/bench.py --device cpu                  # smoke run: 96x96, batch 2, 2 timed steps
    python benchmarks/bench.py --device cuda --json out.json --models ours_v3_r101_os8 tv_v3_r101_os8

A train step is forward + cross-entropy + backward + SGD step (momentum 0.9). Modes: ``fp32``, ``bf16_cl``
(bf16 autocast + channels-last) and ``bf16_cl_compile`` (the same, network under ``torch.compile``). Peers:
torchvision's ``deeplabv3_resnet101`` (output stride 8, as torchvision fixes it; ``ours_v3_r101_os8_tvhead``
is ours with torchvision's extra 3x3 head conv, the same architecture) and, when installed,
segmentation_models_pytorch's ``DeepLabV3Plus(resnet101)`` (output stride 16; ``ours_as_smp_v3plus_r101_os16`` is
its architecture built from this project's backbone and layers, see ``smp_layout.py``). Peak memory is CUDA's max
allocated memory per train step (n/a on CPU).

Further sections: fit throughput through Lightning (``SegmentationModule`` + ``Trainer``) vs a plain PyTorch
loop on the same model and batches; 6-scale + flip latency vs a naive loop; dense CRF time per image vs
pydensecrf2 (``crf_bench.py``).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from deeplab_lightning.evaluation import predict_multiscale
from deeplab_lightning.models import create_model
from smp_layout import SmpLayoutV3Plus


console = Console(width=150)  # wide enough that logs keep each table row on one line


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep its ``"out"``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _torchvision_v3() -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet101

    return _OutOnly(deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=False))


def _smp_v3plus() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus("resnet101", encoder_weights=None, classes=21)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "ours_v3_r101_os8": lambda: create_model("deeplabv3_resnet101", 21, output_stride=8),
    "tv_v3_r101_os8": _torchvision_v3,
    "ours_v3_r101_os8_tvhead": lambda: create_model("deeplabv3_resnet101", 21, output_stride=8, extra_conv=True),
    "ours_v3plus_r101_os16": lambda: create_model("deeplabv3plus_resnet101", 21, output_stride=16),
    "smp_v3plus_r101_os16": _smp_v3plus,
    "ours_as_smp_v3plus_r101_os16": SmpLayoutV3Plus,  # smp's architecture built from ours (smp_layout.py)
}


MODES = ("fp32", "bf16_cl", "bf16_cl_compile")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mode(mode: str, device: torch.device) -> tuple[torch.memory_format, torch.autocast]:
    """(memory format, autocast context) of a benchmark mode."""
    mixed = mode.startswith("bf16")
    memory_format = torch.channels_last if mixed else torch.contiguous_format
    return memory_format, torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                autocast: torch.autocast) -> None:
    """Forward + cross-entropy + backward + optimizer step."""
    with autocast:
        loss = F.cross_entropy(model(x), y, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(build: Callable[[], nn.Module], mode: str, device: torch.device, size: int, batch: int, steps: int,
            warmup: int) -> dict[str, float]:
    """Train and eval throughput of one model in one mode."""
    torch.manual_seed(0)
    model = build().to(device)
    memory_format, autocast = _mode(mode, device)
    model = model.to(memory_format=memory_format)
    if mode.endswith("compile"):
        model.compile()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 21, (batch, size, size), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:  # after cudnn's algorithm search, whose workspaces would inflate the peak
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        _train_step(model, opt, x, y, autocast)
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model.eval()
    with torch.no_grad(), autocast:
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                start = time.perf_counter()
            model(x)
    _sync(device)
    eval_s = (time.perf_counter() - start) / steps
    del model, opt
    return {"train_img_s": batch / step_s, "step_ms": 1000 * step_s, "peak_gib": peak, "eval_img_s": batch / eval_s}


def multiscale_latency(device: torch.device, size: int, repeats: int, mode: str) -> dict[str, float]:
    """Seconds per image of 6-scale + flip inference: ``predict_multiscale`` (one forward per scale, flip in
    the batch) vs a naive loop of 12 single forwards, on V3+ ResNet-101 OS16 (bf16 autocast in ``bf16_cl``)."""
    model = create_model("deeplabv3plus_resnet101", 21).to(device).eval()
    memory_format, autocast = _mode(mode, device)
    model = model.to(memory_format=memory_format)
    scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    x = torch.randn(1, 3, size, size, device=device)

    def naive() -> torch.Tensor:
        total = 0
        for s in scales:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            for flip in (False, True):
                p = model(xs.flip(-1) if flip else xs).float().softmax(1)
                p = p.flip(-1) if flip else p
                total = total + F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False)
        return total / 12

    out = {}
    for name, fn in (("naive_s", naive), ("ours_s", lambda: predict_multiscale(model, x, scales, flip=True))):
        with torch.no_grad(), autocast:
            fn()
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            _sync(device)
        out[name] = (time.perf_counter() - start) / repeats
    return out


class _HostSyncCounter(L.Callback):
    """Counts the host syncs that ``torch.cuda``'s sync debug mode reported (as warnings, into ``caught``)
    from the start of training step ``first`` to the start of step ``first + steps``."""

    def __init__(self, first: int, steps: int, caught: list[warnings.WarningMessage]) -> None:
        self.first, self.steps, self.caught = first, steps, caught
        self.count, self._start, self.sites = 0, 0, []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.first:
            self._start = len(self.caught)
        elif trainer.global_step == self.first + self.steps:
            syncs = [w for w in self.caught[self._start:] if "synchroniz" in str(w.message)]
            self.count, self.sites = len(syncs), sorted({f"{w.filename}:{w.lineno}" for w in syncs})


def loop_overhead(arch: str, mode: str, device: torch.device, size: int, batch: int, steps: int,
                  warmup: int) -> dict[str, float]:
    """Training images/s of the same model on the same batches: a plain PyTorch loop vs Lightning's fit of
    ``SegmentationModule`` (no logger, checkpoint, progress bar or validation) with its default loss check
    (``nonfinite_loss: raise``, read one step late, no host sync) and with ``skip`` (the step waits for the
    loss on the host). On CUDA, also the host syncs per step of the default fit."""
    from deeplab_lightning.callbacks import PolyLR, ProgressBar, Throughput
    from deeplab_lightning.module import SegmentationModule

    generator = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(3, size, size, generator=generator),
             "mask": torch.randint(0, 21, (size, size), generator=generator)} for _ in range(batch)]
    loader = torch.utils.data.DataLoader(data * (warmup + steps), batch_size=batch, pin_memory=device.type == "cuda")
    memory_format, autocast = _mode(mode, device)
    compile_net = mode.endswith("compile")

    torch.manual_seed(0)
    model = create_model(arch, 21).to(device).to(memory_format=memory_format)
    if compile_net:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for i, b in enumerate(loader):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x = b["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        _train_step(model, opt, x, b["mask"].to(device, non_blocking=True), autocast)
    _sync(device)
    result = {"plain_img_s": batch * steps / (time.perf_counter() - start)}
    del model, opt

    def fit(nonfinite_loss: str, *callbacks: L.Callback) -> None:
        torch.manual_seed(0)
        module = SegmentationModule(create_model(arch, 21), 21, lr=1e-3, head_lr_mult=1.0, weight_decay=0.0,
                                    channels_last=memory_format == torch.channels_last, compile=compile_net,
                                    nonfinite_loss=nonfinite_loss)
        progress_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=warmup + steps, limit_val_batches=0,
                            precision="bf16-mixed" if mode.startswith("bf16") else "32-true", logger=False,
                            enable_checkpointing=False, enable_progress_bar=progress_bar,
                            enable_model_summary=False, callbacks=list(callbacks))
        trainer.fit(module, train_dataloaders=loader)

    for key, nonfinite_loss in (("lightning_img_s", "raise"), ("lightning_sync_img_s", "skip")):
        throughput = Throughput(warmup_steps=warmup)
        fit(nonfinite_loss, throughput)
        result[key] = throughput.img_per_s
    if device.type == "cuda" and steps > 1:  # counted in a fit with the experiment configs' callbacks
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            counter = _HostSyncCounter(first=warmup, steps=steps - 1, caught=caught)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit("raise", counter, PolyLR(), ProgressBar())
            finally:
                torch.cuda.set_sync_debug_mode(0)
        result["lightning_syncs_per_step"] = counter.count / counter.steps
        result["lightning_sync_sites"] = counter.sites
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, help="square input side (default 512 on cuda, 96 on cpu)")
    parser.add_argument("--batch", type=int, help="batch size (default 16 on cuda, 2 on cpu)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20 on cuda, 2 on cpu)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 on cuda, 1 on cpu)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16_cl"], choices=MODES)
    parser.add_argument("--loop-arch", default=None, help="model of the Lightning-vs-plain-loop section "
                        "(default deeplabv3plus_resnet101 on cuda, deeplabv3plus_resnet18 on cpu); 'none' skips it")
    parser.add_argument("--loop-steps", type=int, help="timed steps of the loop section (default: --steps)")
    parser.add_argument("--crf", nargs="*", default=None, help="CRF cases HxWxC (default 375x500x21 on cuda, "
                        "120x160x21 on cpu); with no value, skip the CRF section")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--ms-size", type=int, help="multi-scale latency image side (default 513 on cuda, 64 on cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size, batch = args.size or (512 if cuda else 96), args.batch or (16 if cuda else 2)
    steps, warmup = args.steps or (20 if cuda else 2), args.warmup or (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    table = Table(title=f"{name}, {size}x{size}, batch {batch}, 21 classes, {steps} timed steps")
    for column in ("model", "mode", "train img/s", "step ms", "peak GiB", "eval img/s"):
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    results = []
    for model_name in args.models:
        for mode in args.modes:
            try:
                r = measure(MODELS[model_name], mode, device, size, batch, steps, warmup)
            except ImportError as err:
                table.add_row(model_name, mode, f"skipped: {err.name} not installed", "", "", "")
                break
            results.append({"model": model_name, "mode": mode, **r})
            table.add_row(model_name, mode, f"{r['train_img_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['peak_gib']:.2f}",
                          f"{r['eval_img_s']:.1f}")
            if cuda:
                torch.cuda.empty_cache()
    console.print(table)
    ms_size = args.ms_size or (513 if cuda else 64)
    ms_table = Table(title=f"{name}: 6 scales + flip, one {ms_size}x{ms_size} image, V3+ ResNet-101 OS16")
    for column in ("mode", "naive loop (ms)", "predict_multiscale (ms)", "ratio"):
        ms_table.add_column(column, justify="left" if column == "mode" else "right")
    multiscale = {}
    for mode in [m for m in args.modes if not m.endswith("compile")]:  # eager inference only
        r = multiscale_latency(device, ms_size, steps, mode)
        multiscale[mode] = r
        ms_table.add_row(mode, f"{1000 * r['naive_s']:.1f}", f"{1000 * r['ours_s']:.1f}",
                         f"{r['ours_s'] / r['naive_s']:.2f}")
    console.print(ms_table)
    loop = {}
    loop_arch = args.loop_arch or ("deeplabv3plus_resnet101" if cuda else "deeplabv3plus_resnet18")
    if loop_arch != "none":
        loop_table = Table(title=f"{name}: fit throughput of {loop_arch}, plain loop vs Lightning, "
                                 f"{size}x{size}, batch {batch}")
        for column in ("mode", "plain loop img/s", "Lightning img/s", "ratio", "host syncs / step",
                       "Lightning, a sync per step", "its ratio"):
            loop_table.add_column(column, justify="left" if column == "mode" else "right")
        for mode in args.modes:
            r = loop_overhead(loop_arch, mode, device, size, batch, args.loop_steps or steps, warmup)
            loop[mode] = r
            loop_table.add_row(mode, f"{r['plain_img_s']:.1f}", f"{r['lightning_img_s']:.1f}",
                               f"{r['lightning_img_s'] / r['plain_img_s']:.2f}",
                               f"{r.get('lightning_syncs_per_step', float('nan')):.1f}",
                               f"{r['lightning_sync_img_s']:.1f}", f"{r['lightning_sync_img_s'] / r['plain_img_s']:.2f}")
        console.print(loop_table)
        for mode, r in loop.items():
            for site in r.get("lightning_sync_sites", []):
                console.print(f"{mode}: host sync in the Lightning fit's steps at {site}")
    crf = []
    crf_cases = args.crf if args.crf is not None else (["375x500x21"] if cuda else ["120x160x21"])
    if crf_cases:
        from crf_bench import run as crf_run

        crf, crf_table = crf_run(crf_cases, repeats=3)
        console.print(crf_table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "size": size, "batch": batch, "torch": torch.__version__,
                       "results": results, "multiscale": multiscale, "loop": loop, "crf": crf}, f, indent=2)


if __name__ == "__main__":
    main()
