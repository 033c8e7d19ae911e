"""`deeplab-lightning ablate` on the toy data: a 2-run grid, evaluated with MS + flip and CRF, reported."""
import csv
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from deeplab_lightning.ablate import load_ablation, plan, run_config, set_dotted
from deeplab_lightning.commands.ablate import main

from conftest import REPO


def test_ablation_grid_trains_evaluates_and_writes_the_report(tmp_path, toy_dir, toy_settings, capsys, write_config,
                                                              diverse_start):
    base = write_config(tmp_path, toy_dir, toy_settings, max_steps=2)
    spec = {"name": "toy_os", "base": str(base), "output_dir": str(tmp_path / "out"),
            "set": {"data.batch_size": 2, "model.init_checkpoint": diverse_start},
            "grid": {"model.output_stride": [8, 16], "model.model_kwargs.image_pooling": [True]},
            "evaluate": {"ms_flip": {"scales": [0.75, 1.0], "flip": True}, "output_stride": 8,
                         "crf": {"iterations": 2, "bi_xy_std": 20, "bi_rgb_std": 10}}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main([str(path), "--set", "data.batch_size=4"]) == 0  # the command line overrides the file
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "report.csv")))
    names = ["image_pooling=True,output_stride=8", "image_pooling=True,output_stride=16"]
    assert [r["run"] for r in rows] == names
    # The report's plain mIoU is that of the run's final weights (last.ckpt, as the papers report) at the trained
    # output stride, and "OS8" at the one `evaluate` names, as the command validates them: the run trained at 16
    # is evaluated at 16 and at 8 (its MS/flip and CRF columns at 8).
    from deeplab_lightning.commands.cli import main as cli_main

    report = json.loads((out / "report.json").read_text())
    assert [r["eval_output_stride"] for r in report] == [8, 8] and "mIoU_os8" not in report[0]
    for row in report:  # classes predicted anywhere in val, from the evaluation's confusion matrix
        again = torch.load(row["checkpoint"], weights_only=True)
        assert 2 <= row["predicted_classes"] <= len(again["hyper_parameters"]["class_names"])
    for column, run, stride in (("mIoU", 0, 8), ("mIoU", 1, 16), ("mIoU_os8", 1, 8)):
        assert report[run]["checkpoint"].endswith("last.ckpt")
        again = cli_main(["validate", "--config", str(out / names[run] / "run.yaml"), "--model.output_stride",
                          str(stride), "--ckpt_path", report[run]["checkpoint"]])
        assert report[run][column] == pytest.approx(again.trainer.callback_metrics["val/mIoU"].item(), abs=1e-4)
    for row in rows:
        assert all(row[key] for key in ("mIoU_ms_flip", "mIoU_crf", "mIoU_ms_flip_crf"))
        assert float(row["train_img_s"]) > 0 and float(row["eval_img_s"]) > 0 and float(row["params_M"]) > 0
    assert rows[0]["mIoU_ms_flip"] != rows[0]["mIoU"] or rows[0]["mIoU_crf"] != rows[0]["mIoU"]
    markdown = (out / "report.md").read_text().splitlines()
    assert "+MS/flip+CRF (%)" in markdown[2]
    assert len([line for line in markdown if line.startswith("| image_pooling=True")]) == 2
    assert Image.open(out / "report.png").size[0] > 500
    assert json.loads((out / "report.json").read_text())[1]["model.output_stride"] == 16
    printed = capsys.readouterr().out
    assert "Ablation toy_os" in printed and all(name in printed for name in names)  # whole names, on 80 columns
    assert "note: train img/s of 2 row(s) is measured over fewer than 50 steps" in printed
    for row in report:  # at boundaries: the trimap at the narrowest band, Boundary IoU, before and after the CRF
        assert row["trimap_band"] == "void" and row["trimap_width"] == row["trimap_curve"][0][0]
        assert row["trimap_mIoU"] == row["trimap_curve"][0][1] and len(row["trimap_curve_crf"]) > 1
        assert 0 <= row["boundary_mIoU"] <= 1 and 0 <= row["boundary_mIoU_crf"] <= 1
    assert "trimap 2px (%)" in markdown[2] and "Boundary IoU (%)" in markdown[2]
    assert Image.open(out / "report_trimap.png").size[0] > 300
    trained = yaml.safe_load((out / names[0] / "run.yaml").read_text())
    assert trained["model"]["output_stride"] == 8 and trained["data"]["init_args"]["batch_size"] == 4

    assert main([str(path), "--set", "data.batch_size=4"]) == 0  # finished runs are reused, not retrained
    assert capsys.readouterr().out.count("done before") == 2

    from deeplab_lightning.ablate import states

    ablation = load_ablation(path)
    ablation.set["data.batch_size"] = 4
    ablation.crf = {"iterations": 3}  # other evaluations: the results are not reused
    assert [s.status for s in states(ablation)] == ["outdated", "outdated"]
    (out / names[0] / "result.json").write_text('{"run": "image_po')  # a truncated result is not a result
    assert main([str(path), "--set", "data.batch_size=4", "--report"]) == 1
    assert f"outdated: {names[0]}: its result.json is unreadable" in capsys.readouterr().out


