"""What every run of an ablation needs, prepared once before any starts, so that concurrent runs (the local
queue, a SLURM array) never race on it: each distinct dataset's ``prepare_data`` (the toy data is generated,
a real dataset's files are checked) and each distinct set of pretrained weights (read into the cache)."""
from __future__ import annotations

import importlib
import json
from typing import Any

import yaml
from rich.console import Console

from .spec import Ablation, folder_name, run_config


def _instantiate(spec: dict[str, Any]) -> Any:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


def prepare(ablation: Ablation, console: Console | None = None) -> None:
    """Run ``prepare_data`` of every distinct data module and build every distinct network that loads
    pretrained weights, once each."""
    from ..training.network import build_network

    console = console or Console(stderr=True)
    base = yaml.safe_load(ablation.base.read_text())
    seen: set[str] = set()
    for name, overrides in ablation.runs():
        config = run_config(ablation, base, name, overrides, ablation.output_dir / folder_name(name))
        data, model = config.get("data"), dict(config.get("model") or {})
        key = json.dumps(data, sort_keys=True, default=str)
        if not isinstance(data, dict) or "class_path" not in data or key in seen:
            continue
        seen.add(key)
        console.print(f"Preparing the data of {data['class_path'].rsplit('.', 1)[-1]} "
                      f"({(data.get('init_args') or {}).get('data_dir', '')})", highlight=False, soft_wrap=True)
        datamodule = _instantiate(data)
        datamodule.prepare_data()
        weights = {k: model.get(k) for k in ("arch", "pretrained_backbone", "weights", "model_kwargs")}
        weights_key = json.dumps(weights, sort_keys=True, default=str)
        if (model.get("pretrained_backbone") or model.get("weights")) and weights_key not in seen:
            seen.add(weights_key)
            console.print(f"Reading the pretrained weights of {model.get('arch')} into the cache", highlight=False)
            build_network(model["arch"], datamodule.num_classes, weights=model.get("weights"),
                          pretrained_backbone=bool(model.get("pretrained_backbone")),
                          model_kwargs=model.get("model_kwargs"))
