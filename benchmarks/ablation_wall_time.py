"""Wall time of one ablation grid run sequentially and as a local queue (``--gpus``), in one session.

    python benchmarks/ablation_wall_time.py [--steps 60] [--gpus 0,1] [--rounds 1]

Each round runs the shipped 4-run toy grid (output stride x image pooling, with its MS + flip and CRF
evaluations) both ways, alternating which goes first, each into a fresh output folder; prints a table of wall
times and their ratio. On a CPU the queue's runs share the cores (one thread each per group), so the ratio shows
what running runs side by side gains or costs there; on a GPU machine each run has its own GPU.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "experiments" / "ablations" / "toy_v3plus_os_pooling.yaml"


def timed(args: list[str], out: Path) -> float:
    command = [sys.executable, "-m", "deeplab_lightning", "ablate", str(ABLATION), "--output_dir", str(out), *args]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run")
    parser.add_argument("--gpus", default="0,1", help="the --gpus of the queue")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    steps = ["--set", f"trainer.max_steps={args.steps}", "--set", f"trainer.val_check_interval={args.steps}"]
    ways = {"sequential": steps, f"--gpus {args.gpus}": [*steps, "--gpus", args.gpus]}
    times: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for way in order:
                times[way].append(timed(ways[way], Path(tmp) / f"{r}-{way.split()[0].strip('-')}"))
                print(f"round {r + 1}: {way}: {times[way][-1]:.0f} s", file=sys.stderr)
    sequential = statistics.median(times["sequential"])
    print(f"4-run toy grid ({ABLATION.name}, {args.steps} steps each), "
          f"{datetime.date.today()}, {args.rounds} round(s), median:\n")
    print("| launcher | wall time | vs sequential |\n|---|---:|---:|")
    for way, values in times.items():
        median = statistics.median(values)
        print(f"| {way} | {median:.0f} s | {median / sequential:.2f}x |")


if __name__ == "__main__":
    main()