def test_ablation_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": "missing.yaml"}))
    with pytest.raises(ValueError, match="bad.yaml.*missing.yaml"):
        load_ablation(path)
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "quickstart.yaml"), "grids": {}}))
    with pytest.raises(ValueError, match="bad.yaml.*grids"):
        load_ablation(path)
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "quickstart.yaml"),
                                    "set": {"trainer.max_steps": "abc"}}))
    with pytest.raises(ValueError, match="trainer.max_steps must be a whole number of steps, got 'abc'"):
        plan(load_ablation(path))


def test_dotted_keys_step_into_init_args():
    config = {"data": {"class_path": "X", "init_args": {"batch_size": 2}}, "model": {}}
    set_dotted(config, "data.batch_size", 8)
    set_dotted(config, "model.model_kwargs.image_pooling", False)
    assert config == {"data": {"class_path": "X", "init_args": {"batch_size": 8}},
                      "model": {"model_kwargs": {"image_pooling": False}}}


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_ablations_write_configs_that_parse(path, tmp_path):
    ablation = load_ablation(path, tmp_path)
    assert len(ablation.runs()) >= 2
    assert main([str(path), "--output_dir", str(tmp_path), "--dry_run", "--no_estimate"]) == 0
    name, overrides = ablation.runs()[0]
    config = run_config(ablation, yaml.safe_load(ablation.base.read_text()), name, overrides, tmp_path)
    assert [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"][-2:]] == ["Throughput", "RunStatus"]


def test_variants_cross_the_grid(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "experiments" / "quickstart.yaml"),
        "variants": {"v3": {"model.arch": "deeplabv3_resnet18"}, "v3plus": {"model.arch": "deeplabv3plus_resnet18"}},
        "grid": {"model.output_stride": [16, 8]}}))
    runs = load_ablation(path).runs()
    assert [name for name, _ in runs] == ["v3,output_stride=16", "v3,output_stride=8",
                                          "v3plus,output_stride=16", "v3plus,output_stride=8"]
    assert runs[1][1] == {"model.arch": "deeplabv3_resnet18", "model.output_stride": 8}
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "quickstart.yaml")}))
    assert load_ablation(path).runs() == [("base", {})]


def test_dry_run_catches_a_model_argument_the_architecture_lacks(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "experiments" / "quickstart.yaml"),  # its model_kwargs include decoder_channels
        "variants": {"v3": {"model.arch": "deeplabv3_resnet18"}}}))
    with pytest.raises(ValueError, match="deeplabv3_resnet18 cannot be built.*decoder_channels"):
        main([str(path), "--output_dir", str(tmp_path / "out"), "--dry_run"])


