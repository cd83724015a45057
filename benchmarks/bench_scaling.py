"""Training throughput of `austen-char.yaml` in one process and in two (torchrun, DDP), run
side by side in interleaved rounds, with the scaling efficiency and DDP's overhead.

    .venv/bin/python benchmarks/bench_scaling.py [--steps 300] [--rounds 3]

Variants: one process with one thread (the base of the efficiency), one process with two threads
(the same cores as two processes: DDP's overhead is measured against it), two processes with one
thread each, and two processes with FSDP. Each reads the tokens/s of its run summary (training
seconds only: start-up, evaluation and checkpoints are excluded). Prints medians and writes them
as JSON to stdout's last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "austen-char.yaml"

VARIANTS = {  # name: (processes, threads each, strategy)
    "1 process, 1 thread": (1, 1, "ddp"),
    "1 process, 2 threads": (1, 2, "ddp"),
    "2 processes (DDP), 1 thread each": (2, 1, "ddp"),
    "2 processes (FSDP), 1 thread each": (2, 1, "fsdp"),
}


def tokens_per_s(folder: Path, name: str, processes: int, threads: int, strategy: str,
                 steps: int) -> float:
    command = [sys.executable, "-m", "lmforge", "run", str(CONFIG), "--set", f"name={name}",
               "--set", f"runs_dir={folder}", "--set", f"trainer.max_steps={steps}",
               "--set", "trainer.max_time=null", "--set", "trainer.warmup_steps=10",
               "--set", f"trainer.eval_every={steps}", "--set", "trainer.eval_batches=1",
               "--set", "trainer.checkpoint_every=null", "--set", f"trainer.strategy={strategy}",
               "--set", "sample.prompts=[]"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    else:
        command += ["--set", f"trainer.threads={threads}"]
    env = {**os.environ, "LMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    lines = (folder / name / "metrics.jsonl").read_text().splitlines()
    train = [json.loads(line) for line in lines if '"event": "train"' in line]
    tokens, seconds = train[-1]["tokens"], train[-1]["elapsed"]
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            for i, (name, variant) in enumerate(VARIANTS.items()):
                run_name = f"r{round_number}-v{i}"
                figures[name].append(tokens_per_s(Path(tmp), run_name, *variant, args.steps))
                print(f"round {round_number + 1}: {name}: {figures[name][-1]:,.0f} tokens/s",
                      flush=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    base, same_cores = medians["1 process, 1 thread"], medians["1 process, 2 threads"]
    two = medians["2 processes (DDP), 1 thread each"]
    print()
    for name, value in medians.items():
        print(f"{name:36s} {value:10,.0f} tokens/s  ({value / base:.2f}x one thread)")
    print(f"scaling efficiency at 2 processes: {two / (2 * base):.1%}")
    print(f"2 processes (DDP) against 1 process with as many threads: {two / same_cores:.2f}x")
    print(json.dumps({"steps": args.steps, "rounds": args.rounds, "medians": medians}))


if __name__ == "__main__":
    main()
