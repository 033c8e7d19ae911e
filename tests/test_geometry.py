"""Where the upsampled logits land: a column-index ramp pushed through each network's conv geometry."""
import pytest

from deeplab_lightning.evaluation.multiscale import scaled_size
from deeplab_lightning.models import create_model
from deeplab_lightning.models.analysis import logit_centres, upsampling_misplacement


@pytest.mark.parametrize("name,output_stride", [
    ("deeplabv3_resnet18", 16), ("deeplabv3_resnet18", 8),
    ("deeplabv3plus_resnet18", 16), ("deeplabv3plus_resnet18", 8),  # the decoder's stride-4 path
    ("deeplabv1_vgg16_largefov", 8), ("deeplabv3plus_xception65", 16),
])
def test_paper_networks_put_every_logit_on_its_input_pixel(name, output_stride):
    # TF reference geometry: align_corners=True with k * output_stride + 1 inputs (129 = 16 * 8 + 1).
    model = create_model(name, num_classes=3, output_stride=output_stride)
    assert upsampling_misplacement(model, 129) <= 0.5


def test_at_513_pytorch_geometry_misplaces_by_half_the_stride():
    # The misplacement at 513 x 513 with align_corners=False (up to half the stride); the paper geometry is exact.
    for output_stride, expected in ((16, 7.25), (8, 3.44)):
        shifted = create_model("deeplabv3_resnet18", num_classes=3, output_stride=output_stride,
                               align_corners=False)
        assert upsampling_misplacement(shifted, 513) == pytest.approx(expected, abs=0.01)
    aligned = create_model("deeplabv3_resnet18", num_classes=3, output_stride=16)
    centres = logit_centres(aligned, 513)
    assert centres[::16].round().tolist() == list(range(0, 513, 16))
    assert upsampling_misplacement(aligned, 513) <= 0.01


def test_multiscale_sizes_stay_corner_aligned():
    assert scaled_size((513, 513), 0.5, align_corners=True) == (257, 257)  # 16 * 16 + 1
    assert scaled_size((513, 385), 0.75, align_corners=True) == (385, 289)
    assert scaled_size((513, 513), 0.5, align_corners=False) == (256, 256)
