import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_cpu_smoke_run_writes_the_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--device", "cpu", "--size", "64",
           "--models", "ours_v3plus_r101_os16", "tv_v3_r101_os8", "--modes", "fp32", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "train img/s" in result.stdout
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == ["ours_v3plus_r101_os16", "tv_v3_r101_os8"]
    assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in data["results"])
    assert data["multiscale"]["fp32"]["ours_s"] > 0 and data["multiscale"]["fp32"]["naive_s"] > 0
    assert "predict_multiscale" in result.stdout
    assert data["loop"]["fp32"]["plain_img_s"] > 0 and data["loop"]["fp32"]["lightning_img_s"] > 0
    assert "Lightning img/s" in result.stdout
    assert {row["impl"] for row in data["crf"]} >= {"deeplab_lightning"} and "Dense CRF" in result.stdout


def test_conv_probe_space_to_batch_computes_the_atrous_convolution():
    """The probe's space-to-batch variant (TensorFlow's atrous_conv2d) must be the same arithmetic as a
    dilated convolution, or its timings compare different things."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "benchmarks"))
    from conv_probe import batch_to_space, space_to_batch

    x, w = torch.randn(2, 5, 12, 12, dtype=torch.float64), torch.randn(4, 5, 3, 3, dtype=torch.float64)
    for rate in (2, 3, 4):
        assert torch.equal(batch_to_space(space_to_batch(x, rate), rate), x)
        atrous = batch_to_space(F.conv2d(space_to_batch(x, rate), w, padding=1), rate)
        torch.testing.assert_close(atrous, F.conv2d(x, w, padding=rate, dilation=rate))


def test_the_smp_layout_row_is_smp_s_architecture():
    """``ours_as_smp_v3plus_r101_os16`` must be segmentation_models_pytorch's DeepLabV3Plus layer for layer:
    with smp's weights copied in registration order, it computes smp's logits."""
    import segmentation_models_pytorch as smp
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from smp_layout import SmpLayoutV3Plus

    torch.manual_seed(0)
    theirs, ours = smp.DeepLabV3Plus("resnet101", encoder_weights=None, classes=5).eval(), SmpLayoutV3Plus(5).eval()
    source, target = theirs.state_dict(), ours.state_dict()
    assert len(source) == len(target)
    assert [v.shape for v in source.values()] == [v.shape for v in target.values()]
    for module in theirs.modules():  # non-trivial BN statistics, so a misplaced BN would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1), module.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(dict(zip(target, (v.clone() for v in theirs.state_dict().values()))))
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = theirs(images)
        torch.testing.assert_close(ours(images), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fit_protocol_smoke_run_reports_throughput_and_the_data_wait(tmp_path):
    """The GPU measurement of the real fit command must not rot between GPU sessions: its CPU smoke run
    trains, passes extra fit arguments on, and splits the time into data wait and training."""
    out = tmp_path / "fit.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fit_protocol.py"), "--cpu", "--steps", "4", "--images", "8",
           "--workers", "1", "--profile", "--json", str(out), "--", "--trainer.log_every_n_steps", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["steps"] == 4 and data["img_per_s"] > 0
    profile = data["profile_s"]
    assert 0 <= profile["[_TrainingEpochLoop].train_dataloader_next"] < profile["run_training_epoch"]
    assert "waiting for the data workers" in result.stdout


def test_data_path_benchmark_times_every_pipeline_on_the_same_files(tmp_path):
    out = tmp_path / "data_path.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_path.py"), "--voc", "2", "--cityscapes", "1",
           "--rounds", "1", "--city-size", "256", "512", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())["results_ms"]
    pipelines = {"ours", "ours, cached", "torchvision references", "mmsegmentation-style"}
    for row in ("voc training sample", "cityscapes training sample", "cityscapes evaluation read"):
        assert set(data[row]) == pipelines and all(ms > 0 for ms in data[row].values())
    assert "cores per GPU at 300 img/s (voc)" in result.stdout and "Cityscapes cached, ours / fastest peer" in result.stdout
