"""Ablations at scale on the toy data: the local queue (one run per GPU group, SIGTERM), one run by hand and the
report of many processes, and SLURM job arrays on the real scheduler that ``scripts/slurm_local.sh`` starts
(fake GPUs; ``.ci/run`` starts it and sets ``DEEPLAB_TEST_SLURM=1``, which makes these tests required)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deeplab_lightning.ablate import load_ablation, plan
from deeplab_lightning.ablate.state import read_json
from deeplab_lightning.commands.ablate import main

from conftest import REPO


def write_ablation(tmp_path: Path, base: Path, max_steps: int, **spec) -> Path:
    """An ablation file over the tiny config: a grid of output strides unless ``spec`` says otherwise."""
    spec = {"name": tmp_path.name, "base": str(base), "output_dir": str(tmp_path / "out"),
            "set": {"trainer.max_steps": max_steps, "trainer.val_check_interval": max_steps}, **spec}
    spec.setdefault("grid", {"model.output_stride": [16, 8]})
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def step_of(folder: Path) -> int:
    return (read_json(folder / "status.json") or {}).get("step") or 0


def test_local_queue_runs_two_runs_at_once_each_on_its_own_devices(tmp_path, toy_dir, toy_settings, write_config,
                                                                   capsys, monkeypatch):
    fresh = tmp_path / "toy_data"  # generated once, by the queue, before any run starts
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=4,
                          set={"trainer.max_steps": 4, "trainer.val_check_interval": 4, "data.data_dir": str(fresh)})
    monkeypatch.chdir(tmp_path)  # the README's style: a relative file and output_dir
    assert main([path.name, "--gpus", "0,1", "--output_dir", "out"]) == 0
    attempts = [read_json(run.folder / "attempt.json") for run in plan(load_ablation(path, "out"))]
    assert sorted(a["devices"] for a in attempts) == ["0", "1"]  # CUDA_VISIBLE_DEVICES of each child
    assert len({a["pid"] for a in attempts}) == 2 and all(a["outcome"] == "done" for a in attempts)
    assert max(a["started"] for a in attempts) < min(a["ended"] for a in attempts)  # their time spans overlap
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["steps"] == 4 for r in rows)
    printed = capsys.readouterr().out
    assert "started output_stride=16 on CUDA_VISIBLE_DEVICES=0" in printed and "done output_stride=8: mIoU" in printed
    assert -1 < printed.index(f"Preparing the data of ToyVOCDataModule ({fresh})") < printed.index("started")
    assert_finished_for_every_launcher(tmp_path, path, "out", capsys, monkeypatch)
    with pytest.raises(SystemExit):  # groups must split the GPUs evenly
        main([str(path), "--gpus", "0,1,2", "--gpus_per_run", "2"])
    assert "must divide the 3 GPUs" in capsys.readouterr().err


def assert_finished_for_every_launcher(tmp_path: Path, path: Path, output_dir: str, capsys, monkeypatch) -> None:
    """A finished grid is finished whatever spells its file and output folder (relative, absolute, through a
    symlink, from another working directory): the report exits 0 and a plain rerun trains and moves nothing."""
    out = tmp_path / output_dir
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name in ("result.json", "attempt.json", "run.yaml")}
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    spellings = [(tmp_path, [path.name, "--output_dir", output_dir]),
                 (tmp_path / "elsewhere", [f"../{path.name}", "--output_dir", f"../{output_dir}"]),
                 (tmp_path, [str(tmp_path / "link" / path.name), "--output_dir", str(tmp_path / "link" / output_dir)])]
    for cwd, args in spellings:
        monkeypatch.chdir(cwd)
        assert main([*args, "--report"]) == 0, capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([path.name, "--output_dir", output_dir]) == 0  # sequential rerun: every run done before
    assert capsys.readouterr().out.count("done before, reusing its result") == len(files) // 3
    assert {p: p.stat().st_mtime_ns for p in files} == files and not list(out.rglob("earlier"))


def test_sigterm_to_the_local_queue_leaves_every_run_resumable_in_its_own_folder(tmp_path, toy_dir, toy_settings,
                                                                                 write_config, capsys):
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=40)
    runs = plan(load_ablation(path))
    queue = subprocess.Popen([sys.executable, "-m", "deeplab_lightning", "ablate", str(path), "--gpus", "0,1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: all(step_of(run.folder) >= 1 for run in runs), 120, "both runs to train")
        queue.send_signal(signal.SIGTERM)
        output = queue.communicate(timeout=120)[0]
    finally:
        queue.kill()
    assert queue.returncode == 128 + signal.SIGTERM, output
    assert "every run saved a checkpoint" in output
    for run in runs:
        assert read_json(run.folder / "attempt.json")["outcome"] == "interrupted"
        saved = torch.load(run.folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert 0 < saved["global_step"] < 40
    capsys.readouterr()
    assert main([str(path), "--report"]) == 1
    printed = capsys.readouterr().out.replace("\n", " ")
    assert "2 of 2 runs not done" in printed
    assert re.search(r"interrupted: output_stride=16 at step \d+/40: continues from last.ckpt", printed)

    # Run again (one run by hand here): it continues from its own last.ckpt, in its own folder.
    first = runs[0]
    step = torch.load(first.folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert main([str(path), "--run", first.name]) == 0
    attempt = read_json(first.folder / "attempt.json")
    assert attempt["resume_from"] == str(first.folder / "checkpoints" / "last.ckpt") and attempt["outcome"] == "done"
    result = read_json(first.folder / "result.json")
    assert result["steps"] == 40 and result["train_img_s_steps"] == 40 - max(step, 5)  # trained from its step on
    assert not list(first.folder.parent.glob(f"{first.name}-*"))  # no <run>-2 folder


def test_one_run_by_hand_and_a_report_that_lists_failed_and_missing_runs(tmp_path, toy_dir, toy_settings,
                                                                       write_config, capsys):
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=2, grid={},
                          variants={"good": {}, "broken": {"model.model_kwargs.no_such_argument": 1},
                                    "later": {"model.output_stride": 8}})
    assert main([str(path), "--run", "good"]) == 0
    with pytest.raises(TypeError, match="no_such_argument"):
        main([str(path), "--run_index", "0"])  # the file lists broken, good, later
    capsys.readouterr()
    assert main([str(path), "--report"]) == 1
    printed = capsys.readouterr().out
    assert "failed: broken: TypeError" in printed and "not started: later" in printed and "2 of 3 runs not done" in printed
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())}
    assert rows["good"]["status"] == "done" and rows["good"]["mIoU"] >= 0
    assert rows["broken"]["status"] == "failed" and "mIoU" not in rows["broken"]
    assert "status" in (tmp_path / "out" / "report.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="no such run; its runs: broken, good, later"):
        main([str(path), "--run", "missing"])
    (tmp_path / "grid").mkdir()
    grid = write_ablation(tmp_path / "grid", load_ablation(path).base, max_steps=2)
    with pytest.raises(SystemExit):  # a grid key cannot be set for every run
        main([str(grid), "--set", "model.output_stride=8", "--report"])
    assert "--set model.output_stride: a grid key" in capsys.readouterr().err


def test_a_run_of_two_devices_trains_with_ddp_and_rank_zero_evaluates(tmp_path, toy_dir, toy_settings, write_config):
    """--gpus_per_run 2: the run's fit starts a second process (DDP, gloo on the CPU), which runs the same fit
    command; rank 0 alone evaluates and writes the result."""
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=2, grid={},
                          set={"trainer.max_steps": 2, "trainer.devices": 2, "trainer.strategy": "ddp"})
    assert main([str(path), "--gpus", "0,1", "--gpus_per_run", "2"]) == 0
    run = plan(load_ablation(path))[0]
    log = (run.folder / "ablate.log").read_text()
    assert "MEMBER: 2/2" in log and read_json(run.folder / "attempt.json")["devices"] == "0,1"
    assert read_json(run.folder / "result.json")["steps"] == 2


# --- SLURM ---------------------------------------------------------------------------------------------------------

def slurm_up() -> bool:
    return subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "status"], capture_output=True).returncode == 0


slurm = pytest.mark.skipif(os.environ.get("DEEPLAB_TEST_SLURM") != "1" and not slurm_up(),
                           reason="no local SLURM: bash scripts/slurm_local.sh start (as root) runs one")


def submit(path: Path, capsys, *args: str) -> tuple[str, str]:
    assert slurm_up(), "DEEPLAB_TEST_SLURM=1 but the local SLURM is not up: bash scripts/slurm_local.sh start"
    assert main([str(path), "--slurm", *args]) == 0
    printed = capsys.readouterr().out
    array, report = re.search(r"array job (\d+) .* report job (\d+)", printed.replace("\n", " ")).groups()
    return array, report


def job_gone(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return not out.stdout.strip()


def test_slurm_scripts_ask_for_gpus_only_for_gpu_runs_and_for_the_memory_and_cpus_they_need(tmp_path, toy_dir,
                                                                                         toy_settings, write_config):
    base = write_config(tmp_path / "base", toy_dir, toy_settings)
    path = write_ablation(tmp_path, base, max_steps=2, set={"data.num_workers": 3})
    header = {}
    for name, args in {"cpu": [], "gpu": ["--set", "trainer.accelerator=gpu"],
                       "set": ["--gpus_per_run", "2", "--cpus_per_task", "8", "--mem", "100G"]}.items():
        assert main([str(path), "--slurm", "--no_submit", "--output_dir", str(tmp_path / name), *args]) == 0
        text = (tmp_path / name / "slurm" / "array.sbatch").read_text()
        header[name] = dict(re.findall(r"#SBATCH --([a-z-]+)=(\S+)", text))
    assert "gres" not in header["cpu"] and header["gpu"]["gres"] == "gpu:1"  # a CPU config asks for no GPU
    assert header["cpu"]["cpus-per-task"] == header["gpu"]["cpus-per-task"] == "4"  # 3 workers + the run
    assert header["cpu"]["mem"] == header["gpu"]["mem"] == "12G"
    assert header["set"]["gres"] == "gpu:2" and header["set"]["ntasks-per-node"] == "2"
    assert header["set"]["cpus-per-task"] == "8" and header["set"]["mem"] == "100G"


@slurm
def test_slurm_array_runs_each_task_on_its_own_gpu_and_ends_in_one_report(tmp_path, toy_dir, toy_settings,
                                                                         write_config, capsys, monkeypatch):
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=4)
    monkeypatch.chdir(tmp_path)  # relative file and output_dir (with a space), as a user types them
    # the runs train on the CPU: the fake GPUs are asked for explicitly, to check each task gets its own
    array, report = submit(Path(path.name), capsys, "--time", "00:10:00", "--output_dir", "grid out",
                           "--gpus_per_run", "1")
    wait_for(lambda: job_gone(report), 400, f"the report job {report}", poll=1)
    rows = json.loads((tmp_path / "grid out" / "report.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"]
    assert_finished_for_every_launcher(tmp_path, path, "grid out", capsys, monkeypatch)
    attempts = [read_json(run.folder / "attempt.json") for run in plan(load_ablation(path, tmp_path / "grid out"))]
    devices = [a["devices"] for a in attempts]  # the fake GPUs SLURM gave each task (4 on the node)
    assert len(set(devices)) == 2 and set(devices) <= {"0", "1", "2", "3"}
    assert {a["log"] for a in attempts} == {f"{tmp_path / 'grid out' / 'slurm'}/{array}_{i}.log" for i in (0, 1)}
    assert "#SBATCH --requeue" in (tmp_path / "grid out" / "slurm" / "array.sbatch").read_text()


@slurm
def test_slurm_task_signalled_with_usr1_is_requeued_and_resumes_at_its_step(tmp_path, toy_dir, toy_settings,
                                                                           write_config, capsys):
    path = write_ablation(tmp_path, write_config(tmp_path / "base", toy_dir, toy_settings), max_steps=40, grid={})
    run = plan(load_ablation(path))[0]
    array, report = submit(path, capsys)
    log = tmp_path / "out" / "slurm" / f"{array}_0.log"
    wait_for(lambda: step_of(run.folder) >= 2 and "auto-requeueing enabled" in log.read_text(), 300,
             "the task to train")
    subprocess.run(["scancel", "--signal=USR1", f"{array}_0"], check=True)
    wait_for(lambda: job_gone(report), 400, f"the report job {report}", poll=1)
    text = log.read_text()
    assert f"Requeued SLURM job: {array}_0" in text
    attempt = read_json(run.folder / "attempt.json")
    assert attempt["restart"] == "1" and attempt["outcome"] == "done"  # the requeued task finished the run
    resumed = torch.load(attempt["resume_from"], map_location="cpu", weights_only=False)["global_step"]
    assert resumed >= 2 and f"Restored all states from the checkpoint at {attempt['resume_from']}" in text
    assert read_json(run.folder / "result.json")["steps"] == 40
    assert json.loads((tmp_path / "out" / "report.json").read_text())[0]["status"] == "done"
