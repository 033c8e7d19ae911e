"""Every registered model, as torchvision tests its zoo: it builds, trains at odd sizes, and its outputs match
stored golden values (seeded weights, a tiny seeded input), so a refactor that changes the numbers but not
the shapes fails. Regenerate after an intended change with ``DEEPLAB_REGEN_GOLDEN=1 pytest tests/test_zoo.py``
and say why in the commit."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deeplab_lightning.models import create_model, list_models

from conftest import float64_reference, set_batchnorm_statistics

GOLDEN = Path(__file__).parent / "golden" / "zoo.json"
REGEN = os.environ.get("DEEPLAB_REGEN_GOLDEN") == "1"


def _golden_output(name: str) -> torch.Tensor:
    """Logits of the seeded model on a seeded 37 x 45 image, every 6th pixel: [3, 7, 8]. The BatchNorms first
    take that image's statistics (else a random MobileNetV2's output would not depend on the image). Built,
    initialised and run in float64, so that the values are the same on every CPU (see ``float64_reference``)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 37, 45), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with float64_reference():
        model = set_batchnorm_statistics(create_model(name, num_classes=3), images)
        with torch.no_grad():
            out = model(images)[0, :, ::6, ::6]
    assert out.dtype == torch.float64
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, list]:
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    yield stored
    if REGEN:
        rows = (f"{json.dumps(name)}: {json.dumps(values)}" for name, values in sorted(stored.items()))
        GOLDEN.write_text("{\n" + ",\n".join(rows) + "\n}\n")


@pytest.mark.parametrize("name", list_models())
def test_outputs_match_the_golden_values(name, golden):
    out = _golden_output(name)
    if REGEN:
        golden[name] = out.tolist()
    assert name in golden, f"no golden output for {name}: run DEEPLAB_REGEN_GOLDEN=1 pytest {__file__}"
    expected = torch.tensor(golden[name], dtype=torch.float64)
    scale = expected.abs().max().item()  # randomly initialised deep networks reach large logits
    assert out.shape == expected.shape
    # float64 on AMD EPYC (AVX2) and Intel Xeon (AVX-512, AMX; ATen and oneDNN also forced to AVX2 and to no
    # vector ISA), 1 and 2 threads: at most 2e-10 of the scale apart (float32 differed by up to 8 %).
    assert torch.allclose(out, expected, rtol=1e-7, atol=1e-7 * scale), (out - expected).abs().max()


@pytest.mark.parametrize("name", list_models())
def test_trains_at_odd_sizes_and_every_parameter_gets_a_gradient(name):
    model = create_model(name, num_classes=3).train()
    images = torch.randint(0, 256, (2, 3, 35, 43), dtype=torch.uint8)
    out = model(images)
    assert out.shape == (2, 3, 35, 43)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
