import lightning as L
import pytest
import torch

from deeplab_lightning.cli import main
from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule
from deeplab_lightning.module import SegmentationModule

from test_cli import write_config


class RecordLoss(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def _fit(toy_dir, toy_settings, tmp_path, seed, module_kwargs=None, steps=10):
    L.seed_everything(seed, workers=True)
    module = SegmentationModule("deeplabv3plus_resnet18", 6, class_names=TOY_CLASSES, lr=0.01,
                                model_kwargs={"aspp_channels": 16, "decoder_channels": 16}, **(module_kwargs or {}))
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    recorder = RecordLoss()
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                        deterministic=True, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    return recorder.losses, trainer


def test_same_seed_gives_the_same_first_ten_losses(toy_dir, toy_settings, tmp_path):
    first, _ = _fit(toy_dir, toy_settings, tmp_path, seed=3)
    second, _ = _fit(toy_dir, toy_settings, tmp_path, seed=3)
    other, _ = _fit(toy_dir, toy_settings, tmp_path, seed=4)
    assert len(first) == 10 and first == second
    assert first != other


class PoisonLR(L.Callback):
    """Make the weights explode at the third step so that the loss becomes non-finite."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            with torch.no_grad():
                pl_module.net.decoder.classifier.weight.fill_(float("inf"))


def test_nonfinite_loss_stops_naming_step_and_samples(toy_dir, toy_settings, tmp_path):
    L.seed_everything(0)
    module = SegmentationModule("deeplabv3plus_resnet18", 6, model_kwargs={"aspp_channels": 16,
                                                                            "decoder_channels": 16})
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    trainer = L.Trainer(max_steps=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[PoisonLR()])
    with pytest.raises(FloatingPointError, match=r"step 2 .*toy_train_"):
        trainer.fit(module, datamodule=dm)


def test_nonfinite_loss_can_be_skipped(toy_dir, toy_settings, tmp_path):
    module = SegmentationModule("deeplabv3plus_resnet18", 6, nonfinite_loss="skip",
                                model_kwargs={"aspp_channels": 16, "decoder_channels": 16})
    module.loss = lambda logits, mask: logits.sum() * float("nan")  # every loss is NaN
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    before = {k: v.clone() for k, v in module.state_dict().items() if "weight" in k}
    trainer = L.Trainer(max_steps=3, max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="Skipping the optimizer step"):
        trainer.fit(module, datamodule=dm)
    after = module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # no step was taken on NaN gradients


def test_checkpoint_of_another_architecture_is_refused(tmp_path, toy_dir, toy_settings):
    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["fit", "--config", str(config)])
    with pytest.raises(ValueError, match=r"arch='deeplabv3plus_resnet18'.*arch='deeplabv3plus_resnet50'"):
        main(["test", "--config", str(config), "--model.arch", "deeplabv3plus_resnet50",
              "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])


def test_evaluate_at_output_stride_8_a_model_trained_at_16(tmp_path, toy_dir, toy_settings):
    config = write_config(tmp_path, toy_dir, toy_settings)
    main(["fit", "--config", str(config)])
    cli = main(["test", "--config", str(config), "--model.output_stride", "8",
                "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert cli.model.net.output_stride == 8 and cli.model.net.aspp.atrous_rates == (12, 24, 36)
    assert 0 <= cli.trainer.callback_metrics["test/mIoU"] <= 1
