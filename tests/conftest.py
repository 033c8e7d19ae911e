from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
# Two threads per test process; one per worker when pytest-xdist runs one worker per core (scripts/test.sh).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

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
@contextlib.contextmanager
def float64_reference():
    """Build and run networks in float64 (``torch.set_default_dtype``): the references of golden and equivalence
    tests. A deep random float32 network amplifies the ~1e-7 differences of another kernel's reduction order
    (AVX2 vs AVX-512/AMX, oneDNN vs the reference GEMM, 1 vs 2 threads) and of float32 initialisers (ATen
    vectorises ``normal_`` for float32 on AVX2 only) to a few % of its logits; in float64 the same chains move
    them by ~1e-10, so tolerances can stay tight on every CPU."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def set_batchnorm_statistics(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Give every BatchNorm of a freshly built ``model`` exactly the statistics of ``images`` (one batch of a
    cumulative average), then eval mode. With the initial ones (mean 0, variance 1) the activations of a deep
    random network blow up or saturate (ReLU6) and its output barely depends on the input."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = None
        model.train()(images)
    return model.eval()


TINY_ARCH, TINY_KWARGS = "deeplabv3plus_resnet18", {"aspp_channels": 16, "decoder_channels": 16}


@pytest.fixture(scope="session")
def diverse_start(tmp_path_factory) -> str:
    """A checkpoint of the tiny config's network (``model.init_checkpoint``) whose classifier weights have std 1:
    untrained, it predicts every toy class, where TF's initialisation (std 0.01) predicts background everywhere
    after a few steps. For tests that need predictions multi-scale inference or the CRF can change."""
    from deeplab_lightning.data import TOY_CLASSES
    from deeplab_lightning.module import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(TINY_ARCH, num_classes=len(TOY_CLASSES), model_kwargs=dict(TINY_KWARGS))
    with torch.no_grad():
        module.net.decoder.classifier.weight.normal_(std=1.0)
    path = tmp_path_factory.mktemp("diverse") / "start.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    return str(path)


def _write_config(tmp_path: Path, toy_dir: Path, toy_settings: dict, max_steps: int = 2) -> Path:
    """A small CLI config (V3+ ResNet-18, toy data, CPU) for a run in ``tmp_path`` (checkpoints in
    ``tmp_path/ckpt``), written to ``tmp_path/../<name>.yaml`` (outside the run folder, which a fit claims)."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False,
            "default_root_dir": str(tmp_path), "enable_progress_bar": False, "num_sanity_val_steps": 0,
            "val_check_interval": max_steps, "check_val_every_n_epoch": None,
            "callbacks": [
                {"class_path": "deeplab_lightning.callbacks.PolyLR"},
                {"class_path": "deeplab_lightning.callbacks.IoUTable"},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "best", "monitor": "val/mIoU",
                               "mode": "max", "save_last": True}},
            ],
        },
        "model": {"arch": TINY_ARCH, "model_kwargs": dict(TINY_KWARGS), "lr": 0.01},
        "data": {"class_path": "deeplab_lightning.data.ToyVOCDataModule",
                 "init_args": {"data_dir": str(toy_dir), **toy_settings, "crop_size": 64, "batch_size": 2,
                               "val_batch_size": 3, "num_workers": 0}},
    }
    path = tmp_path.parent / f"{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def write_config():
    """``write_config(folder, toy_dir, toy_settings, max_steps=2)`` -> path of a small CLI config."""
    return _write_config


@pytest.fixture
def torchvision_reference():
    """``torchvision_reference(builder, num_classes)`` -> a seeded torchvision segmentation model in eval mode
    with non-trivial BatchNorm statistics (so a conversion that mixes them up shows in the outputs)."""
    def build(builder, num_classes: int) -> torch.nn.Module:
        torch.manual_seed(0)
        reference = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True).eval()
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        return reference

    return build
