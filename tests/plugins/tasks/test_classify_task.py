"""The classify task: labels, batches, padding, class weights, evaluation and prediction."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from lmforge.config import resolve
from lmforge.errors import LmforgeError
from lmforge.host.manager import load_plugins
from lmforge.interfaces.model import SequenceClassifier
from lmforge.interfaces.task import TaskData
from lmforge.plugins.tasks.classify_task import Classification
from tests.core.fake_dists import make_distribution

POSITIVE = ["great", "lovely", "warm", "funny", "superb"]
NEGATIVE = ["dull", "awful", "bland", "boring", "weak"]
FILLER = ["the", "film", "was", "a", "story", "plot", "cast", "really", "quite", "and"]


class FakePrepared:
    """Stands in for lmforge.data.prepare.PreparedData: records per split."""

    def __init__(self, splits: dict[str, list[dict]]):
        self.splits = splits

    def records(self, split: str):
        yield from self.splits.get(split, [])


def review(rng: np.random.Generator, label: str, i: int) -> dict:
    words = list(rng.choice(FILLER, size=rng.integers(1, 8)))
    marker = POSITIVE if label == "pos" else NEGATIVE
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(marker)))
    return {"text": " ".join(words), "label": label, "source": f"reviews.tsv:{i + 2}"}


def reviews(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [review(rng, "pos" if i % 3 else "neg", i) for i in range(n)]


def make_task(registry, tmp_path: Path, splits: dict[str, list[dict]], **settings
              ) -> Classification:
    tokenizer = registry.get("tokenizer", "word").create({})
    tokenizer.train(r["text"] for r in splits["train"])
    settings = Classification.Settings(**settings)
    task = Classification(settings)
    metrics = [registry.get("metric", name) for name in settings.metrics]
    task.setup(TaskData(FakePrepared(splits), tokenizer, "hash", tmp_path, metrics), None)
    return task


class BagOfEmbeddings(SequenceClassifier):
    """The smallest classifier that honours the padding mask: a mean of word vectors."""

    def __init__(self, vocab_size: int, num_labels: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16)
        self.head = nn.Linear(16, num_labels)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        keep = (~pad_mask).unsqueeze(-1).float()
        pooled = (self.embed(idx) * keep).sum(1) / keep.sum(1)
        return self.head(pooled)

    def flops_per_token(self) -> int:
        return 2 * 16 * self.head.out_features


@pytest.fixture
def splits():
    return {"train": reviews(300, 0), "val": reviews(60, 1), "test": reviews(60, 2)}


def test_labels_sorted_from_train_and_in_the_model_spec(registry, tmp_path, splits):
    task = make_task(registry, tmp_path, splits)
    assert task.labels == ["neg", "pos"]
    spec = task.model_spec()
    assert (spec.task, spec.num_labels, spec.labels) == ("classify", 2, ("neg", "pos"))
    assert list(task.train_counts) == [100, 200]
    ordered = make_task(registry, tmp_path, splits, labels=["pos", "neg"])
    assert ordered.labels == ["pos", "neg"] and ordered.splits["train"].labels[0] == 1


def test_numeric_labels_are_compared_as_strings(registry, tmp_path):
    rows = [{"text": f"word{i % 2} x", "label": i % 2} for i in range(20)]
    task = make_task(registry, tmp_path, {"train": rows, "val": rows[:4], "test": []})
    assert task.labels == ["0", "1"]


def test_unknown_label_in_val_names_it_and_where(registry, tmp_path, splits):
    splits["val"][5]["label"] = "mixed"
    with pytest.raises(LmforgeError, match=r"labels the model does not know: 'mixed' \(1x\), "
                                           r"first at reviews.tsv:7"):
        make_task(registry, tmp_path, splits)


def test_missing_label_names_the_record(registry, tmp_path, splits):
    del splits["train"][3]["label"]
    with pytest.raises(LmforgeError, match=r"reviews.tsv:5: a record without a label"):
        make_task(registry, tmp_path, splits)


def test_a_single_label_is_refused(registry, tmp_path):
    rows = [{"text": "fine film", "label": "pos"}] * 5
    with pytest.raises(LmforgeError, match="single label"):
        make_task(registry, tmp_path, {"train": rows, "val": [], "test": []})


def test_batches_pad_right_and_mask_padding(registry, tmp_path, splits):
    task = make_task(registry, tmp_path, splits)
    batch = task.train_batch(0, 8, seed=1)
    lengths = (~batch["pad_mask"]).sum(1)
    assert batch["input"].shape == (8, int(lengths.max()))
    for row, length in zip(batch["input"], lengths, strict=True):
        assert (row[length:] == task.tokenizer.pad_id).all()
        assert (row[:length] != task.tokenizer.pad_id).all()
    assert task.tokens_in(batch) == int(lengths.sum())


def test_training_order_is_a_function_of_seed_and_index_and_covers_each_epoch(
        registry, tmp_path, splits):
    task = make_task(registry, tmp_path, splits)
    first = task.train_batch(3, 16, seed=7)
    again = task.train_batch(3, 16, seed=7)
    assert torch.equal(first["input"], again["input"])
    assert not torch.equal(first["input"], task.train_batch(3, 16, seed=8)["input"])
    # 300 texts in batches of 20: the first 15 batches hold every text exactly once
    seen = torch.cat([task.train_batch(i, 20, seed=7)["label"] for i in range(15)])
    assert int(seen.sum()) == 200 and len(seen) == 300


def test_truncation_to_max_length(registry, tmp_path, splits):
    task = make_task(registry, tmp_path, splits, max_length=3)
    assert max(len(ids) for ids in task.splits["train"].ids) == 3
    with pytest.raises(LmforgeError, match="longer than the model's context length 2"):
        task.prepare_inference(TaskData(None, task.tokenizer, "hash", tmp_path, []), task.labels,
                               2)


def test_balanced_and_explicit_class_weights(registry, tmp_path, splits):
    balanced = make_task(registry, tmp_path, splits, class_weights="balanced")
    assert balanced.class_weight.tolist() == pytest.approx([300 / (2 * 100), 300 / (2 * 200)])
    explicit = make_task(registry, tmp_path, splits, class_weights={"neg": 2.0, "pos": 1.0})
    assert explicit.class_weight.tolist() == [2.0, 1.0]
    with pytest.raises(LmforgeError, match=r"missing \['pos'\]"):
        make_task(registry, tmp_path, splits, class_weights={"neg": 2.0})
    with pytest.raises(ValueError, match="positive, finite"):
        Classification.Settings(class_weights={"neg": 0.0, "pos": 1.0})


def test_learns_and_predict_agrees_with_evaluate(registry, tmp_path, splits):
    task = make_task(registry, tmp_path, splits)
    torch.manual_seed(0)
    model = BagOfEmbeddings(task.tokenizer.vocab_size, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for index in range(80):
        loss, count = task.loss(model, task.train_batch(index, 16, seed=0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    figures = task.evaluate(model, "test", batch_size=7)
    assert list(figures) == ["loss", "accuracy", "macro_precision", "macro_recall", "macro_f1",
                             "micro_f1", "examples", "per_class", "confusion",
                             "majority_baseline"]
    assert figures["accuracy"] >= 0.95 and figures["examples"] == 60
    assert figures["majority_baseline"] == {"label": "pos", "accuracy": pytest.approx(40 / 60),
                                            "macro_f1": pytest.approx(0.4)}
    predictions = task.predict(model, [r["text"] for r in splits["test"]], batch_size=5)
    pairs = zip(predictions, splits["test"], strict=True)
    correct = sum(p["label"] == r["label"] for p, r in pairs)
    assert correct / 60 == pytest.approx(figures["accuracy"])
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0) for p in predictions)
    held_out = tmp_path / "reviews.tsv"
    on_records = task.evaluate_file(model, held_out, 11, {held_out: splits["test"]}.__getitem__)
    assert on_records["accuracy"] == figures["accuracy"]
    assert on_records["confusion"] == figures["confusion"]


def test_empty_split_cannot_be_evaluated(registry, tmp_path, splits):
    splits["val"] = []
    task = make_task(registry, tmp_path, splits)
    with pytest.raises(LmforgeError, match="the val split is empty"):
        task.evaluate(BagOfEmbeddings(task.tokenizer.vocab_size, 2), "val", 8)


def test_word_dropout_replaces_real_tokens_only_and_repeats(registry, tmp_path, splits):
    plain = make_task(registry, tmp_path, splits)
    dropping = make_task(registry, tmp_path, splits, word_dropout=0.3)
    unk = dropping.tokenizer.special_tokens["unk"]
    clean, noisy = plain.train_batch(4, 64, seed=2), dropping.train_batch(4, 64, seed=2)
    assert torch.equal(clean["pad_mask"], noisy["pad_mask"])
    changed = clean["input"] != noisy["input"]
    assert not (changed & clean["pad_mask"]).any()
    assert (noisy["input"][changed] == unk).all()
    real = int((~clean["pad_mask"]).sum())
    assert 0.2 < int(changed.sum()) / real < 0.4
    assert torch.equal(noisy["input"], dropping.train_batch(4, 64, seed=2)["input"])
    # evaluation sees every word
    assert torch.equal(next(dropping.eval_batches("val", 64))["input"],
                       next(plain.eval_batches("val", 64))["input"])


WRONG_LABELS = '''
    """A third-party metric for classifiers."""
    from lmforge import Metric, hookimpl


    class WrongLabels(Metric):
        """How many texts got a wrong label."""

        tasks = ("classify",)

        def __init__(self, settings):
            super().__init__(settings)
            self.wrong = 0

        def update(self, scored):
            self.wrong += int((scored["target"] != scored["predicted"]).sum())

        def compute(self):
            return {"wrong_labels": self.wrong}


    @hookimpl
    def register_metrics(register):
        register("wrong_labels", WrongLabels)
'''


def test_a_plugin_metric_named_in_the_config_is_reported(tmp_path, monkeypatch, splits):
    make_distribution(tmp_path / "dists", "lmforge-wrong-labels", "0.1",
                      {"wrong-labels": "wrong_labels"}, {"wrong_labels": WRONG_LABELS})
    monkeypatch.syspath_prepend(str(tmp_path / "dists"))
    registry = load_plugins({"LMFORGE_LOAD_PLUGINS": "lmforge-wrong-labels"}).registry
    config = resolve({"task": {"type": "classify", "metrics": ["accuracy", "wrong_labels"]}},
                     registry)
    assert [e.provider.distribution for e in config.metrics] == ["lmforge", "lmforge-wrong-labels"]
    task = make_task(registry, tmp_path, splits, metrics=["accuracy", "wrong_labels"])
    figures = task.evaluate(BagOfEmbeddings(task.tokenizer.vocab_size, 2), "test", 8)
    assert list(figures) == ["loss", "accuracy", "wrong_labels", "majority_baseline"]
    assert figures["wrong_labels"] == round((1 - figures["accuracy"]) * 60)
    output = io.StringIO()
    task.write_report(tmp_path, {"test": figures}, Console(file=output))
    assert output.getvalue() == "" and not (tmp_path / "plots").exists()