def test_ablation_runs_keep_only_the_checkpoints_the_file_asks_for(tmp_path, toy_dir, toy_settings, write_config):
    """checkpoints: last keeps only last.ckpt (what ablate evaluates and resumes from); none removes it once the
    result is written (also from runs finished before): a grid of short runs need not fill a disk."""
    base = write_config(tmp_path / "base", toy_dir, toy_settings, max_steps=2)
    out, path = tmp_path / "out", tmp_path / "ablation.yaml"
    kept = {}
    for checkpoints in ("last", "none"):
        path.write_text(yaml.safe_dump({"base": str(base), "output_dir": str(out), "checkpoints": checkpoints,
                                        "grid": {"model.output_stride": [16]}}))
        assert main([str(path)]) == 0  # the second time the finished run is reused, not retrained
        kept[checkpoints] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.ckpt"))
        assert json.loads((out / "report.json").read_text())[0]["mIoU"] is not None
    assert kept == {"last": ["output_stride=16/checkpoints/last.ckpt"], "none": []}
    with pytest.raises(ValueError, match="checkpoints must be one of all, last, none"):
        path.write_text(yaml.safe_dump({"base": str(base), "checkpoints": "some"}))
        load_ablation(path)


def _ablation_file(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "a b ü.yaml"  # a name with a space and a non-ASCII letter
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "quickstart.yaml"), **spec}, allow_unicode=True))
    return path


@pytest.mark.parametrize("spec,named", [
    ({"variants": {"a/b": {}, "a_b": {"model.lr": 0.1}}}, ["'a/b'", "'a_b'", "folder 'a_b'"]),
    ({"grid": {"model.output_stride": [16, "16"]}}, ["output_stride=16", "share the folder"]),
    ({"variants": {"V3": {}, "v3": {"model.lr": 0.1}}}, ["'V3'", "'v3'"]),  # one folder on macOS
    ({"variants": {"..": {}}}, ["'..'", "not a folder of its own"]),
    ({"variants": {".": {}}}, ["'.'"]),
    ({"variants": {"slurm": {}}}, ["'slurm'"]),  # the folder of the SLURM scripts and logs
], ids=["slash", "int-vs-str", "case", "dotdot", "dot", "reserved"])
def test_run_names_that_would_share_or_escape_a_folder_are_refused_before_anything_is_written(
        tmp_path, spec, named, capsys):
    path = _ablation_file(tmp_path, output_dir=str(tmp_path / "out"), **spec)
    with pytest.raises(ValueError) as err:
        main([str(path), "--dry_run"])
    assert str(path) in str(err.value) and all(part in str(err.value) for part in named), err.value
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_run_folders_need_no_shell_quoting(tmp_path):
    path = _ablation_file(tmp_path, variants={"my variant (v2)": {}, "a'b": {"model.lr": 0.1}},
                          grid={"model.model_kwargs.atrous_rates": [[6, 12, 18]]})
    folders = [run.folder.name for run in plan(load_ablation(path, tmp_path / "out"))]
    assert sorted(folders) == ["a_b,atrous_rates=6-12-18", "my_variant__v2_,atrous_rates=6-12-18"]
    assert all(shlex.quote(name) == name for name in folders)
    assert all(run.folder.parent == tmp_path / "out" for run in plan(load_ablation(path, tmp_path / "out")))


