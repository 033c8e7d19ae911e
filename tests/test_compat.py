"""Lightning's private API that deeplab_lightning uses (compat.py): a Lightning upgrade that removes or changes any
of it fails here, by name."""
import io

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from deeplab_lightning import compat


def test_every_overridden_or_called_private_method_is_there_with_the_expected_parameters():
    compat.check_private_api()


def test_a_changed_or_missing_private_method_is_named_with_the_lightning_version(monkeypatch):
    monkeypatch.setattr(RichProgressBar, "_get_train_description", lambda self, epoch, extra: "")
    monkeypatch.delattr(LightningCLI, "_parse_ckpt_path")
    with pytest.raises(compat.PrivateAPIChanged) as err:
        compat.check_private_api()
    message = str(err.value)
    assert f"Lightning {L.__version__}" in message
    assert "RichProgressBar._get_train_description takes (epoch, extra), not (current_epoch)" in message
    assert "LightningCLI._parse_ckpt_path is gone" in message
    from deeplab_lightning.commands.cli import main

    with pytest.raises(compat.PrivateAPIChanged):  # the command checks before it starts anything
        main(["fit", "--help"])


def test_loop_position_and_bar_position_on_a_real_fit():
    class Record(L.Callback):
        def __init__(self):
            self.positions, self.bar_at = [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.positions.append(compat.loop_position(trainer))

        def on_train_end(self, trainer, pl_module):
            bar = trainer.progress_bar_callback
            compat.set_bar_position(bar, bar.train_progress_bar_id, 1)
            self.bar_at = next(t.completed for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)

    record = Record()
    bar = RichProgressBar(console_kwargs={"file": io.StringIO(), "force_terminal": True})
    trainer = L.Trainer(max_steps=5, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[record, bar])
    trainer.fit(BoringModel())
    assert record.positions == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]  # (epochs done, batches done in epoch)
    assert record.bar_at == 1


def test_console_kwargs_of_a_rich_bar():
    screen = io.StringIO()
    assert compat.console_kwargs(RichProgressBar(console_kwargs={"file": screen, "width": 77})) == {
        "file": screen, "width": 77}
    assert compat.console_kwargs(RichProgressBar()) == {}


def test_wandb_init_kwargs_of_a_wandb_logger_and_none_for_others(tmp_path):
    init = compat.wandb_init_kwargs(WandbLogger(project="compat", save_dir=str(tmp_path), offline=True))
    assert isinstance(init, dict) and init["project"] == "compat"
    assert compat.wandb_init_kwargs(CSVLogger(tmp_path)) is None
