"""``ablate FILE --gpus 0,1,2,3 [--gpus_per_run K]``: the grid as a queue of child processes on one machine,
each pinned to its own group of K GPUs (``CUDA_VISIBLE_DEVICES``; DDP inside the group when K > 1, on its own
port), as many at once as there are groups, with one live display of every run.

Each child is ``deeplab-lightning ablate FILE --run NAME`` writing its output to ``<run>/ablate.log``. Ctrl-C
or SIGTERM stops every child the way a pre-empted fit stops (``last.ckpt`` saved) and the command exits with
130 or 143; rerunning it continues each run from its checkpoint. Children run in their own sessions (a Ctrl-C
reaches the queue, which stops them) and receive SIGTERM if the queue itself dies.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .spec import STATUS_FILE
from .state import ATTEMPT, ENV_LOG, RESULT, RunState, end_attempt, read_json

STOP_GRACE_S = 300  # how long stopped children may take to save their checkpoints before they are killed
POLL_S = 0.5
PLAIN_SUMMARY_S = 60  # without a terminal: a line per running run this often


def gpu_groups(gpus: str, per_run: int) -> list[str]:
    """``"0,1,2,3"``, 2 -> ``["0,1", "2,3"]``; errors name the options."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {gpus!r}: expected distinct GPU indices separated by commas, e.g. --gpus 0,1,2,3")
    if per_run < 1 or len(ids) % per_run:
        raise ValueError(f"--gpus_per_run {per_run} must divide the {len(ids)} GPUs of --gpus {gpus} into equal "
                         f"groups")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids), per_run)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Runs in the child before exec (only a C call: the queue has threads): SIGTERM when the queue dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _clock(seconds: float | None) -> str:
    return "-" if seconds is None else str(datetime.timedelta(seconds=int(seconds)))


@dataclass
class Child:
    """One run's child process."""

    name: str
    process: subprocess.Popen
    devices: str
    started: float


