"""The trainable dense CRF (CRF-as-RNN): the fixed CRF at its initial parameters, exact gradients through the
lattice, and end-to-end fine-tuning after a trained network."""
import lightning as L
import pytest
import torch

from deeplab_lightning.commands.cli import main as cli_main
from deeplab_lightning.evaluation.crf import dense_crf
from deeplab_lightning.evaluation.crf_rnn import TrainableDenseCRF, WithCRF
from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.evaluation import CRFSettings
from deeplab_lightning.commands.export import export_network
from deeplab_lightning.module import SegmentationModule
from deeplab_lightning.predictor import load_module

SETTINGS = CRFSettings(iterations=4, bi_w=4.0, bi_xy_std=8.0, bi_rgb_std=20.0, pos_w=3.0, pos_xy_std=1.0)
SMALL = {"aspp_channels": 16, "decoder_channels": 16}  # as conftest.write_config's model


def test_at_its_initial_parameters_it_is_the_fixed_dense_crf():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 19, 23), dtype=torch.uint8)
    logits = 2 * torch.randn(2, 5, 19, 23)
    marginals = TrainableDenseCRF(5, SETTINGS)(images, logits).softmax(1)
    fixed = {k: v for k, v in vars(SETTINGS).items()}
    for image, lg, q in zip(images, logits, marginals):
        expected = dense_crf(image.permute(1, 2, 0).contiguous(), lg.softmax(0), **fixed)
        torch.testing.assert_close(q, expected, atol=1e-5, rtol=0)


def test_gradients_through_the_lattice_match_finite_differences():
    torch.manual_seed(0)
    crf = TrainableDenseCRF(3, CRFSettings(iterations=2, bi_xy_std=3.0, bi_rgb_std=30.0)).double()
    image = torch.randint(0, 256, (1, 3, 5, 6), dtype=torch.uint8)
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg: crf(image, lg), (logits,), eps=1e-6, atol=1e-5)
    params = tuple(p.detach().clone().requires_grad_() for p in (crf.kernel_weights, crf.compatibility))

    def with_params(weights, compatibility):
        return torch.func.functional_call(crf, {"kernel_weights": weights, "compatibility": compatibility},
                                          (image, logits.detach()))

    assert torch.autograd.gradcheck(with_params, params, eps=1e-6, atol=1e-5)


def test_fine_tuning_after_a_trained_network_trains_the_crf_and_reloads_without_the_source(
        tmp_path, toy_dir, toy_settings, write_config):
    cli_main(["fit", "--config", str(write_config(tmp_path / "plain", toy_dir, toy_settings))])
    plain = tmp_path / "plain" / "ckpt" / "best.ckpt"
    crf = {k: v for k, v in vars(SETTINGS).items()}
    module = SegmentationModule("deeplabv3plus_resnet18", 6, model_kwargs=SMALL, lr=0.01, crf_rnn=crf,
                                init_checkpoint=str(plain))
    assert isinstance(module.net, WithCRF)
    with pytest.raises(ValueError, match="init_checkpoint .*best.ckpt holds another network"):
        SegmentationModule("deeplabv3_resnet18", 6, model_kwargs={"aspp_channels": 16}, init_checkpoint=str(plain))
    source = torch.load(plain, weights_only=False)["state_dict"]
    for key, value in module.net.net.state_dict().items():
        assert torch.equal(value, source[f"net.{key}"]), key
    before = [p.detach().clone() for p in module.net.crf.parameters()]
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    trainer = L.Trainer(max_steps=3, val_check_interval=3, check_val_every_n_epoch=None, limit_val_batches=2,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert all(not torch.equal(b, p) for b, p in zip(before, module.net.crf.parameters()))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])  # validation runs through the CRF too
    with pytest.raises(ValueError, match="trainable CRF .* cannot be exported"):
        export_network(module.net, tmp_path / "tuned.onnx", "onnx")
    tuned = tmp_path / "tuned.ckpt"
    trainer.save_checkpoint(tuned)
    plain.unlink()  # the init checkpoint is not needed any more: the tuned checkpoint holds every weight
    reloaded = load_module(tuned)
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value.cpu()), key

