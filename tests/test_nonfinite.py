"""No checkpoint, metric or finished run comes from weights that a non-finite step broke."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.module import SegmentationModule


def _module(**kwargs):
    return SegmentationModule("deeplabv3plus_resnet18", 6, model_kwargs={"aspp_channels": 16, "decoder_channels": 16},
                              **kwargs)


def _fit(module, toy_dir, toy_settings, callbacks, max_steps=5, **trainer_kwargs):
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, val_batch_size=3, num_workers=0)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    return trainer


class AtStep(L.Callback):
    """Calls ``change(module)`` at a hook when the global step is ``step``."""

    def __init__(self, hook, step, change):
        self.step, self.change = step, change
        setattr(self, hook, self._maybe)

    def _maybe(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                self.change(pl_module)


def _every_step(path):
    return ModelCheckpoint(dirpath=path, save_last=True, save_top_k=0, every_n_train_steps=1)


def _saved_step(path):
    saved = torch.load(path / "last.ckpt", weights_only=False)
    assert all(v.isfinite().all() for v in saved["state_dict"].values() if v.is_floating_point())
    return saved["global_step"]


def test_nonfinite_loss_stops_naming_step_and_samples_and_keeps_the_good_checkpoint(toy_dir, toy_settings,
                                                                                   tmp_path):
    poison = AtStep("on_train_batch_start", 2, lambda m: m.net.decoder.classifier.weight.fill_(float("inf")))
    with pytest.raises(FloatingPointError, match=r"step 2 .*toy_train_"):
        _fit(_module(), toy_dir, toy_settings, [poison, _every_step(tmp_path)], limit_val_batches=0)
    # The check is read one hook late (no host sync in the step), but before the checkpoint of the bad step.
    assert _saved_step(tmp_path) == 2


def test_nonfinite_weights_are_never_saved_whatever_nonfinite_loss_says(toy_dir, toy_settings, tmp_path):
    poison = AtStep("on_train_batch_end", 3, lambda m: m.net.aspp.branches[0][0].weight.fill_(float("nan")))
    with pytest.raises(FloatingPointError, match=r"Not saving the checkpoint of step 3.*aspp.branches.0.0.weight"):
        _fit(_module(nonfinite_loss="ignore"), toy_dir, toy_settings, [poison, _every_step(tmp_path)],
             limit_val_batches=0)
    assert _saved_step(tmp_path) == 2


def test_nonfinite_validation_loss_stops_the_run_before_its_checkpoint(toy_dir, toy_settings, tmp_path):
    """Finite but exploded weights (an lr far too large): the validation's scores overflow, so its loss is
    NaN; the run stops before ModelCheckpoint saves that validation's weights as best or last."""
    explode = AtStep("on_validation_start", 4, lambda m: m.net.decoder.classifier.weight.mul_(1e37))
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/mIoU", mode="max", save_last=True)
    with pytest.raises(FloatingPointError, match=r"validation loss is non-finite .* at step 4"):
        _fit(_module(), toy_dir, toy_settings, [explode, best], val_check_interval=2, check_val_every_n_epoch=None,
             limit_val_batches=1)
    assert _saved_step(tmp_path) == 2
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["global_step"] == 2


def test_skipped_steps_fail_the_run_past_max_skipped_share(toy_dir, toy_settings, tmp_path):
    module = _module(nonfinite_loss="skip", max_skipped_share=0.5)
    module.loss.forward = lambda logits, mask: logits.sum() * float("nan")  # every loss is NaN
    before = {k: v.clone() for k, v in module.state_dict().items() if "weight" in k}
    with pytest.warns(UserWarning, match=r"Skipping the optimizer step.*\(2 skipped, at most 2 allowed\)"):
        with pytest.raises(FloatingPointError, match=r"3 optimizer steps were skipped .*max_skipped_share=0.5 of 4"):
            _fit(module, toy_dir, toy_settings, [], max_steps=4, limit_val_batches=0, enable_checkpointing=False)
    after = module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # no step was taken on NaN gradients
