"""Callbacks from a plugin, named in a config, see a run's events; bad ones are refused."""

from __future__ import annotations

import sys

import pytest
import yaml

from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.host.manager import load_plugins
from lmforge.run.pipeline import config_hash, load_run, run

from .fake_dists import make_distribution
from .test_pipeline import quiet, write_config

RECORDER = '''
    """A callback that records every event it is told of."""
    from pydantic import Field

    from lmforge import Callback, Settings, hookimpl

    EVENTS = []


    class Recorder(Callback):
        """Keeps (hook, what it was told) pairs in EVENTS."""

        class Settings(Settings):
            tag: str = Field("rec")

        def on_fit_start(self, context, record):
            EVENTS.append(("start", self.settings.tag, record["step"], record["resumed"]))

        def on_train_log(self, record):
            EVENTS.append(("train", record["step"], record["loss"]))

        def on_eval(self, record):
            EVENTS.append(("eval", record["step"], record["val_loss"]))

        def on_checkpoint(self, step, folder):
            EVENTS.append(("checkpoint", step, folder.name, (folder / "COMPLETE").exists()))

        def on_fit_end(self, summary):
            EVENTS.append(("end", summary["steps"], summary["stopped"]))


    @hookimpl
    def register_callbacks(register):
        register("recorder", Recorder)
'''

NOT_A_CALLBACK = '''
    """Registers a class that is no lmforge Callback."""
    from lmforge import hookimpl


    class Printer:
        """Has the hook names, but not the base class."""

        def on_train_log(self, record):
            print(record)


    @hookimpl
    def register_callbacks(register):
        register("printer", Printer)
'''


def install(root, monkeypatch, module: str, source: str):
    make_distribution(root, f"lmforge-{module}", "0.1", {module: module}, {module: source})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return load_plugins({})


def test_a_plugin_callback_named_in_the_config_sees_the_run(registry, tmp_path, monkeypatch):
    host = install(tmp_path / "dists", monkeypatch, "lmforge_recorder", RECORDER)
    assert host.failures == []
    path = write_config(tmp_path, max_steps=8, eval_every=4, log_every=2, checkpoint_every=4)
    config = yaml.safe_load(path.read_text())
    config["callbacks"] = ["loss-plot", {"type": "recorder", "tag": "mine"}]
    path.write_text(yaml.safe_dump(config))
    summary = run(str(path), host.registry, console=quiet())["train"]
    events = sys.modules["lmforge_recorder"].EVENTS
    assert events[0] == ("start", "mine", 0, False)
    assert [e[:2] for e in events[1:-1]] == [
        ("train", 2), ("train", 4), ("eval", 4), ("checkpoint", 4), ("train", 6),
        ("train", 8), ("eval", 8), ("checkpoint", 8)]
    assert events[-1] == ("end", 8, "max_steps") and summary["steps"] == 8
    assert all(e[3] for e in events if e[0] == "checkpoint")  # told once it is complete
    assert (tmp_path / "runs" / "tiny-gpt" / "plots" / "loss.png").exists()
    # the recorder's plugin gone, the run still loads for eval, predict and generate
    assert "recorder" not in registry.names("callback")
    assert load_run(tmp_path / "runs" / "tiny-gpt", registry, with_data=False).checkpoint


def test_callbacks_stay_out_of_the_config_hash(registry, tmp_path):
    path = write_config(tmp_path)
    default = load_config(path, registry)
    none = load_config(path, registry, ["callbacks=[]"])
    assert [c.entry.name for c in default.callbacks] == ["loss-plot", "progress-bar"]
    assert none.callbacks == [] and config_hash(none) == config_hash(default)


@pytest.mark.parametrize(("value", "message"), [
    ("[nope]", r"callbacks\[0\]\.type: unknown callback 'nope'; available: loss-plot, "
               r"progress-bar"),
    ("loss-plot", r"callbacks: expected a list of callbacks, found 'loss-plot'"),
    ("[{type: loss-plot, dpi: 3}]", r"callbacks\[0\]\.dpi: unknown setting"),
])
def test_a_bad_callback_is_an_error_naming_callbacks(registry, tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path), registry, [f"callbacks={value}"])


def test_a_plugin_registering_a_non_callback_is_refused(tmp_path, monkeypatch):
    host = install(tmp_path, monkeypatch, "lmforge_printer", NOT_A_CALLBACK)
    [failure] = host.failures
    assert failure.stage == "register_callbacks"
    assert ("callback 'printer' from plugin 'lmforge_printer': expected a subclass of "
            "lmforge.interfaces.callback.Callback") in failure.error
    assert "printer" not in host.registry.names("callback")
