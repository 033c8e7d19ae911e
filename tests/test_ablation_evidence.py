"""Ablations that answer with evidence: seeds as an axis, statistics over seeds and paired differences to a
baseline (checked against scipy.stats), published numbers, the cost of every row and a --dry_run estimate."""
import json
import math
import random
import re

import pytest
import yaml
from scipy import stats

from deeplab_lightning.ablate import load_ablation, plan
from deeplab_lightning.ablate.statistics import paired, summarize
from deeplab_lightning.commands.ablate import main
from deeplab_lightning.evaluation.per_image import bootstrap_delta_interval, bootstrap_interval, read_per_image, split_miou

from conftest import REPO


def test_summary_and_paired_test_equal_scipy_on_constructed_results():
    rng = random.Random(0)
    for n in (2, 3, 5, 8):
        base = {seed: 0.6 + rng.gauss(0, 0.01) for seed in range(n)}
        row = {seed: value + 0.004 + rng.gauss(0, 0.003) for seed, value in base.items()}
        values = list(row.values())
        summary = summarize(values)
        low, high = stats.t.interval(0.95, n - 1, loc=stats.tmean(values), scale=stats.sem(values))
        assert summary.mean == pytest.approx(sum(values) / n) and summary.n == n
        assert summary.std == pytest.approx(stats.tstd(values)) and (summary.low, summary.high) == pytest.approx((low, high))
        difference = paired(row, base)
        reference = stats.ttest_rel(values, list(base.values()))
        diffs = [row[s] - base[s] for s in range(n)]
        low, high = stats.t.interval(0.95, n - 1, loc=sum(diffs) / n, scale=stats.sem(diffs))
        assert difference.p == pytest.approx(reference.pvalue) and difference.n == n
        assert (difference.low, difference.high) == pytest.approx((low, high))
    # only the seeds both rows ran are paired; one seed gives no interval; identical differences a point
    assert paired({0: 0.5, 1: 0.6, 7: 0.1}, {0: 0.4, 1: 0.5}).seeds == (0, 1)
    assert paired({0: 0.5}, {0: 0.4}).low is None and paired({0: 0.5}, {1: 0.4}) is None
    assert paired({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}).p == 0.0
    assert summarize([0.5]).std is None and math.isclose(summarize([0.5, 0.7]).mean, 0.6)


