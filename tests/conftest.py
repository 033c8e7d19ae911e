from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A tiny toy VOC dataset (16 train, 6 val images of 64-80 px), generated once per session."""
    from deeplab_lightning.data import generate_toy_voc

    root = tmp_path_factory.mktemp("toy")
    generate_toy_voc(root, **TINY_TOY)
    return root


@pytest.fixture
def toy_settings() -> dict:
    """The generator settings of ``toy_dir``."""
    return dict(TINY_TOY)


TINY_TOY = {"num_train": 16, "num_val": 6, "size_range": (64, 80), "seed": 1}
