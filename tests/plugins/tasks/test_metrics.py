"""Classification metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.plugins.tasks.metrics import ConfusionMatrix, majority_baseline, plot_confusion


def test_three_classes_with_one_never_predicted():
    # true:      a a a b b c c c
    # predicted: a a b b b a a a   (c is never predicted)
    matrix = ConfusionMatrix(["a", "b", "c"])
    matrix.update(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))  # two batches: streaming
    matrix.update(np.array([1, 2, 2, 2]), np.array([1, 0, 0, 0]))
    figures = matrix.summary()
    assert figures["confusion"]["counts"] == [[2, 1, 0], [0, 2, 0], [3, 0, 0]]
    assert figures["accuracy"] == pytest.approx(4 / 8)
    a, b, c = (figures["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == (pytest.approx(2 / 5), pytest.approx(2 / 3))
    assert a["f1"] == pytest.approx(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 3)
    assert figures["macro_f1"] == pytest.approx((a["f1"] + 0.8 + 0.0) / 3)
    assert figures["macro_precision"] == pytest.approx((2 / 5 + 2 / 3) / 3)
    assert figures["micro_f1"] == figures["accuracy"]
    assert figures["examples"] == 8


def test_perfect_binary_scores_one():
    matrix = ConfusionMatrix(["neg", "pos"])
    matrix.update(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0]))
    figures = matrix.summary()
    assert figures["accuracy"] == figures["macro_f1"] == 1.0


def test_label_ids_out_of_range_are_refused():
    matrix = ConfusionMatrix(["neg", "pos"])
    with pytest.raises(ValueError, match=r"label ids in \[0, 2\)"):
        matrix.update(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="as many predictions"):
        matrix.update(np.array([0, 1]), np.array([0]))
    assert matrix.total == 0


def test_majority_baseline_predicts_the_train_majority():
    baseline = majority_baseline([30, 70], [40, 60], ["neg", "pos"])
    assert baseline["label"] == "pos"
    assert baseline["accuracy"] == pytest.approx(0.6)
    # pos: precision 0.6, recall 1 -> F1 0.75; neg never predicted -> 0
    assert baseline["macro_f1"] == pytest.approx(0.75 / 2)


def test_confusion_plot_is_written(tmp_path):
    path = tmp_path / "plots" / "confusion.png"
    plot_confusion(path, {"labels": ["neg", "pos"], "counts": [[5, 1], [2, 7]]}, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
