"""Progress you can follow in a terminal, a log file or a SLURM job's output, without slowing training."""
import io
import re

import lightning as L

from deeplab_lightning.callbacks import FinalValidation, ProgressBar
from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.module import SegmentationModule


def _fit(toy_dir, toy_settings, bar, **trainer_kwargs):
    module = SegmentationModule("deeplabv3plus_resnet18", 6, model_kwargs={"aspp_channels": 16, "decoder_channels": 16})
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, val_batch_size=3, num_workers=0)
    trainer = L.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[bar, FinalValidation()], **trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    return trainer


def _terminal(screen, **kwargs):
    return ProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 120}, **kwargs)


def test_progress_bar_reads_metrics_at_most_every_interval(toy_dir, toy_settings):
    def reads_of(bar: ProgressBar) -> list[int]:
        reads = []
        read = bar.get_metrics

        def get_metrics(trainer, module):
            reads.append(trainer.global_step)
            items = read(trainer, module)
            assert isinstance(items["train/loss"], float)  # shown although not logged with prog_bar=True
            return items

        bar.get_metrics = get_metrics
        _fit(toy_dir, toy_settings, bar, max_steps=4, limit_train_batches=4, limit_val_batches=0)
        return reads

    assert {1, 2, 3, 4} <= set(reads_of(_terminal(io.StringIO(), metrics_every_s=0)))  # RichProgressBar's way
    reads = reads_of(_terminal(io.StringIO(), metrics_every_s=1e9))
    assert 1 in reads and 2 not in reads and 3 not in reads  # first step, then only at the epoch's end


def test_step_based_bar_counts_global_steps_across_epochs(toy_dir, toy_settings):
    screen = io.StringIO()
    _fit(toy_dir, toy_settings, _terminal(screen), max_steps=6, limit_train_batches=4, limit_val_batches=0)
    shown = screen.getvalue()
    assert "6/6" in shown and "4/4" not in shown  # one bar of 6 steps over two epochs, not an epoch's 4 batches
    assert "Epoch 1" in shown and "Epoch 1/" not in shown  # not "Epoch 1/-2" with max_epochs -1


def test_plain_progress_lines_when_the_output_is_not_a_terminal(toy_dir, toy_settings):
    log = io.StringIO()  # what `| tee log` or a SLURM job's output file gets
    bar = ProgressBar(line_every_s=0, console_kwargs={"file": log, "width": 200})
    _fit(toy_dir, toy_settings, bar, max_steps=5, limit_train_batches=3, val_check_interval=3,
         check_val_every_n_epoch=None, limit_val_batches=2)
    lines = log.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [int(re.match(r"step (\d+)/5", line).group(1)) for line in steps] == [1, 2, 3, 4, 5]
    assert all(re.search(r"\| loss \d+\.\d{4} \| lr [\d.e-]+ \|", line) for line in steps)
    assert all(re.search(r"img/s \| elapsed \d:\d\d:\d\d \| ETA \d:\d\d:\d\d$", line) for line in steps[1:])
    assert "validation batch 2/2" in log.getvalue()  # evaluations report progress too
    assert re.search(r"validation at step 3: val/mIoU \d\.\d{4}", log.getvalue())
    assert re.search(r"validation at step 5: val/mIoU \d\.\d{4}", log.getvalue())  # the final validation
    assert "\x1b[" not in log.getvalue()  # plain text: no terminal control codes in the log
