import lightning as L
import pytest
import torch

from deeplab_lightning.callbacks import LRSchedule, PolyLR, ScheduleCheck, poly_lr_factor, step_lr_factor
from deeplab_lightning.callbacks.schedule import NO_SCHEDULE
from deeplab_lightning.module import SegmentationModule


def test_poly_factor_exact_values():
    assert poly_lr_factor(0, 10) == 1.0
    assert poly_lr_factor(5, 10) == 0.5**0.9
    assert poly_lr_factor(9, 10, power=1.0) == pytest.approx(0.1)
    assert poly_lr_factor(10, 10) == 0.0
    assert poly_lr_factor(12, 10) == 0.0  # clamped past the end
    # warmup ramps linearly from the start factor, multiplied by the poly value
    assert poly_lr_factor(0, 10, warmup_steps=4, warmup_start_factor=0.2) == pytest.approx(0.2)
    assert poly_lr_factor(2, 10, warmup_steps=4) == pytest.approx(0.5 * 0.8**0.9)
    assert poly_lr_factor(4, 10, warmup_steps=4) == pytest.approx(0.6**0.9)
    with pytest.raises(ValueError, match="max_steps"):
        poly_lr_factor(0, 0)


class TinyNet(torch.nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = torch.nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return self.classifier(torch.relu(self.backbone(x)))


class RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})


def _loader(n=12):
    data = [{"image": torch.randn(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=2)


def test_poly_lr_sequence_in_training_keeps_head_multiplier(tmp_path):
    module = SegmentationModule(TinyNet(), num_classes=3, lr=0.01, head_lr_mult=10.0, weight_decay=1e-4)
    recorder = RecordLR()
    trainer = L.Trainer(max_steps=5, callbacks=[PolyLR(power=0.9), recorder], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=_loader())
    assert len(recorder.lrs) == 5
    for step, lrs in enumerate(recorder.lrs):
        factor = (1 - step / 5) ** 0.9
        assert lrs["backbone"] == pytest.approx(0.01 * factor, rel=1e-12)
        assert lrs["backbone_no_decay"] == pytest.approx(0.01 * factor, rel=1e-12)
        assert lrs["head"] == pytest.approx(0.1 * factor, rel=1e-12)
        assert lrs["head_no_decay"] == pytest.approx(0.1 * factor, rel=1e-12)


def test_step_schedule_divides_every_step_size_and_resumes_on_the_same_curve(tmp_path):
    """V1's schedule (lr / 10 every step_size steps) in the one schedule callback: the head keeps its multiplier,
    and a fit resumed from a checkpoint continues with the same learning rates."""
    assert [step_lr_factor(s, 2) for s in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="step_size"):
        LRSchedule("step")

    def fit(max_steps, ckpt_path=None):
        torch.manual_seed(0)
        module = SegmentationModule(TinyNet(), num_classes=3, lr=0.01, head_lr_mult=10.0)
        recorder = RecordLR()
        trainer = L.Trainer(max_steps=max_steps, callbacks=[LRSchedule("step", step_size=2), recorder],
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path)
        return trainer, recorder.lrs

    trainer, whole = fit(5)
    assert [lrs["head"] for lrs in whole] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-12)
    assert [lrs["backbone"] for lrs in whole] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001], rel=1e-12)
    first, _ = fit(3)
    checkpoint = tmp_path / "after3.ckpt"
    first.save_checkpoint(checkpoint)
    _, resumed = fit(5, ckpt_path=str(checkpoint))
    assert resumed == whole[3:]  # the same floats: the factor is a function of the restored step


def _fit_with(callbacks, module=None):
    module = module or SegmentationModule(TinyNet(), num_classes=3, lr=0.01)
    trainer = L.Trainer(max_steps=2, callbacks=[ScheduleCheck(), *callbacks], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=_loader(4))


def test_a_fit_without_a_learning_rate_schedule_says_so_once_at_start():
    with pytest.warns(UserWarning, match="No learning-rate schedule") as record:
        _fit_with([])
    assert [str(w.message) for w in record if "learning-rate" in str(w.message)] == [NO_SCHEDULE]


@pytest.mark.parametrize("schedule", ["PolyLR", "configure_optimizers"])
def test_a_fit_with_a_learning_rate_schedule_does_not_warn(recwarn, schedule):
    class Scheduled(SegmentationModule):
        def configure_optimizers(self):
            optimizer = super().configure_optimizers()
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}

    if schedule == "PolyLR":
        _fit_with([PolyLR()])
    else:
        _fit_with([], Scheduled(TinyNet(), num_classes=3, lr=0.01))
    assert not [w for w in recwarn if "learning-rate" in str(w.message)]