def test_a_grid_of_two_rows_and_two_seeds_reports_what_its_runs_measured(tmp_path, toy_dir, toy_settings,
                                                                        write_config, capsys, diverse_start):
    base = write_config(tmp_path / "base", toy_dir, toy_settings, max_steps=3)
    spec = {"name": "seeds", "base": str(base), "output_dir": str(tmp_path / "out"), "checkpoints": "none",
            "set": {"data.batch_size": 2, "model.init_checkpoint": diverse_start},  # predicts every class
            "seeds": [0, 1], "baseline": "os16",
            "variants": {"os16": {}, "os8": {"model.output_stride": 8}},
            "published": {"os16": "v3_t5_mg124_aspp"}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main([str(path), "--dry_run"]) == 0
    printed = capsys.readouterr().err
    assert "Estimated training cost of the grid:" in printed and "probe on this CPU" in printed
    ablation = load_ablation(path)
    runs = plan(ablation)
    assert [r.name for r in runs] == ["os16,seed=0", "os16,seed=1", "os8,seed=0", "os8,seed=1"]
    assert [yaml.safe_load(r.config)["seed_everything"] for r in runs] == [0, 1, 0, 1]

    assert main([str(path), "--run", "os8,seed=1"]) == 0  # one seed of os8 is left out for now
    for name in ("os16,seed=0", "os16,seed=1", "os8,seed=0"):
        assert main([str(path), "--run", name]) == 0
    capsys.readouterr()
    results = {r.name: json.loads((r.folder / "result.json").read_text()) for r in runs}
    # rows that share a seed saw the same first training batch; another seed another one
    assert results["os16,seed=0"]["first_batch"] == results["os8,seed=0"]["first_batch"]
    assert results["os16,seed=0"]["first_batch"] != results["os16,seed=1"]["first_batch"]
    assert all(r["train_device_h"] > 0 and r["eval_device_h"] > 0 and r["devices"] == 1 for r in results.values())

    assert main([str(path), "--report"]) == 0
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    for row in ("os16", "os8"):  # the report equals a recomputation from the runs' result.json
        values = [results[f"{row},seed={s}"]["mIoU"] for s in (0, 1)]
        assert values[0] != values[1]  # other batches, other weights
        low, high = stats.t.interval(0.95, 1, loc=sum(values) / 2, scale=stats.sem(values))
        assert rows[row]["mIoU"] == pytest.approx(sum(values) / 2) and rows[row]["n"] == 2
        assert (rows[row]["mIoU_low"], rows[row]["mIoU_high"]) == pytest.approx((low, high))
        assert rows[row]["train_device_h"] == pytest.approx(sum(results[f"{row},seed={s}"]["train_device_h"]
                                                                for s in (0, 1)))
    diffs = [results[f"os8,seed={s}"]["mIoU"] - results[f"os16,seed={s}"]["mIoU"] for s in (0, 1)]
    assert rows["os8"]["mIoU_delta"] == pytest.approx(sum(diffs) / 2)
    if diffs[0] != diffs[1]:
        assert rows["os8"]["mIoU_p"] == pytest.approx(stats.ttest_rel(
            [results[f"os8,seed={s}"]["mIoU"] for s in (0, 1)],
            [results[f"os16,seed={s}"]["mIoU"] for s in (0, 1)]).pvalue)
    assert "mIoU_delta" not in rows["os16"]
    (published,) = rows["os16"]["published"]
    assert published["value"] == 76.58 and published["ours_minus_published"] == pytest.approx(
        100 * rows["os16"]["mIoU"] - 76.58)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "V3 Table 5, MG(1, 2, 4) + ASPP(6, 12, 18): 76.58" in markdown and "Δ mIoU vs os16" in markdown
    assert "device-hours" in markdown
    assert len(json.loads((tmp_path / "out" / "runs.json").read_text())) == 4

    # a row missing a seed says so, and its statistics use the seeds it has
    (runs[3].folder / "result.json").unlink()
    assert main([str(path), "--report"]) == 1
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    assert rows["os8"]["status"] == "1 of 2 seeds done" and rows["os8"]["missing_seeds"] == [1]
    assert rows["os8"]["n"] == 1 and rows["os8"]["mIoU"] == pytest.approx(results["os8,seed=0"]["mIoU"])
    # one run left: its interval is the bootstrap over images of its saved per-image matrices, and so is the paired
    # difference to the baseline's run of the same seed
    matrices = read_per_image(runs[2].folder / results["os8,seed=0"]["per_image"]["mIoU"])
    assert split_miou(matrices) == pytest.approx(results["os8,seed=0"]["mIoU"], abs=1e-6)
    assert rows["os8"]["mIoU_interval"] == "bootstrap over images"
    assert (rows["os8"]["mIoU_low"], rows["os8"]["mIoU_high"]) == pytest.approx(bootstrap_interval(matrices))
    assert rows["os8"]["mIoU_low"] <= rows["os8"]["mIoU"] <= rows["os8"]["mIoU_high"]
    base = read_per_image(runs[0].folder / results["os16,seed=0"]["per_image"]["mIoU"])
    assert rows["os8"]["mIoU_paired_seeds"] == [0] and rows["os8"]["mIoU_delta_interval"] == "bootstrap over images"
    assert (rows["os8"]["mIoU_delta_low"], rows["os8"]["mIoU_delta_high"]) == pytest.approx(
        bootstrap_delta_interval(base, matrices))
    changes = rows["os8"]["image_changes"]
    assert all(d > 0 for _, d in changes["improves"]) and all(d < 0 for _, d in changes["breaks"])
    ranking = (tmp_path / "out" / "analysis" / "os8,seed=0_per_image.csv").read_text().splitlines()
    assert ranking[0] == "rank,id,mIoU" and len(ranking) == 1 + len(matrices.ids)
    assert (tmp_path / "out" / "analysis" / "os8,seed=0_worst.png").is_file()


def test_seed_baseline_and_published_settings_are_checked(tmp_path):
    quickstart = str(REPO / "experiments" / "quickstart.yaml")
    path = tmp_path / "a.yaml"
    for spec, named in (({"seeds": [0, 0]}, "seeds must be a list of distinct whole numbers"),
                        ({"seeds": [0], "set": {"seed_everything": 3}}, "seeds and seed_everything"),
                        ({"baseline": "nope"}, "baseline names 'nope', not a row"),
                        ({"published": {"base": "v9_table"}}, "unknown published number(s) 'v9_table'")):
        path.write_text(yaml.safe_dump({"base": quickstart, **spec}))
        with pytest.raises(ValueError, match=re.escape(named)):
            load_ablation(path)


def test_the_v3_paper_ablations_state_their_published_numbers():
    for name, count in (("v3_r101_voc_multigrid_pooling", 5), ("v3_cascade_voc_stride_depth_multigrid", 13)):
        ablation = load_ablation(REPO / "experiments" / "ablations" / f"{name}.yaml")
        assert sorted(ablation.published) == sorted(row for row, _ in ablation.rows()) and len(ablation.published) == count


def test_the_report_table_goes_to_one_wandb_summary_run_of_job_type_ablation(tmp_path, monkeypatch):
    from deeplab_lightning.ablate.summary import log_summary, summary_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "quickstart.yaml"), "seeds": [0, 1],
                                    "baseline": "base", "output_dir": str(tmp_path / "out")}))
    import wandb

    started = []
    init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started.append(init(**kwargs)) or started[-1])
    assert main([str(path), "--report"]) == 1  # nothing trained yet: a report, but no summary run
    assert not started and not (tmp_path / "out" / "wandb").exists()
    ablation = load_ablation(path)
    rows = [{"run": "base", "n": 2, "mIoU": 0.61, "mIoU_low": 0.58, "mIoU_high": 0.64, "seeds": [0, 1]},
            {"run": "other", "n": 2, "mIoU": 0.63, "mIoU_delta": 0.02, "mIoU_p": 0.04, "seeds": [0, 1]}]
    assert log_summary(ablation, rows) == summary_id(ablation)
    assert log_summary(ablation, rows) == summary_id(ablation)  # a later report updates the same run
    assert [(r.job_type, r.group) for r in started] == [("ablation", "a")] * 2
    runs = sorted((ablation.output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(summary_id(ablation)) for r in runs)
    table = json.loads(next((runs[0] / "files" / "media" / "table").glob("report_*.json")).read_text())
    assert table["columns"][:5] == ["run", "n", "mIoU", "mIoU_low", "mIoU_high"]
    assert table["data"][1][table["columns"].index("mIoU_delta")] == 0.02
