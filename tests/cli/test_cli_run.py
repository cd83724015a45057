"""`lmforge run`, `eval` and `generate` as a user runs them: the installed console script."""

from __future__ import annotations

import json

import yaml

from tests.core.test_pipeline import write_config

from .test_cli import run


def test_run_then_eval_and_repeatable_generation(tmp_path):
    config = write_config(tmp_path, "gpt", max_steps=6)
    trained = run("run", str(config), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "eval val:" in trained.stdout and "bits_per_byte" in trained.stdout
    run_dir = tmp_path / "runs" / "tiny-gpt"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_steps"] == 6

    scored = run("eval", str(run_dir), "--split", "test", "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    figures = json.loads(scored.stdout)["test"]
    assert figures["checkpoint"] == "step-00000006" and figures["bits_per_byte"] > 0
    assert "test" in json.loads((run_dir / "eval.json").read_text())

    on_file = run("eval", str(run_dir), "--data", str(tmp_path / "corpus.txt"), "--json",
                  cwd=tmp_path)
    assert on_file.returncode == 0, on_file.stderr
    file_figures = json.loads(on_file.stdout)[f"file:{tmp_path / 'corpus.txt'}"]
    corpus_bytes = len((tmp_path / "corpus.txt").read_bytes().rstrip(b"\n"))
    assert file_figures["bytes"] == corpus_bytes and file_figures["tokens"] == corpus_bytes
    (tmp_path / "corpus.txt").unlink()  # generation needs the run folder, not the data
    command = ("generate", str(run_dir), "--prompt", "line 1", "--max-new-tokens", "20",
               "--seed", "7", "--top-k", "5")
    first, second = run(*command, cwd=tmp_path), run(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("line 1")


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    result = run("eval", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "not a run folder (no config.yaml)" in result.stderr