class LocalQueue:
    """Runs ``states`` (the runs to train) as child processes ``command(name)``, one per GPU group."""

    def __init__(self, states: list[RunState], groups: list[str], command: list[str], console: Console) -> None:
        self.states = {s.name: s for s in states}
        self.pending = [s.name for s in states if s.status not in ("done", "running")]
        for name in self.pending:
            self.states[name].status = "queued"
        self.groups, self.command, self.console = groups, command, console
        self.children: dict[str, Child] = {}
        self.outcome: dict[str, str] = {}  # name -> "done" / "failed" / "interrupted" for runs of this queue
        self.stopping: int | None = None
        self.deadline = float("inf")
        self._last_summary = time.monotonic()

    def _start(self, name: str, devices: str) -> None:
        state = self.states[name]
        state.folder.mkdir(parents=True, exist_ok=True)
        log = state.folder / "ablate.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPLAB_RUN_DIR", "DEEPLAB_OWNED"))}
        env.update(CUDA_VISIBLE_DEVICES=devices, MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1",
                   **{ENV_LOG: str(log)})
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(self.groups))))
        with open(log, "a") as out:
            out.write(f"\n=== {datetime.datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(self.command)} --run {name} "
                      f"(CUDA_VISIBLE_DEVICES={devices}) ===\n")
            out.flush()
            process = subprocess.Popen([*self.command, "--run", name], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        self.children[name] = Child(name, process, devices, time.monotonic())
        state.status, state.log, state.detail = "running", str(log), f"GPUs {devices}"
        self._say(f"started {name} on CUDA_VISIBLE_DEVICES={devices} (log: {log})")

    def _finished(self, child: Child, code: int) -> None:
        del self.children[child.name]
        state = self.states[child.name]
        result = read_json(state.folder / RESULT)
        if code == 0 and result is not None:
            state.status, state.row = "done", result
            self.outcome[child.name] = "done"
            self._say(f"done {child.name}: mIoU {100 * result['mIoU']:.2f} ({_clock(time.monotonic() - child.started)})")
            return
        stopped = self.stopping is not None or code in (-signal.SIGTERM, 128 + signal.SIGTERM)
        state.status = self.outcome[child.name] = "interrupted" if stopped else "failed"
        attempt = read_json(state.folder / ATTEMPT) or {}
        if not stopped and attempt.get("outcome") != "failed":  # killed before it could record why
            attempt = {**attempt, "outcome": "failed", "error": f"exit code {code}"}
            end_attempt(state.folder, attempt, "failed", attempt["error"])
        state.detail = "resumable: rerun the ablation" if stopped else str(attempt.get("error"))
        self._say(f"{state.status} {child.name}: {state.detail} (log: {state.log})")

    def _say(self, message: str) -> None:
        self.console.print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", highlight=False, soft_wrap=True)

    def _stop(self, signum: int, frame: object) -> None:
        if self.stopping is None:
            self.stopping = signum
            self.deadline = time.monotonic() + STOP_GRACE_S
            for child in self.children.values():
                try:
                    os.killpg(child.process.pid, signal.SIGTERM)  # the run and the DDP processes it started
                except ProcessLookupError:
                    pass

    def table(self) -> Table:
        table = Table(title="Ablation runs", title_justify="left")
        for header in ("run", "state", "step", "ETA", "mIoU", "GPUs", "log"):
            table.add_column(header, no_wrap=header == "run", justify="right" if header in ("step", "mIoU") else "left")
        for name, state in self.states.items():
            progress = (read_json(state.folder / STATUS_FILE) or {}) if name in self.children else {}
            step = progress.get("step", state.step)
            max_steps = progress.get("max_steps", state.max_steps)
            miou = f"{100 * state.row['mIoU']:.2f}" if state.row and state.row.get("mIoU") is not None else ""
            colour = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow"}.get(state.status)
            table.add_row(name, Text(state.status, style=colour or ""),
                          f"{step}/{max_steps}" if step is not None and max_steps else "",
                          _clock(progress.get("eta_s")) if name in self.children else "", miou,
                          self.children[name].devices if name in self.children else "",
                          (state.log or "") if state.status in ("running", "failed") else "")
        return table

    def _summary(self) -> None:
        if self.console.is_terminal or time.monotonic() - self._last_summary < PLAIN_SUMMARY_S:
            return
        self._last_summary = time.monotonic()
        for name in self.children:
            progress = read_json(self.states[name].folder / STATUS_FILE) or {}
            self._say(f"running {name}: step {progress.get('step', 0)}/{progress.get('max_steps', '?')}, "
                      f"ETA {_clock(progress.get('eta_s'))}")

    def _tick(self) -> None:
        if self.stopping is None:
            free = [g for g in self.groups if g not in {c.devices for c in self.children.values()}]
            while free and self.pending:
                self._start(self.pending.pop(0), free.pop(0))
        elif time.monotonic() > self.deadline:
            for child in self.children.values():
                child.process.kill()
        for child in list(self.children.values()):
            code = child.process.poll()
            if code is not None:
                self._finished(child, code)
        self._summary()

    def run(self) -> int:
        """Run the queue to its end (or until stopped); returns the exit status: 0, 1 (a run failed), or 128 +
        the signal that stopped it."""
        handlers = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            live = Live(get_renderable=lambda: Group(self.table()), console=self.console, refresh_per_second=2,
                        transient=False) if self.console.is_terminal else None
            if live is not None:
                live.start()
            try:
                while self.children or (self.pending and self.stopping is None):
                    self._tick()
                    time.sleep(POLL_S)
            finally:
                if live is not None:
                    live.stop()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        if self.stopping is not None:
            self._say(f"stopped by signal {self.stopping}: every run saved a checkpoint; rerun the same command "
                      f"to continue")
            return 128 + self.stopping
        return 1 if "failed" in self.outcome.values() else 0


