"""docs/paper_rows.yaml: every paper row's config, built with its command's arguments, has the settings the paper
states, and docs/design.md shows the table as the file says."""
import importlib.util
import re

import pytest
import torch
import yaml

from deeplab_lightning.cli import main
from deeplab_lightning.models import create_model

from conftest import REPO

SPEC = yaml.safe_load((REPO / "docs" / "paper_rows.yaml").read_text())
CONFIGS, ROWS = SPEC["configs"], SPEC["rows"]


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


def _network_setting(printed: dict, key: str):
    """multi_grid or atrous_rates of the network the config builds (on the meta device: no memory, no time)."""
    model = printed["model"]
    with torch.device("meta"):
        net = create_model(model["arch"], 21, output_stride=model["output_stride"], pretrained_backbone=False,
                           **(model.get("model_kwargs") or {}))
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


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_paper_config_has_the_papers_settings(config, capsys):
    _check(_printed(capsys, "fit", config, []), CONFIGS[config]["expect"], config)


@pytest.mark.parametrize("row", [r for r in ROWS if r.get("command") in ("validate", "test")],
                         ids=lambda r: f"{r['paper']} {r['table']} {r['row']}")
def test_each_rows_command_evaluates_as_the_paper(row, capsys):
    printed = _printed(capsys, row["command"], row["config"], row.get("args", []))
    expect = {**CONFIGS[row["config"]]["expect"], **row.get("expect", {})}
    if "eval_output_stride" in expect:  # evaluated at another stride than trained (the config test checks that)
        trained = expect.pop("model.output_stride")
        if expect.get("atrous_rates") and "atrous_rates" not in row.get("expect", {}):  # V3 3.3: rates x 16 / 8
            expect["atrous_rates"] = [r * trained // expect["eval_output_stride"] for r in expect["atrous_rates"]]
    _check(printed, expect, f"{row['config']} ({row['row']})")


def test_the_rows_name_existing_configs_and_the_design_table_is_current():
    paper_configs = {p.stem for p in (REPO / "experiments").glob("v[0-9]*.yaml")}
    assert set(CONFIGS) == paper_configs  # every paper config has its settings stated here
    for row in ROWS:
        assert row["config"] in CONFIGS and row.get("command", "fit") in ("fit", "validate", "test")
        if row.get("ablation"):
            assert (REPO / "experiments" / "ablations" / f"{row['ablation']}.yaml").is_file()
    spec = importlib.util.spec_from_file_location("paper_table", REPO / "scripts" / "paper_table.py")
    paper_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_table)
    design = (REPO / "docs" / "design.md").read_text()
    block = re.search(re.escape(paper_table.BEGIN) + r"\n(.*?)\n" + re.escape(paper_table.END), design, re.S)
    assert block and block.group(1) == paper_table.rendered(), "run python scripts/paper_table.py --write"
