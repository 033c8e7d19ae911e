"""docs/paper_rows.yaml: every paper row's config, built with its command's arguments, has the settings the paper
states and evaluates as the published row did; every number it (or an ablation file) quotes is the published one in
docs/paper_numbers.yaml, itself the shared table of published rows where that is present; docs/design.md shows
the tables as the files say."""
import functools
import importlib.util
import re

import pytest
import torch
import yaml

from deeplab_lightning.ablate.spec import load_ablation
from deeplab_lightning.commands.cli import main
from deeplab_lightning.models import create_model

from conftest import REPO

SPEC = yaml.safe_load((REPO / "docs" / "paper_rows.yaml").read_text())
CONFIGS, ROWS, NOT_COVERED = SPEC["configs"], SPEC["rows"], SPEC["not_covered"]
SHARED = REPO.parent / "shared" / "paper_tables.yaml"  # the shared table of published rows, beside the clone


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_table", REPO / "scripts" / "paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAPER_TABLE = _load_script()
PUBLISHED = PAPER_TABLE.published_rows()


def _id(row: dict) -> str:
    return f"{row['paper']} {row['table']} {row['row']}"


def _printed(capsys, command: str, config: str, args: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(REPO / "experiments" / f"{config}.yaml"), *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def _callback(printed: dict, *names: str) -> dict | None:
    """init_args of the first callback whose class is one of ``names`` (with ``policy`` for the schedules)."""
    for callback in printed["trainer"].get("callbacks") or []:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name in names:
            return {"policy": "poly", **callback.get("init_args", {})} if name == "PolyLR" else callback["init_args"]
    return None


def _network(model: dict):
    """The network a printed config builds, on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return create_model(model["arch"], 21, output_stride=model["output_stride"], pretrained_backbone=False,
                            **(model.get("model_kwargs") or {}))


def _network_setting(printed: dict, key: str):
    """multi_grid or atrous_rates of the network the config builds."""
    net = _network(printed["model"])
    value = getattr(net.backbone, "multi_grid", None) if key == "multi_grid" else getattr(
        getattr(net, "aspp", None), "atrous_rates", None)
    return list(value) if value is not None else None


def _setting(printed: dict, key: str):
    if key == "schedule":
        return _callback(printed, "LRSchedule", "PolyLR")
    if key == "crf":
        return _callback(printed, "DenseCRFRefinement")
    if key in ("ms_scales", "flip", "window"):
        inference = _callback(printed, "MultiScaleInference") or {}
        return inference.get("scales" if key == "ms_scales" else key)
    if key in ("multi_grid", "atrous_rates"):
        return _network_setting(printed, key)
    if key == "eval_output_stride":
        return printed["model"]["output_stride"]
    section, name = key.split(".", 1)
    node = printed[section]["init_args"] if section == "data" else printed[section]
    return node.get(name)


def _check(printed: dict, expect: dict, where: str) -> None:
    for key, wanted in expect.items():
        found = _setting(printed, key)
        if isinstance(wanted, dict):  # a callback's settings: the stated ones must match
            assert found is not None, f"{where}: no {key} callback"
            found = {k: found.get(k) for k in wanted}
        assert found == wanted, f"{where}: {key} is {found!r}, the paper's row says {wanted!r}"


def _scales(ms_test) -> list[float] | None:
    """The test scales a published row states: ``"0.5:0.25:1.75"`` (the model zoo) as a list, None where it says only
    that there were several (True) or none."""
    if isinstance(ms_test, str):
        start, step, stop = map(float, ms_test.split(":"))
        return [start + i * step for i in range(round((stop - start) / step) + 1)]
    return None


def _multi_scale(ms_test) -> bool | None:
    if isinstance(ms_test, list):  # [1.0]: a single scale
        return len(ms_test) > 1
    return None if ms_test is None else bool(ms_test)


def _evaluation(printed: dict, command: str) -> dict:
    """How the printed command evaluates: output stride, multi-scale (test-time scales or V2's MSC inputs), flip,
    dense CRF. validate runs neither the test-time scales nor the CRF (their callbacks are for test and predict)."""
    def runs(callback):
        return callback is not None and command in callback.get("stages", ["test"])

    inference, crf = _callback(printed, "MultiScaleInference"), _callback(printed, "DenseCRFRefinement")
    scales = inference["scales"] if runs(inference) else [1.0]
    return {"eval_os": printed["model"]["output_stride"], "scales": scales,
            "ms": len(scales) > 1 or bool(printed["model"].get("msc_scales")),
            "flip": bool(runs(inference) and inference.get("flip")), "crf": runs(crf)}


def _check_evaluation(found: dict, entry: dict, where: str) -> None:
    """The evaluation a command runs is the published row's: every setting the row states."""
    stated = {"eval_os": entry.get("eval_os"), "ms": _multi_scale(entry.get("ms_test")),
              "flip": entry.get("flip_test"), "crf": entry.get("crf"), "scales": _scales(entry.get("ms_test"))}
    for key, wanted in stated.items():
        if wanted is not None:
            assert found[key] == wanted, f"{where}: evaluates with {key} {found[key]!r}, the published row {wanted!r}"


def _needs_extra_data(entry: dict) -> bool:
    return any("COCO" in p or "JFT" in p for p in entry.get("pretrain") or [])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_paper_config_has_the_papers_settings(config, capsys):
    _check(_printed(capsys, "fit", config, []), CONFIGS[config]["expect"], config)


@pytest.mark.parametrize("row", [r for r in ROWS if r.get("command") in ("validate", "test")], ids=_id)
def test_each_rows_command_evaluates_as_the_paper(row, capsys):
    printed = _printed(capsys, row["command"], row["config"], row.get("args", []))
    expect = {**CONFIGS[row["config"]]["expect"], **row.get("expect", {})}
    if "eval_output_stride" in expect:  # evaluated at another stride than trained (the config test checks that)
        trained = expect.pop("model.output_stride")
        if expect.get("atrous_rates") and "atrous_rates" not in row.get("expect", {}):  # V3 3.3: rates x 16 / 8
            expect["atrous_rates"] = [r * trained // expect["eval_output_stride"] for r in expect["atrous_rates"]]
    where = f"{row['config']} ({row['row']})"
    _check(printed, expect, where)
    if row.get("miou") is not None:  # and the evaluation is the published row's
        entry = PAPER_TABLE.published(row["paper"], row["table"], row["row"], row.get("eval_os"))
        _check_evaluation(_evaluation(printed, row["command"]), entry, where)
        if entry.get("train_os") is not None:
            assert CONFIGS[row["config"]]["expect"]["model.output_stride"] == entry["train_os"], where


@pytest.mark.parametrize("row", [r for r in ROWS if not r.get("ablation")], ids=_id)
def test_each_row_quotes_its_published_number(row):
    """miou is the published row's value; a row without one says why and matches no published row; a row whose
    published model was pretrained on MS-COCO or JFT says it needs them, and only such a row does (a converted
    official checkpoint needs nothing: its weights hold the pre-training)."""
    if row.get("miou") is None:
        assert row.get("no_number"), f"{_id(row)}: no published number and no reason"
        assert not [e for e in PUBLISHED if (e["paper"], e["table"], e["row"]) == (row["paper"], row["table"], row["row"])]
        return
    entry = PAPER_TABLE.published(row["paper"], row["table"], row["row"], row.get("eval_os"))
    assert row["miou"] == entry["value"], f"{_id(row)}: {row['miou']}, published {entry['value']} ({entry['source']})"
    assert bool(row.get("needs")) == (_needs_extra_data(entry) and not row.get("convert")), \
        f"{_id(row)}: pretrained on {entry['pretrain']}"
    assert not row.get("no_number")


def _trained_output_stride(ablation, overrides: dict) -> int:
    settings = {**ablation.set, **overrides}
    if "model.output_stride" in settings:
        return settings["model.output_stride"]
    return yaml.safe_load(ablation.base.read_text())["model"]["output_stride"]


@pytest.mark.parametrize("row", [r for r in ROWS if r.get("ablation")], ids=_id)
def test_each_ablation_row_quotes_the_published_numbers_of_its_runs(row, tmp_path):
    """Each number an ablation row quotes is a published row's, for a run of the file and a column its report has,
    evaluated as the published row was (output stride; MS + flip); the file's base is the row's config."""
    ablation = load_ablation(REPO / "experiments" / "ablations" / f"{row['ablation']}.yaml", tmp_path)
    assert ablation.base == (REPO / "experiments" / f"{row['config']}.yaml").resolve()
    runs = dict(ablation.rows())
    numbers = PAPER_TABLE.ablation_numbers(row)
    assert numbers, f"{_id(row)}: no published numbers (numbers: or the file's published:)"
    for run, column, entry in numbers:
        where = f"{row['ablation']} {run} {column}"
        assert run in runs, f"{where}: not a run of the file ({', '.join(runs)})"
        assert entry["paper"] == row["paper"] and not _needs_extra_data(entry), where
        trained = _trained_output_stride(ablation, runs[run])
        if entry.get("train_os") is not None:
            assert trained == entry["train_os"], f"{where}: trained at OS {trained}, published {entry['train_os']}"
        if column == "mIoU":
            evaluated, ms_flip = trained, False
        elif column == "mIoU_ms_flip":
            assert ablation.ms_flip, f"{where}: the file evaluates no MS + flip"
            evaluated, ms_flip = ablation.output_stride or trained, True
        else:
            evaluated, ms_flip = int(column.removeprefix("mIoU_os")), False
            assert ablation.output_stride == evaluated and evaluated != trained, f"{where}: not a column of the file"
        if entry.get("eval_os") is not None:
            assert evaluated == entry["eval_os"], f"{where}: evaluated at OS {evaluated}, published {entry['eval_os']}"
        for key in ("ms_test", "flip_test"):
            if entry.get(key) is not None:
                assert bool(_multi_scale(entry[key]) if key == "ms_test" else entry[key]) == ms_flip, f"{where}: {key}"
        if ms_flip and _scales(entry.get("ms_test")):
            assert ablation.ms_flip["scales"] == _scales(entry["ms_test"]), where


def test_the_ablation_files_published_numbers_are_the_papers():
    """deeplab_lightning/ablate/published.yaml (what an ablation report puts beside a row) holds the published
    rows' values."""
    for entry in yaml.safe_load(PAPER_TABLE.PUBLISHED.read_text()):
        paper = PAPER_TABLE.short_paper(entry["paper"])
        found = PAPER_TABLE.published(paper, entry["table"], entry["row"], entry.get("eval_os"))
        assert entry["value"] == found["value"], entry["id"]
        assert entry["split"] == found["split"] and entry["source"] == found["source"], entry["id"]


@functools.lru_cache(maxsize=None)
def _covered() -> frozenset[tuple[str, str, str]]:
    """(paper, table, row) of every published row a config or an ablation file reproduces (read once: every ablation
    file is planned)."""
    covered = {(r["paper"], r["table"], r["row"]) for r in ROWS if not r.get("ablation")}
    covered |= {(e["paper"], e["table"], e["row"]) for r in ROWS if r.get("ablation")
                for _, _, e in PAPER_TABLE.ablation_numbers(r)}
    return frozenset(covered)


@pytest.mark.parametrize("item", NOT_COVERED, ids=lambda i: f"{i['paper']} {i['table']}")
def test_rows_not_covered_are_published_rows_with_a_reason(item):
    assert item["reason"] and item["rows"]
    for label in item["rows"]:
        PAPER_TABLE.published(item["paper"], item["table"], label)  # exactly one published row of that label
    assert not _covered() & {(item["paper"], item["table"], label) for label in item["rows"]}, "listed as covered too"


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared table of published rows is not beside this clone")
def test_the_numbers_file_is_the_shared_table():
    """docs/paper_numbers.yaml is a copy of the shared table's rows (the papers' own rows), value and source
    included."""
    shared = yaml.safe_load(SHARED.read_text())
    for entry in PUBLISHED:
        copy = {k: v for k, v in entry.items() if k != "checked"}
        assert copy in shared, f"{entry['paper']} {entry['table']} {entry['row']}: not as in {SHARED}"


def test_the_numbers_file_states_where_each_table_was_read():
    for table in yaml.safe_load(PAPER_TABLE.NUMBERS.read_text()):
        assert table["source"].startswith("https://") and table["checked"], f"{table['paper']} {table['table']}"
        assert len({row["row"] for row in table["rows"]}) == len(table["rows"]) or table["paper"] == "TF model zoo"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_resnet_config_states_its_multi_grid_layout(config, capsys):
    """torchvision's ResNet layout puts block4's stride in its first unit, so multi-grid gives other rates than the
    paper's TF-slim layout: every config whose ResNet has a multi-grid states it."""
    model = _printed(capsys, "fit", config, [])["model"]
    multi_grid = getattr(_network(model).backbone, "multi_grid", None)
    if model["arch"].split("_")[-1].startswith("resnet") and multi_grid and set(multi_grid) != {1}:
        assert any("multi-grid" in d for d in CONFIGS[config].get("deviations", [])), config


def test_the_rows_name_existing_configs_and_the_design_table_is_current():
    paper_configs = {p.stem for p in (REPO / "experiments").glob("v[0-9]*.yaml")}
    assert paper_configs <= set(CONFIGS)  # every paper config has its settings stated here
    assert all((REPO / "experiments" / f"{name}.yaml").is_file() for name in CONFIGS)  # and only existing ones
    for row in ROWS:
        assert row["config"] in CONFIGS and row.get("command", "fit") in ("fit", "validate", "test")
        if row.get("ablation"):
            assert (REPO / "experiments" / "ablations" / f"{row['ablation']}.yaml").is_file()
        if row.get("convert"):  # an official checkpoint: converted, then evaluated (no training)
            assert row.get("checkpoint") and row.get("command") in ("validate", "test"), _id(row)
    design = (REPO / "docs" / "design.md").read_text()
    block = re.search(re.escape(PAPER_TABLE.BEGIN) + r"\n(.*?)\n" + re.escape(PAPER_TABLE.END), design, re.S)
    assert block and block.group(1) == PAPER_TABLE.rendered(), "run python scripts/paper_table.py --write"
    assert "see the paper" not in block.group(1)