@pytest.mark.parametrize("text,named", [
    ("base: [unclosed\n", "not valid YAML at line 2"),
    ("base: 42\n", "base must be the path of an experiment YAML"),
    ("base: {q}\ngrid: [model.output_stride]\n", "grid must be a mapping"),
    ("base: {q}\nevaluate: [ms_flip]\n", "evaluate must be a mapping"),
    ("base: {q}\nset: [trainer.max_steps]\n", "set must be a mapping"),
    ("base: {q}\nvariants: {{v: [1]}}\n", "variants.v must be a mapping"),
    ("base: {q}\nevaluate: {{crf: 3}}\n", "evaluate.crf must be a mapping"),
    ("base: {q}\nvariants: {{v3: {{model.output_stride: 8}}}}\ngrid: {{model.output_stride: [8, 16]}}\n",
     "grid.model.output_stride is also set by variant(s) v3"),
], ids=["yaml", "base", "grid", "evaluate", "set", "variant", "crf", "variant-and-grid"])
def test_malformed_ablation_files_are_one_line_naming_the_file_and_key(tmp_path, text, named, capsys, monkeypatch):
    from deeplab_lightning.commands import console_main

    path = tmp_path / "bad.yaml"
    path.write_text(text.format(q=REPO / "experiments" / "quickstart.yaml"))
    monkeypatch.delenv("DEEPLAB_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["deeplab-lightning", "ablate", str(path), "--dry_run"])
    with pytest.raises(SystemExit) as exit_info:
        console_main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and named in err and "Traceback" not in err


def test_an_empty_set_value_is_refused(tmp_path, capsys):
    path = _ablation_file(tmp_path)
    with pytest.raises(SystemExit):
        main([str(path), "--set", "trainer.max_steps=", "--dry_run"])
    assert "'trainer.max_steps=' gives trainer.max_steps no value; write trainer.max_steps=null" in capsys.readouterr().err


def test_earlier_runs_are_numbered_1_2_3_and_the_live_log_stays(tmp_path, monkeypatch):
    from deeplab_lightning.ablate.state import archive_earlier

    folder = tmp_path / "run"
    folder.mkdir()
    log = folder / "ablate.log"
    monkeypatch.setenv("DEEPLAB_ABLATION_LOG", str(log))
    for n in range(1, 4):
        (folder / "run.yaml").write_text(f"config {n}")
        log.write_text(f"attempts up to {n}")
        assert archive_earlier(folder) == folder / "earlier" / str(n)
        assert (folder / "earlier" / str(n) / "run.yaml").read_text() == f"config {n}"
        assert log.read_text() == (folder / "earlier" / str(n) / "ablate.log").read_text() == f"attempts up to {n}"
    assert sorted(p.name for p in (folder / "earlier").iterdir()) == ["1", "2", "3"]


def test_the_report_marks_runs_whose_numbers_cannot_be_compared_and_hatches_them_visibly(tmp_path):
    import numpy as np

    from deeplab_lightning.ablate import write_report
    from deeplab_lightning.ablate.report import METRICS
    from deeplab_lightning.evaluation.plots import ablation_figure

    common = {"params_M": 3.0, "train_img_s": 10.0, "train_img_s_steps": 95, "predicted_classes": 4, "steps": 100}
    rows = [{**common, "run": "one_class", "mIoU": 0.15, "predicted_classes": 1},
            {**common, "run": "os16", "mIoU": 0.61}, {**common, "run": "os8", "mIoU": 0.61},
            {**common, "run": "short", "mIoU": 0.40, "steps": 50, "train_img_s_steps": 45},
            {**common, "run": "fine", "mIoU": 0.70}, {"run": "later", "status": "not started"}]
    write_report(rows, [], tmp_path, "t")
    notes = {row["run"]: row.get("note") for row in json.loads((tmp_path / "report.json").read_text())}
    assert notes == {"one_class": "predicts one class everywhere",
                     "os16": "same metrics as os8: did its setting take effect?",
                     "os8": "same metrics as os16: did its setting take effect?",
                     "short": "trained 50 of the others' 100 steps; train img/s over < 50 steps",
                     "fine": None, "later": None}
    assert "| short | - | 40.00 |" in (tmp_path / "report.md").read_text()  # status column: one run not done
    assert list(csv.DictReader((tmp_path / "report.csv").open()))[0]["note"] == "predicts one class everywhere"

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = ablation_figure(rows, METRICS, "t", ["short"], ["one_class", "os16", "os8", "short"])
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)

    def light(bar) -> float:
        """The share of near-white pixels inside a bar."""
        (x0, y0), (x1, y1) = bar.get_window_extent().get_points()
        h = pixels.shape[0]
        inside = pixels[int(h - y1) + 2:int(h - y0) - 2, int(x0) + 2:int(x1) - 2].reshape(-1, 3)
        return float((inside.min(1) > 220).mean())

    miou_bars, speed_bars = figure.axes[0].containers[0], figure.axes[1].containers[0]
    for bar in (miou_bars[0], miou_bars[3], speed_bars[3]):  # hatched: stripes of white and of the bar's colour
        assert 0.05 < light(bar) < 0.9, light(bar)
    assert light(miou_bars[4]) < 0.01 and light(speed_bars[4]) < 0.01  # plain bars are solid
