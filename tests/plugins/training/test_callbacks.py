"""The built-in callbacks' files: a plot that fails half-way leaves the previous one whole."""

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from lmforge.plugins.training.callbacks import plot_losses

RECORDS = [{"event": "train", "step": s, "tokens": 64 * s, "loss": 3.0 / s} for s in (1, 2, 3)]


def test_a_loss_plot_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "plots" / "loss.png"
    plot_losses(path, RECORDS)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def killed_mid_write(self, target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", killed_mid_write)
    with pytest.raises(OSError, match="disk full"):
        plot_losses(path, RECORDS[:2])
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]
