"""A trainer from another distribution runs, evaluates, predicts and is searched over through
the run-folder contract alone, exactly as the built-in one."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli.test_cli import run
from tests.cli.test_cli_classify import write_config

from .fake_dists import make_distribution

PLAIN_SGD = '''
    """A minimal trainer that writes the run folder through lmforge's contract only."""
    import torch
    from pydantic import Field

    from lmforge import Settings, Trainer, hookimpl
    from lmforge.run.checkpoint import checkpoint_dir, save_checkpoint
    from lmforge.run.folder import MetricsLog


    class PlainSgd(Trainer):
        """Plain SGD for a fixed number of steps, one checkpoint at the end."""

        class Settings(Settings):
            batch_size: int = Field(16, ge=1)
            lr: float = Field(0.5, gt=0.0)
            max_steps: int = Field(60, ge=1)

        def fit(self, context):
            s, task, model = self.settings, context.task, context.model
            optimizer = torch.optim.SGD(model.parameters(), lr=s.lr)
            log = MetricsLog(context.run_dir)
            log.on_fit_start(context, {"event": "run", "step": 0, "resumed": False})
            model.train()
            for step in range(1, s.max_steps + 1):
                loss, _ = task.loss(model, task.train_batch(step - 1, s.batch_size, context.seed))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                log.on_train_log({"event": "train", "step": step, "loss": loss.item()})
            model.eval()
            with torch.no_grad():
                val = [task.loss(model, b)[0].item() for b in task.eval_batches("val", 16, 2)]
            log.on_eval({"event": "eval", "step": s.max_steps, "val_loss": sum(val) / len(val)})
            summary = {"steps": s.max_steps, "interrupted": False,
                       "checkpoint": str(checkpoint_dir(context.run_dir, s.max_steps))}
            save_checkpoint(context.run_dir, s.max_steps, model, {"step": s.max_steps},
                            {"config_hash": context.config_hash,
                             "tokenizer_hash": context.tokenizer_hash, "final": True,
                             "summary": summary})
            log.on_fit_end(summary)
            return summary


    @hookimpl
    def register_trainers(register):
        register("plain-sgd", PlainSgd)
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dists")
    make_distribution(root, "lmforge-plain-sgd", "0.1", {"plain-sgd": "plain_sgd"},
                      {"plain_sgd": PLAIN_SGD})
    return {"PYTHONPATH": str(root)}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("third-party")
    path = write_config(tmp_path)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["trainer"] = {"type": "plain-sgd", "max_steps": 60}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_run_eval_and_predict_with_a_third_party_trainer(config, plugin_env):
    trained = run("run", str(config), env=plugin_env, cwd=config.parent)
    assert trained.returncode == 0, trained.stderr
    run_dir = config.parent / "runs" / "tiny-sentiment"
    figures = json.loads((run_dir / "eval.json").read_text())
    assert figures["test"]["checkpoint"] == "step-00000060"
    assert figures["test"]["accuracy"] > 0.8  # the markers make the labels easy to learn

    scored = run("eval", str(run_dir), "--split", "test", "--json", env=plugin_env)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["test"]["accuracy"] == figures["test"]["accuracy"]

    predicted = run("predict", str(run_dir), "--text", "A superb and moving film.", "--json",
                    env=plugin_env)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["label"] == "positive"


@pytest.mark.slow  # about 25 s: kept out of make test to hold it under 15 minutes
def test_sweep_over_a_third_party_trainer(config, plugin_env):
    searched = run("sweep", str(config), "--set", "name=sgd-sweep",
                   "--param", "trainer.lr=loguniform(0.05,1.0)", "--sampler", "random",
                   "--trials", "2", "--objective", "val.accuracy",
                   "--json", env={**plugin_env, "LMFORGE_NO_PROGRESS": "1"}, cwd=config.parent)
    assert searched.returncode == 0, searched.stderr
    summary = json.loads(searched.stdout)
    assert [t["status"] for t in summary["trials"]] == ["finished", "finished"]
    best = yaml.safe_load((config.parent / "runs" / "sgd-sweep" / "best.yaml").read_text())
    assert best["trainer"]["type"] == "plain-sgd"
