"""A fit never writes into another run's folder; evaluation never rewrites a run's files."""
import hashlib
from pathlib import Path

import pytest
from jsonargparse import Namespace

from deeplab_lightning.commands.cli import main
from deeplab_lightning.runs.folder import claim_run_folder, continues_run, release_run_folder, relocate


def _files(folder: Path) -> dict[str, str]:
    """Each file under ``folder`` with the SHA-256 of its bytes (a digest: a failure report stays short)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_fit_of_one_config_gets_a_new_folder_and_evaluation_writes_nothing(
        tmp_path, toy_dir, toy_settings, write_config):
    config = write_config(tmp_path / "run", toy_dir, toy_settings)
    first = main(["fit", "--config", str(config)])
    assert first.run_dir == tmp_path / "run"
    before = _files(tmp_path / "run")
    assert {"config.yaml", "run_info.json", "ckpt/best.ckpt", "ckpt/last.ckpt"} <= set(before)

    with pytest.warns(UserWarning, match=rf"holds another run .*this run writes to {tmp_path / 'run-2'}"):
        second = main(["fit", "--config", str(config), "--trainer.max_steps", "1"])
    assert second.run_dir == tmp_path / "run-2" and second.trainer.global_step == 1
    assert (tmp_path / "run-2" / "ckpt" / "last.ckpt").is_file()  # every output path followed the folder
    main(["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "run" / "ckpt" / "best.ckpt")])
    after = _files(tmp_path / "run")
    assert {name: after.get(name) for name in before} == before  # no config, run info or checkpoint rewritten
    added = set(after) - set(before)  # only the evaluation's own per-image matrices and worst-image gallery
    assert added == {"evaluations/val_step2.npz", "evaluations/val_step2_worst.png"}, added

    with pytest.raises(ValueError, match=r"data.batch_size=2 but this fit has 4; resume with "
                                         r"--data.init_args.batch_size 2"):
        main(["fit", "--config", str(config), "--data.init_args.batch_size", "4", "--trainer.max_steps", "4",
              "--ckpt_path", str(tmp_path / "run" / "ckpt" / "last.ckpt")])


def test_relocate_moves_only_output_paths_under_the_run_folder(tmp_path):
    config = Namespace(trainer=Namespace(
        default_root_dir="runs/a", logger=Namespace(init_args=Namespace(save_dir="runs/a")),
        callbacks=[Namespace(init_args=Namespace(dirpath="runs/a/checkpoints")),
                   Namespace(init_args=Namespace(dirpath="elsewhere"))]),
        data=Namespace(init_args=Namespace(data_dir="runs/a/data")))  # an input, not an output: kept
    relocate(config, Path("runs/a"), Path("runs/a-2"))
    assert config.trainer.default_root_dir == "runs/a-2"
    assert config.trainer.logger.init_args.save_dir == "runs/a-2"
    assert config.trainer.callbacks[0].init_args.dirpath == "runs/a-2/checkpoints"
    assert config.trainer.callbacks[1].init_args.dirpath == "elsewhere"
    assert config.data.init_args.data_dir == "runs/a/data"


def test_a_requeued_slurm_job_continues_in_its_run_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").touch()  # an earlier run: the job's run went to a-2
    job = tmp_path / "a-2"
    job.mkdir()
    (job / "run_info.json").write_text('{"slurm_job_id": "4242"}')
    (job / "hpc_ckpt_1.ckpt").touch()  # what Lightning's SLURM auto-requeue saved before requeueing
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert claim_run_folder(tmp_path / "a", None) == job
    release_run_folder(job)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job of the same config: a new folder
    assert claim_run_folder(tmp_path / "a", None) == tmp_path / "a-3"
    assert continues_run(tmp_path / "x", str(tmp_path / "x" / "ckpt" / "last.ckpt"))
    assert not continues_run(tmp_path / "x", str(tmp_path / "y" / "last.ckpt"))


def _race_for(lock: Path, barrier, tried, wins) -> None:
    """One of the racing processes: take ``lock`` at the barrier's release, hold it until every racer tried."""
    import os

    from deeplab_lightning.runs.folder import RunFolderBusy, release_lock, take_lock

    barrier.wait()
    try:
        take_lock(lock, "the race")
        won = True
    except RunFolderBusy:
        won = False
    with wins.get_lock():
        wins.value += won
    tried.wait()  # a winner holds the lock until the others have tried
    if won:
        release_lock(lock)
    os._exit(0)


def test_of_four_processes_racing_for_a_dead_owners_lock_exactly_one_wins(tmp_path):
    """A stale lock (its owner's pid is gone) is taken over atomically: 20 races of 4 real processes, each with
    exactly one winner (replacing the record in place let 2 owners in about 3 races of 20)."""
    import json
    import multiprocessing
    import platform
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    context = multiprocessing.get_context("fork")
    winners = []
    for trial in range(20):
        lock = tmp_path / f"ablation-{trial}.lock"
        lock.write_text(json.dumps({"pid": dead.pid, "host": platform.node(), "slurm_job_id": None}))
        barrier, tried, wins = context.Barrier(4), context.Barrier(4), context.Value("i", 0)
        racers = [context.Process(target=_race_for, args=(lock, barrier, tried, wins)) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert all(r.exitcode == 0 for r in racers)
        winners.append(wins.value)
        assert not lock.exists() and not list(tmp_path.glob("*.takeover-*"))  # released, nothing left behind
    assert winners == [1] * 20
