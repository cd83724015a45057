"""Training across processes, for real: torchrun, gloo on the CPU, the `lmforge run` command."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORDS = ("the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away", "into",
         "green", "fields", "under", "blue", "sky")

MODELS = {
    # grad_accum 2: each of two processes computes whole micro-batches, dropout included
    "gpt": {"model": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
                      "dropout": 0.1},
            "batch": {"batch_size": 4, "grad_accum": 2}},
    # grad_accum 1: each process computes half the rows of every micro-batch
    "lstm": {"model": {"type": "lstm", "n_layer": 1, "n_embd": 16, "hidden_size": 24,
                       "dropout": 0.0},
             "batch": {"batch_size": 4, "grad_accum": 1}},
}

# Injected into the processes torchrun starts (through PYTHONPATH): at step LMFORGE_TEST_STEP of
# the first attempt, the rank LMFORGE_TEST_RANK sends itself LMFORGE_TEST_SIGNAL.
SITECUSTOMIZE = textwrap.dedent("""
    import os
    if (os.environ.get("LMFORGE_TEST_SIGNAL") and "LOCAL_RANK" in os.environ
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        import signal
        from pathlib import Path
        from lmforge.plugins.training import loop

        Path(os.environ["LMFORGE_TEST_PIDS"], os.environ["RANK"]).write_text(str(os.getpid()))
        after_step = loop.Fit._after_step

        def _after_step(self):
            after_step(self)
            if (self.world.rank == int(os.environ["LMFORGE_TEST_RANK"])
                    and self.step == int(os.environ["LMFORGE_TEST_STEP"])):
                os.kill(os.getpid(), getattr(signal, os.environ["LMFORGE_TEST_SIGNAL"]))

        loop.Fit._after_step = _after_step
""")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    rng = random.Random(0)
    lines = (" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(800))
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    for name, parts in MODELS.items():
        config = {
            "name": name, "runs_dir": "runs", "seed": 3,
            "data": {"source": {"type": "text", "paths": ["corpus.txt"], "unit": "file"},
                     "split": {"mode": "contiguous", "val": 0.1, "test": 0.0,
                               "leakage_check": False}},
            "tokenizer": {"type": "char"}, "model": parts["model"],
            "task": {"type": "lm", "block_size": 16},
            "trainer": {"type": "standard", **parts["batch"], "max_steps": 20,
                        "warmup_steps": 2, "eval_every": 10, "eval_batches": 3, "log_every": 1,
                        "checkpoint_every": 5, "keep_last": 10},
            "sample": {"prompts": []}, "callbacks": [],
        }
        (folder / f"{name}.yaml").write_text(json.dumps(config), encoding="utf-8")
    (folder / "inject").mkdir()
    (folder / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder


def lmforge(workdir: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LMFORGE_NO_PROGRESS": "1", **(env or {})})


def train(workdir: Path, model: str, name: str, *args: str, **kwargs) -> None:
    done = lmforge(workdir, "run", f"{model}.yaml", "--set", f"name={name}", *args, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(workdir: Path, name: str) -> dict[int, float]:
    lines = (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}


def assert_same_curve(expected: dict[int, float], found: dict[int, float]) -> None:
    assert sorted(found) == sorted(expected) == list(range(1, 21))
    worst = max(abs(expected[step] - found[step]) for step in expected)
    assert worst < 1e-5, (worst, expected, found)


def final_weights(workdir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(workdir / "runs" / name / "checkpoints" / "step-00000020" /
                     "model.safetensors")


def forget_after(workdir: Path, name: str, step: int) -> None:
    """Delete the checkpoints after `step`, as if the run had died there."""
    for folder in (workdir / "runs" / name / "checkpoints").glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


# the default run keeps one (about 25 s here); the others run in make test-slow
@pytest.mark.parametrize(("model", "strategy"), [
    ("gpt", "ddp"), pytest.param("lstm", "ddp", marks=pytest.mark.slow),
    pytest.param("gpt", "fsdp", marks=pytest.mark.slow)])
def test_two_processes_train_as_one_does(workdir, model, strategy):
    train(workdir, model, f"{model}-one")
    train(workdir, model, f"{model}-two-{strategy}", "--nproc", "2",
          "--set", f"trainer.strategy={strategy}")
    two = workdir / "runs" / f"{model}-two-{strategy}"
    assert_same_curve(losses(workdir, f"{model}-one"), losses(workdir, f"{model}-two-{strategy}"))
    runs = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert runs[0]["event"] == "run" and runs[0]["processes"] == 2
    # the same global batch: the same tokens over the run
    assert runs[-1]["tokens"] == json.loads(
        (workdir / "runs" / f"{model}-one" / "metrics.jsonl").read_text().splitlines()[-1]
    )["tokens"]
    # rank 0 alone evaluated the trained model, with a model of its own
    assert json.loads((two / "eval.json").read_text())["val"]["checkpoint"] == "step-00000020"


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_at_another_process_count(workdir, before, after):
    name = f"gpt-{before}-then-{after}"
    train(workdir, "gpt", "gpt-uninterrupted")
    train(workdir, "gpt", name, "--nproc", str(before))
    forget_after(workdir, name, 10)
    train(workdir, "gpt", name, "--nproc", str(after), "--resume")
    assert_same_curve(losses(workdir, "gpt-uninterrupted"), losses(workdir, name))
    runs = [json.loads(line) for line in (workdir / "runs" / name / "metrics.jsonl")
            .read_text().splitlines() if '"run"' in line]
    assert [(r["step"], r["processes"]) for r in runs] == [(0, before), (10, after)]


@pytest.mark.slow
def test_a_killed_rank_brings_the_job_back_from_the_last_checkpoint(workdir, tmp_path):
    train(workdir, "gpt", "gpt-uninterrupted")
    env = {"PYTHONPATH": str(workdir / "inject"), "LMFORGE_TEST_SIGNAL": "SIGKILL",
           "LMFORGE_TEST_RANK": "1", "LMFORGE_TEST_STEP": "12", "LMFORGE_TEST_PIDS": str(tmp_path)}
    done = lmforge(workdir, "run", "gpt.yaml", "--set", "name=gpt-restarted", "--nproc", "2",
                   "--max-restarts", "1", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "runs" / "gpt-restarted" /
                                               "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "run"] == [0, 10]  # back from step 10
    expected, found = final_weights(workdir, "gpt-uninterrupted"), final_weights(
        workdir, "gpt-restarted")
    assert expected.keys() == found.keys()
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_stopped_rank_ends_every_process_with_an_error_naming_it(workdir, tmp_path):
    timeout = 10
    env = {"PYTHONPATH": str(workdir / "inject"), "LMFORGE_TEST_SIGNAL": "SIGSTOP",
           "LMFORGE_TEST_RANK": "1", "LMFORGE_TEST_STEP": "3", "LMFORGE_TEST_PIDS": str(tmp_path)}
    started = time.monotonic()
    done = lmforge(workdir, "run", "gpt.yaml", "--set", "name=gpt-stalled", "--nproc", "2",
                   "--set", f"trainer.collective_timeout={timeout}", env=env,
                   timeout=timeout + 120)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert "rank 1 (pid" in done.stderr and "stopped answering" in done.stderr, done.stderr[-3000:]
    assert elapsed < timeout + 30 + 15  # the process start-up (about 15 s here) comes on top
    pids = [int(path.read_text()) for path in tmp_path.iterdir()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="NCCL runs one process per GPU: two processes need two GPUs")
def test_two_processes_on_gpus_with_nccl_train_as_one_does(workdir):
    on_gpu = ("--set", "trainer.device=cuda", "--set", "trainer.backend=nccl")
    train(workdir, "gpt", "gpt-one-gpu", *on_gpu)
    train(workdir, "gpt", "gpt-two-gpus", "--nproc", "2", *on_gpu)
    expected, found = losses(workdir, "gpt-one-gpu"), losses(workdir, "gpt-two-gpus")
    assert sorted(found) == sorted(expected)
    assert max(abs(expected[step] - found[step]) for step in expected) < 1e-4
