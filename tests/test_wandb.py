"""An offline wandb run holds the config, the curves, the IoU table, the confusion matrix and the overlays; only
fit, validate and test create runs, each with its job type."""
import json

import pytest
import torch
import yaml

from deeplab_lightning.commands.cli import main



def test_offline_wandb_run_directory_holds_the_report(tmp_path, toy_dir, toy_settings, monkeypatch, write_config):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = write_config(tmp_path, toy_dir, toy_settings, max_steps=2)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {
        "project": "deeplab-lightning-test", "name": "toy_v3plus_r18", "group": "toy", "tags": ["v3plus", "os16"],
        "save_dir": str(tmp_path)}}
    config["trainer"]["log_every_n_steps"] = 1
    config["trainer"]["callbacks"] += [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        {"class_path": "deeplab_lightning.callbacks.WandbReport", "init_args": {"num_images": 2}}]
    path.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(path)])
    run = cli.trainer.logger.experiment
    assert run.name == "toy_v3plus_r18" and run.group == "toy" and list(run.tags) == ["v3plus", "os16"]
    assert run.job_type == "fit"
    run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")

    last = str(tmp_path / "ckpt" / "last.ckpt")
    main(["predict", "--config", str(path), "--ckpt_path", last])  # predictions, but no wandb run
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "missing.ckpt")])  # fails before wandb
    assert list((tmp_path / "wandb").glob("offline-run-*")) == [run_dir]
    tested = main(["test", "--config", str(path), "--ckpt_path", last]).trainer.logger.experiment
    assert tested.job_type == "test"
    # the toy test split is its validation split: the wandb run and its metrics say so
    assert tested.name == "toy_v3plus_r18 (test on the val split)" and "test_on_val" in tested.tags
    tested.finish()
    (test_dir,) = set((tmp_path / "wandb").glob("offline-run-*")) - {run_dir}
    assert b"test_on_val/mIoU" in next(test_dir.glob("*.wandb")).read_bytes()
    assert b'"test/mIoU"' not in next(test_dir.glob("*.wandb")).read_bytes()
    test_iou = json.loads(next((test_dir / "files" / "media" / "table").rglob("iou_table_*.json")).read_text())
    assert {row[0] for row in test_iou["data"]} == {2}  # the tested checkpoint's step
    files = run_dir / "files"
    tables = {p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in (files / "media" / "table").rglob("*.json")}
    assert {"iou_table", "confusion_counts", "trimap_table", "trimap_curve"} <= tables, tables
    iou = json.loads(next((files / "media" / "table").rglob("iou_table_*.json")).read_text())
    assert iou["columns"] == ["step", "class", "IoU", "boundary IoU", "boundary F1"]
    assert [row[1] for row in iou["data"]][:2] == ["background", "disk"]
    trimap = json.loads(next((files / "media" / "table").rglob("trimap_table_*.json")).read_text())
    assert [row[:3] for row in trimap["data"]][:2] == [["step 2", "void", 2], ["step 2", "void", 4]]
    images = [p.name for p in (files / "media" / "images" / "val").glob("*.png")]
    assert any(name.startswith("confusion_matrix") for name in images)
    assert sum(name.startswith("predictions") for name in images) == 2
    from PIL import Image

    sizes = {Image.open(p).size for p in (files / "media" / "images" / "val").glob("predictions*.png")}
    assert len(sizes) == 1  # padded to one size, so wandb shows them in one panel
    masks = list((files / "media" / "images" / "mask").rglob("*.png"))
    assert len(masks) == 4  # prediction and ground truth overlays of both images
    records = (next(run_dir.glob("*.wandb"))).read_bytes()  # config and history records, synced later
    for key in (b"train/loss", b"val/mIoU", b"val/iou/disk", b"lr-SGD", b"git_commit", b"deeplabv3plus_resnet18",
                b'"max_steps":2'):
        assert key in records, key


def test_a_resumed_fit_continues_its_wandb_run(tmp_path, toy_dir, toy_settings, monkeypatch, write_config):
    """The checkpoint names its wandb run; a fit resumed from it logs to that run (same id), not to a second run
    of the same name."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = write_config(tmp_path, toy_dir, toy_settings, max_steps=2)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {
        "project": "deeplab-lightning-test", "name": "resumed", "save_dir": str(tmp_path)}}
    path.write_text(yaml.safe_dump(config))
    first = main(["fit", "--config", str(path)]).trainer.logger.experiment
    first.finish()
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["wandb_run_id"] == first.id
    second = main(["fit", "--config", str(path), "--ckpt_path", str(last), "--trainer.max_steps", "4"])
    assert second.trainer.global_step == 4 and second.trainer.logger.experiment.id == first.id
    second.trainer.logger.experiment.finish()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(first.id) for r in runs)  # two attempts of one run, synced as one
