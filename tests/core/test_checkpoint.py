"""Checkpoints: contents, tied weights, completeness, a kill while saving."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.run.checkpoint import (
    checkpoint_dir,
    complete_checkpoints,
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    read_meta,
    save_checkpoint,
    update_meta,
)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def save(run_dir, step, model=None, **meta):
    return save_checkpoint(run_dir, step, model or Tied(), {"step": step},
                           {"config_hash": "c", "tokenizer_hash": "t", **meta})


def test_a_checkpoint_holds_weights_state_and_meta(tmp_path):
    model = Tied()
    state = {"step": 3, "optimizer": {"lr": 0.1, "moments": [torch.ones(2)]}, "best": None}
    folder = save_checkpoint(tmp_path, 3, model, state,
                             {"config_hash": "c", "tokenizer_hash": "t", "val_loss": 2.5})
    assert folder == tmp_path / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "meta.json",
                                                        "model.safetensors", "trainer.pt"]
    meta = read_meta(folder)
    assert meta["step"] == 3 and meta["val_loss"] == 2.5 and meta["config_hash"] == "c"
    assert {"time", "lmforge_version", "tokenizer_hash"} <= set(meta)
    loaded = load_trainer_state(folder)
    assert loaded["step"] == 3 and torch.equal(loaded["optimizer"]["moments"][0], torch.ones(2))

    fresh = Tied()
    load_model_weights(folder, fresh)
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight  # still tied


def test_meta_can_be_updated_in_place(tmp_path):
    folder = save(tmp_path, 4)
    update_meta(folder, {"final": True, "summary": {"steps": 4}})
    meta = read_meta(folder)
    assert meta["final"] and meta["summary"] == {"steps": 4} and meta["config_hash"] == "c"
    assert latest_checkpoint(tmp_path) == folder


def test_the_marker_lists_every_file_of_the_checkpoint(tmp_path):
    folder = save(tmp_path, 1)
    manifest = json.loads((folder / "COMPLETE").read_text())
    assert manifest == {"files": ["meta.json", "model.safetensors", "trainer.pt"]}
    (folder / "trainer.pt").unlink()  # e.g. a delete that was killed half-way
    assert complete_checkpoints(tmp_path) == []


def test_weights_that_do_not_fit_name_the_checkpoint(tmp_path):
    folder = save(tmp_path, 1)
    with pytest.raises(LmforgeError, match=r"step-00000001: its weights do not fit this Linear"):
        load_model_weights(folder, nn.Linear(2, 2))


def test_incomplete_checkpoints_are_ignored(tmp_path):
    for step in (2, 10):
        save(tmp_path, step)
    (checkpoint_dir(tmp_path, 11)).mkdir()  # renamed, but killed before its marker
    (tmp_path / "checkpoints" / ".step-00000012.tmp-999").mkdir()  # killed while writing
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000010"]
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    assert latest_checkpoint(tmp_path / "elsewhere") is None


CHILD = """
import sys, time
from pathlib import Path
import torch
from torch import nn
from lmforge.run.checkpoint import save_checkpoint
run_dir = Path(sys.argv[1])
torch.manual_seed(0)
model = nn.Linear(4, 4)
save_checkpoint(run_dir, 1, model, {"step": 1}, {})
real_save = torch.save

def stalled_save(obj, path):
    real_save(obj, path)
    (run_dir / "saving").touch()
    time.sleep(60)

torch.save = stalled_save
with torch.no_grad():
    model.weight.add_(1.0)
save_checkpoint(run_dir, 2, model, {"step": 2}, {})
"""


def test_a_kill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "saving").exists():
            assert child.poll() is None, "the child process ended before saving step 2"
            assert time.monotonic() < deadline, "the child never reached the second save"
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no cleanup runs
        child.wait()
    assert list((tmp_path / "checkpoints").glob(".step-00000002.tmp-*"))
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000001"
    torch.manual_seed(0)
    expected = nn.Linear(4, 4)
    model = nn.Linear(4, 4)
    load_model_weights(latest, model)
    assert torch.equal(model.weight, expected.weight)
    assert json.loads((latest / "meta.json").read_text())["step"] == 1
