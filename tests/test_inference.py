import lightning as L
import pytest
import torch
from torch import nn

from deeplab_lightning.callbacks import MultiScaleInference
from deeplab_lightning.evaluation import Inference
from deeplab_lightning.evaluation import predict_multiscale, sliding_window
from deeplab_lightning.models import create_model
from deeplab_lightning.module import SegmentationModule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("deeplabv3plus_resnet18", num_classes=4, aspp_channels=16, decoder_channels=16).eval()


def test_single_scale_without_flip_is_a_plain_forward(model):
    x = torch.randn(2, 3, 65, 71)
    with torch.no_grad():
        expected = model(x).softmax(1)
        assert torch.allclose(predict_multiscale(model, x, scales=(1.0,), flip=False), expected, atol=1e-6)


def test_the_tf_merge_of_stride_logits_at_scale_one_is_a_plain_forward(model):
    """With ``logit_stride`` the model gives its logits before upsampling (V3+'s at stride 4); at scale 1 TF's merge
    grid is their own grid, so the probabilities are the plain forward's; at 0.75 (13 logits merged on 17) they are
    not those of resizing the upsampled logits straight to the image. A sliding window has no TF merge."""
    assert model.logit_stride == 4 and create_model("deeplabv3_resnet18", num_classes=4).logit_stride == 16
    x = torch.randn(1, 3, 65, 81) * 50 + 120
    with torch.no_grad():
        plain = model(x).softmax(1)
        merged = predict_multiscale(model.stride_logits, x, scales=(1.0,), flip=False, align_corners=True,
                                    logit_stride=4)
        sharp = [lambda images: 100 * model.stride_logits(images), lambda images: 100 * model(images)]  # nearly
        # flat scores of an untrained network made distinct
        merged_or_not = [predict_multiscale(sharp[0], x, scales=(0.75,), flip=False, align_corners=True,
                                            logit_stride=4),
                         predict_multiscale(sharp[1], x, scales=(0.75,), flip=False, align_corners=True)]
    assert torch.allclose(merged, plain, atol=1e-6)
    assert not torch.allclose(*merged_or_not, atol=1e-4)
    with pytest.raises(ValueError, match="sliding window"):
        predict_multiscale(model.stride_logits, x, window=33, logit_stride=4)


def test_flip_consistency(model):
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a = predict_multiscale(model, x, scales=(1.0, 0.75), flip=True)
        b = predict_multiscale(model, x.flip(-1), scales=(1.0, 0.75), flip=True)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)  # flip-averaged predictions are mirror-symmetric
    assert torch.allclose(a.sum(1), torch.ones(1, 64, 80), atol=1e-5)


def test_multiscale_runs_one_forward_per_scale_with_flip_in_the_batch(model):
    calls = []

    def counting(x):
        calls.append(tuple(x.shape))
        return model(x)

    with torch.no_grad():
        out = predict_multiscale(counting, torch.randn(2, 3, 64, 64), scales=(0.5, 1.0, 1.5), flip=True)
    assert out.shape == (2, 4, 64, 64)
    assert calls == [(4, 3, 32, 32), (4, 3, 64, 64), (4, 3, 96, 96)]


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    x = torch.randn(2, 3, 70, 150)
    with torch.no_grad():
        whole = net(x)
        windows = sliding_window(net, x, window=32, overlap=0.5)
        shapes = []
        sliding_window(lambda c: shapes.append(c.shape[-2:]) or net(c), x, window=(32, 48))
    assert torch.allclose(windows, whole, atol=1e-6)
    assert all(tuple(s) == (32, 48) for s in shapes)  # never larger than the window
    assert len(shapes) == 3 * 5


def test_logits_and_window_sums_stay_float32_under_bf16_autocast(model):
    """bf16 scores tie close classes and argmax breaks ties towards class 0 (background): the upsampled logits
    and the sliding window's sum must be float32 in mixed-precision evaluation."""
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        windows = sliding_window(lambda crop: model(crop).bfloat16(), x, window=32, overlap=0.5)
    assert logits.dtype == windows.dtype == torch.float32


