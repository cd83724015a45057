"""A classifier as a user runs it: `lmforge run`, `eval --data`, `predict`, and bad labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from .test_cli import run

POSITIVE = ["great", "lovely", "warm", "funny", "superb", "moving"]
NEGATIVE = ["dull", "awful", "bland", "boring", "weak", "tedious"]
FILLER = ["the", "film", "was", "a", "story", "plot", "cast", "really", "quite", "and", "it"]


def sentence(rng: np.random.Generator, positive: bool) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(2, 9)))
    marker = rng.choice(POSITIVE if positive else NEGATIVE)
    words.insert(int(rng.integers(0, len(words) + 1)), str(marker))
    return " ".join(words).capitalize() + "."


def write_reviews(path: Path, n: int, seed: int, delimiter: str = "\t") -> None:
    """Reviews with a numeric score column, cut at 0 into negative and positive."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "score", "text"])
        for i in range(n):
            positive = bool(rng.random() < 0.5)
            score = rng.uniform(0.2, 3.0) * (1 if positive else -1)
            writer.writerow([i, f"{score:.3f}", sentence(rng, positive)])


def write_config(tmp_path: Path, **source) -> Path:
    write_reviews(tmp_path / "reviews.tsv", 400, seed=0)
    config = {
        "name": "tiny-sentiment", "runs_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"source": {"type": "tsv", "paths": [str(tmp_path / "reviews.tsv")],
                            "text_column": "text", "label_column": "score",
                            "label_thresholds": [0], "label_names": ["negative", "positive"],
                            **source},
                 "preprocess": [{"type": "normalize"}],
                 "split": {"val": 0.15, "test": 0.15}},
        "tokenizer": {"type": "word", "lowercase": True, "min_frequency": 1},
        "model": {"type": "textcnn", "n_embd": 16, "kernel_sizes": [2, 3], "num_filters": 8,
                  "dropout": 0.1},
        "task": {"type": "classify", "max_length": 32},
        "trainer": {"type": "standard", "batch_size": 16, "lr": 1e-2, "warmup_steps": 5,
                    "max_steps": 80, "eval_every": 40, "eval_batches": 4,
                    "checkpoint_every": None, "restore_best": True},
    }
    path = tmp_path / "sentiment.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("classify")
    result = run("run", str(write_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path, result


def test_run_trains_evaluates_and_reports(trained):
    tmp_path, result = trained
    run_dir = tmp_path / "runs" / "tiny-sentiment"
    assert "majority baseline" in result.stdout and "macro average" in result.stdout
    figures = json.loads((run_dir / "eval.json").read_text())["test"]
    assert figures["accuracy"] >= 0.9 and figures["macro_f1"] >= 0.9
    assert figures["majority_baseline"]["accuracy"] < 0.7
    assert figures["confusion"]["labels"] == ["negative", "positive"]
    assert (run_dir / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "samples.txt").exists()  # classifiers do not generate


def test_eval_on_a_csv_file_in_another_format(trained):
    tmp_path, _ = trained
    held_out = tmp_path / "more.csv"
    write_reviews(held_out, 60, seed=9, delimiter=",")
    result = run("eval", "runs/tiny-sentiment", "--data", str(held_out), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)[f"file:{held_out}"]
    assert figures["examples"] == 60 and figures["accuracy"] >= 0.9


def test_predict_matches_eval(trained):
    tmp_path, _ = trained
    held_out = tmp_path / "check.tsv"
    write_reviews(held_out, 50, seed=5)
    scored = run("eval", "runs/tiny-sentiment", "--data", str(held_out), "--json", cwd=tmp_path)
    accuracy = json.loads(scored.stdout)[f"file:{held_out}"]["accuracy"]
    predicted = run("predict", "runs/tiny-sentiment", "--file", str(held_out), "--json",
                    cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(rows) == 50
    assert sum(r["label"] == r["true_label"] for r in rows) / 50 == pytest.approx(accuracy)


def test_predict_text_and_stdin(trained):
    tmp_path, _ = trained
    one = run("predict", "runs/tiny-sentiment", "--text", "A really superb and moving film.",
              "--text", "The plot was dull and tedious.", "--json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    labels = [json.loads(line)["label"] for line in one.stdout.splitlines()]
    assert labels == ["positive", "negative"]
    piped = run("predict", "runs/tiny-sentiment", cwd=tmp_path,
                input="What a lovely, warm story.\n\nAwful.\n")
    assert piped.returncode == 0, piped.stderr
    assert "positive" in piped.stdout and "negative" in piped.stdout


def test_generate_on_a_classifier_says_to_predict(trained):
    tmp_path, _ = trained
    result = run("generate", "runs/tiny-sentiment", "--prompt", "x", cwd=tmp_path)
    assert result.returncode == 2 and "use `lmforge predict`" in result.stderr


def test_missing_label_column_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, label_column="stars")
    result = run("run", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "stars" in result.stderr and "reviews.tsv" in result.stderr


def test_bad_label_value_names_file_and_line(tmp_path):
    config = write_config(tmp_path)
    lines = (tmp_path / "reviews.tsv").read_text().splitlines()
    lines[5] = "4\tgood\tA fine film."
    (tmp_path / "reviews.tsv").write_text("\n".join(lines) + "\n")
    result = run("run", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "reviews.tsv:6" in result.stderr and "good" in result.stderr
