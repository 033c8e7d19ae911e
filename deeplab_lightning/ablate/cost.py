"""What a grid will cost before it trains: device-hours of training per run, from the training images/s recorded
by a finished run of the same network and crop (in this output folder), else from a short probe measured here
(SGD steps of the run's network after a warm-up step, at its batch per device and crop, both cut to at most
PROBE_PIXELS pixels a step, scaled back by the pixel count: convolutions cost in proportion to the pixels).

The probe runs on this machine's device of the run's kind (a GPU when the run trains on one and one is here,
else the CPU): on a login node without the cluster's GPUs it says so, and its numbers then bound the cost from
above only roughly. Evaluation is not included (a small share of a training run at the papers' settings).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from .spec import PlannedRun
from .state import RESULT, read_json

PROBE_SIDE = 257  # the probe's largest crop side (16k + 1)
PROBE_PIXELS = 2 * PROBE_SIDE ** 2  # the most pixels of one probe step (batch x crop)


@dataclass
class Estimate:
    """A run's training cost: seconds on ``devices`` devices, and how it was obtained."""

    run: str
    seconds: float
    devices: int
    source: str  # "recorded" (a finished run's images/s) or "probe on <device>"

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    trainer, model = config.get("trainer") or {}, config.get("model") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    crop = data.get("crop_size", 513)
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    devices = trainer.get("devices", 1)
    devices = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
    return {"arch": model.get("arch"), "output_stride": model.get("output_stride"),
            "model_kwargs": model.get("model_kwargs") or {}, "crop": crop,
            "accelerator": str(trainer.get("accelerator", "auto")), "devices": devices * int(trainer.get("num_nodes", 1)),
            "batch_size": int(data.get("batch_size", 16)), "max_steps": int(trainer.get("max_steps") or 0)}


def _key(settings: dict[str, Any]) -> str:
    return json.dumps({k: settings[k] for k in ("arch", "output_stride", "model_kwargs", "crop")}, sort_keys=True,
                      default=str)


def probe_seconds_per_image(settings: dict[str, Any], num_classes: int = 21) -> tuple[float, str]:
    """Seconds of one training image (forward, backward, SGD step) of the run's network at its crop size: the
    median of three probe steps over their images."""
    from ..models import create_model

    gpu = settings["accelerator"] not in ("cpu",) and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    kwargs = {"output_stride": settings["output_stride"]} if settings["output_stride"] else {}
    net = create_model(settings["arch"], num_classes, **kwargs, **settings["model_kwargs"]).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-9)
    crop = [min(side, PROBE_SIDE) for side in settings["crop"]]
    batch = max(1, min(settings["batch_size"] // settings["devices"], PROBE_PIXELS // (crop[0] * crop[1])))
    images = torch.randint(0, 256, (batch, 3, *crop), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch, *crop), device=device)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    scale = settings["crop"][0] * settings["crop"][1] / (crop[0] * crop[1] * batch)
    return sorted(times[1:])[1] * scale, f"probe on {torch.cuda.get_device_name() if gpu else 'this CPU'}"


def estimate(runs: list[PlannedRun], num_classes: int = 21) -> list[Estimate]:
    """The training cost of every run (``max_steps`` x ``batch_size`` images over its devices)."""
    recorded: dict[str, float] = {}  # images/s of finished runs, by network and crop
    for run in runs:
        row = read_json(run.folder / RESULT)
        if row and row.get("train_img_s"):
            recorded[_key(_settings(yaml.safe_load(run.config)))] = row["train_img_s"] / max(row.get("devices") or 1, 1)
    probed: dict[str, tuple[float, str]] = {}
    estimates = []
    for run in runs:
        settings = _settings(yaml.safe_load(run.config))
        key, images = _key(settings), settings["max_steps"] * settings["batch_size"]
        if key in recorded:
            per_image, source = 1 / recorded[key], "recorded"
        else:
            if key not in probed:
                probed[key] = probe_seconds_per_image(settings, num_classes)
            per_image, source = probed[key]
        estimates.append(Estimate(run.name, images * per_image / settings["devices"], settings["devices"], source))
    return estimates


def estimate_lines(estimates: list[Estimate]) -> list[str]:
    """A line per run and the total, for ``--dry_run`` and ``--slurm``."""
    lines = [f"  {e.run}: {e.device_hours:.3g} device-hours ({e.source})" for e in estimates]
    total = sum(e.device_hours for e in estimates)
    sources = sorted({e.source for e in estimates})
    return [*lines, f"Estimated training cost of the grid: {total:.3g} device-hours ({', '.join(sources)}; "
                    f"evaluation not included)"]