def test_callback_switches_test_to_multiscale(toy_dir, toy_settings):
    from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule

    module = SegmentationModule("deeplabv3plus_resnet18", 6, class_names=TOY_CLASSES,
                                model_kwargs={"aspp_channels": 16, "decoder_channels": 16})
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, num_workers=0)
    calls = []
    module.net.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))  # merged scales too
    callback = MultiScaleInference(scales=(0.75, 1.0), flip=True, stages=["test"])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.test(module, datamodule=dm, verbose=False)
    assert len(calls) == 2 * 6 and set(calls) == {2}  # 2 scales per image, original + flip in one batch
    assert module.pipeline.settings == Inference()  # restored after the stage
    calls.clear()
    trainer.validate(module, datamodule=dm, verbose=False)
    assert len(calls) == 6  # validation was not switched
    with pytest.raises(ValueError, match="stages"):
        MultiScaleInference(stages=["training"])


def test_msc_max_fuses_the_scales_and_trains_on_every_output():
    from deeplab_lightning.evaluation import msc_max_fusion
    from deeplab_lightning.module import SegmentationModule

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(2, 3, 32, 40)
    fused, *scales = msc_max_fusion(net, images, (1.0, 0.75, 0.5))
    assert len(scales) == 3 and all(s.shape == fused.shape == (2, 4, 32, 40) for s in scales)
    assert torch.equal(scales[0], net(images))
    assert torch.equal(fused, torch.maximum(torch.maximum(scales[0], scales[1]), scales[2]))

    module = SegmentationModule(net, 4, msc_scales=[1.0, 0.5])
    batch = {"image": images, "mask": torch.randint(0, 4, (2, 32, 40))}
    outputs = msc_max_fusion(net, images, (1.0, 0.5))
    expected = sum(module.loss(o, batch["mask"]) for o in outputs)
    assert torch.allclose(module.training_step(batch, 0), expected)
    assert torch.equal(module(images), outputs[0])  # evaluation sees the fused logits


@pytest.mark.parametrize("window", [0, (0, 513), (-1, -1)])
def test_a_window_that_is_not_a_size_is_named(window):
    from deeplab_lightning.callbacks import MultiScaleInference

    with pytest.raises(ValueError, match=r"window must be a positive size in pixels"):
        MultiScaleInference(window=window)


def _elongated_folder(root):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for name, (h, w) in {"tall": (3000, 20), "wide": (20, 3000)}.items():
            Image.new("RGB", (w, h), (120, 60, 30)).save(root / "images" / split / f"{name}.png")
            Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "masks" / split / f"{name}.png")


def test_elongated_images_are_evaluated_on_their_own_extent(tmp_path):
    """A 3000 x 20 and a 20 x 3000 image: with eval_size auto each runs on its own 16k+1 canvas (not 3009 x 3009),
    and with a small fixed canvas each runs window by window over its own extent (not 18,496 windows over the
    3000 x 3000 union), with the scores it gets alone."""
    from deeplab_lightning.data import FolderDataModule
    from deeplab_lightning.data.dataset import pad_collate
    from deeplab_lightning.evaluation.pipeline import EvaluationPipeline

    _elongated_folder(tmp_path)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    inputs = []

    def network(x):
        inputs.append(tuple(x.shape))
        return net(x)

    network.pixel_mean, network.align_corners = torch.tensor([120.0, 60.0, 30.0]).view(1, 3, 1, 1), False
    dm = FolderDataModule(str(tmp_path), classes=["background", "thing"], val_batch_size=2, num_workers=0)
    (batch,) = list(dm.val_dataloader())
    assert sorted(batch["canvas"]) == [(33, 3009), (3009, 33)]
    with torch.no_grad():
        EvaluationPipeline()(network, batch)
    assert sorted(inputs) == [(1, 3, 33, 3009), (1, 3, 3009, 33)]  # each on its own canvas, in one batch
    inputs.clear()
    dm = FolderDataModule(str(tmp_path), classes=["background", "thing"], eval_size=33, num_workers=0)
    samples = [dm.dataset("val")[i] for i in range(2)]
    pipeline = EvaluationPipeline()
    with torch.no_grad():
        together = pipeline(network, pad_collate(samples, size=(33, 33), fixed=True)).final
        calls = len(inputs)
        alone = [pipeline(network, pad_collate([s], size=(33, 33), fixed=True)).final[0] for s in samples]
    assert all(shape[-2:] == (33, 33) for shape in inputs)
    assert calls == 2 * 136  # windows step 22 over 3000 (136 starts) x one 33-wide column, per image
    assert [tuple(s.shape[-2:]) for s in together] == [(3000, 20), (20, 3000)]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
