"""`lmforge run`: data -> tokenizer -> train -> eval -> samples -> export, skipping stages still
valid."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.atomic import atomic_write_text
from lmforge.config import RunConfig, load_config
from lmforge.data.prepare import PreparedData, prepare_data
from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.interfaces.model import Model, ModelSpec, Module
from lmforge.interfaces.task import Task, TaskData
from lmforge.interfaces.tokenizer import Tokenizer, file_hash, load_tokenizer
from lmforge.run.checkpoint import (
    check_compatible,
    complete_checkpoints,
    load_model_weights,
    read_meta,
    refuse_overwrite,
)
from lmforge.run.folder import (
    CONFIG_FILE,
    EVAL_FILE,
    EXPORT_DIR,
    SPEC_FILE,
    TOKENIZER_FILE,
    run_lock,
)
from lmforge.run.world import World, current_world, join_world, leave_world, main_first

# Settings that change how a run is watched, paced or deployed, not what it trains: a run may
# resume with other values for these.
RESUME_SAFE = {("name",), ("runs_dir",), ("sample",), ("callbacks",), ("task", "metrics"),
               ("export",), ("serve",), ("trainer", "max_time"), ("trainer", "checkpoint_every"),
               ("trainer", "keep_last"), ("trainer", "log_every"), ("trainer", "threads"),
               ("trainer", "device"), ("trainer", "backend"), ("trainer", "collective_timeout"),
               ("data", "workers")}


def config_hash(config: RunConfig) -> str:
    """A hash of every setting that decides what training computes."""
    resolved = config.to_dict()
    for section in config.sections:
        resolved.pop(section)
    for path in RESUME_SAFE:
        node = resolved
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def runnable(config: RunConfig, registry: Registry) -> RunConfig:
    """The config, once it is checked to name everything a run needs."""
    for section in ("tokenizer", "model"):
        if section not in config.components:
            names = ", ".join(registry.names(section)) or "none installed"
            raise LmforgeError(f"the config names no {section}: add a '{section}:' section with "
                               f"a type ({names})")
    if config.data is None:
        raise LmforgeError("the config has no 'data' section: name a data source under "
                           "data.source")
    return config


@dataclass
class LoadedRun:
    """A run's parts, built and ready: what `eval` and `generate` work with."""

    config: RunConfig
    tokenizer: Tokenizer
    task: Task  # without data: set up for inference (`Task.prepare_inference`)
    model: torch.nn.Module
    checkpoint: Path | None


def train_tokenizer(config: RunConfig, prepared: PreparedData, console: Console,
                    registry: Registry) -> Tokenizer:
    """Train the tokenizer on the train split, or reuse the saved one if data and settings match."""
    component = config.components["tokenizer"]
    path = config.run_dir / TOKENIZER_FILE
    key_path = config.run_dir / "tokenizer.key"
    key = hashlib.sha256(json.dumps([prepared.report["cache"]["key"], component.to_dict()],
                                    sort_keys=True).encode()).hexdigest()[:16]
    if path.exists() and key_path.exists() and key_path.read_text().strip() == key:
        console.print(f"tokenizer: cached ({path})")
        return load_tokenizer(path, registry)
    if complete_checkpoints(config.run_dir):
        raise LmforgeError(f"{config.run_dir} has checkpoints trained with another tokenizer or "
                           f"data; retraining the tokenizer would orphan them: use another run "
                           f"name, or delete {config.run_dir / 'checkpoints'} to start over")
    tokenizer = component.create()
    tokenizer.train(record["text"] for record in prepared.records("train"))
    tokenizer.save(path)
    atomic_write_text(key_path, key + "\n")
    console.print(f"tokenizer: trained {component.entry.name}, {tokenizer.vocab_size:,} tokens "
                  f"-> {path}")
    return tokenizer


def build_parts(config: RunConfig, prepared: PreparedData, tokenizer: Tokenizer
                ) -> tuple[Task, torch.nn.Module, Any]:
    """Set up the task on the tokenized data and build the model it specifies."""
    model_factory = config.components["model"].create()
    task = config.components["task"].create()
    task_name = config.components["task"].entry.name
    if model_factory.tasks and task_name not in model_factory.tasks:
        raise LmforgeError(f"model {config.components['model'].entry.name!r} does not support "
                           f"task {task_name!r}; it supports {', '.join(model_factory.tasks)}")
    tokenizer_path = config.run_dir / TOKENIZER_FILE
    data = TaskData(prepared, tokenizer, file_hash(tokenizer_path), config.run_dir / "data",
                    config.metrics)
    task.setup(data, model_factory.context_length())
    spec = task.model_spec()
    torch.manual_seed(config.seed)
    model = build_model(config, model_factory, spec)
    # what the model was built from, so inference rebuilds it without the training data
    atomic_write_text(config.run_dir / SPEC_FILE, json.dumps(dataclasses.asdict(spec), indent=2))
    return task, model, data


def build_model(config: RunConfig, factory: Model, spec: ModelSpec) -> Module:
    """The factory's module for `spec`, checked to be an lmforge Module."""
    model = factory.build(spec)
    if not isinstance(model, Module):
        name = config.components["model"].entry.name
        raise LmforgeError(f"model {name!r} built a {type(model).__name__}, which is not an "
                           f"lmforge.interfaces.model.Module (LanguageModel or "
                           f"SequenceClassifier): its plugin must build one")
    return model


def run(config_path: str, registry: Registry, overrides: tuple[str, ...] = (), *,
        resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run every stage of a config, holding its run folder; return what each stage produced.

    Under torchrun every process runs this: rank 0 prepares the data and tokenizer first, all of
    them train, and rank 0 alone evaluates, samples and exports. An elastic restart resumes."""
    config = runnable(load_config(config_path, registry, overrides), registry)
    world = current_world()
    join_world(world)
    try:
        # one lock for the job: the other ranks work in the folder rank 0 holds
        with run_lock(config.run_dir) if world.main else contextlib.nullcontext():
            return _run_stages(config, registry, resume or world.restarts > 0,
                               console or Console(), world)
    finally:
        leave_world(world)


def _run_stages(config: RunConfig, registry: Registry, resume: bool, console: Console,
                world: World) -> dict[str, Any]:
    from lmforge.interfaces.trainer import TrainContext

    run_dir = config.run_dir
    digest = config_hash(config)
    trainer = config.components["trainer"].create()
    if world.size > 1 and not trainer.distributed:
        raise LmforgeError(f"trainer {config.components['trainer'].entry.name!r} trains in one "
                           f"process only, and this job has {world.size}: run it without "
                           f"torchrun or --nproc")
    if not world.main:
        console = Console(quiet=True)
    with main_first(world):
        finished = _check_existing_checkpoints(run_dir, digest, resume)
        prepared = prepare_data(config)
        console.print(f"data: {'cached' if prepared.cached else 'prepared'} ({prepared.folder})")
        tokenizer = train_tokenizer(config, prepared, console, registry)
        task, model, data = build_parts(config, prepared, tokenizer)
        if world.main:
            atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
    info = {"model": config.components["model"].entry.name,
            "parameters": model.num_parameters(), "flops_per_token": model.flops_per_token()}
    console.print(f"model: {info['model']}, {info['parameters']:,} parameters, kernels "
                  f"{model.kernels_backend}")

    if finished is not None:
        console.print(f"train: cached (this config finished training at {finished.name})")
        load_model_weights(finished, model)
        summary = read_meta(finished).get("summary", {})
    else:
        summary = trainer.fit(TrainContext(
            run_dir=run_dir, model=model, task=task, seed=config.seed, config_hash=digest,
            tokenizer_hash=data.tokenizer_hash, resume=resume, model_info=info,
            kernels=model.kernels_backend, callbacks=[c.create() for c in config.callbacks]))
        if summary.get("interrupted"):
            console.print("interrupted: the checkpoint is saved; --resume continues")
            return {"train": summary}
    if world.size > 1:
        if not world.main:
            return {"train": summary}
        # The trained model may be sharded over processes that are now gone: rank 0 goes on
        # with a model of its own holding the final checkpoint's weights.
        device = next(model.parameters()).device
        model = build_model(config, config.components["model"].create(), task.model_spec())
        load_model_weights(Path(summary["checkpoint"]), model.to(device))
    checkpoint = finished.name if finished is not None else Path(summary["checkpoint"]).name
    results = {"train": summary, "eval": evaluate_run(config, task, model, console, checkpoint,
                                                      trainer.eval_batch_size)}
    if task.generates_text:
        results["samples"] = write_samples(config, task, model, console)
    if "export" in config.components:
        exporter = config.components["export"].create()
        results["export"] = exporter.export(run_dir, run_dir / EXPORT_DIR, registry=registry,
                                            console=console)
    return results


def _check_existing_checkpoints(run_dir: Path, digest: str, resume: bool) -> Path | None:
    """Refuse a run that would overwrite or mismatch the checkpoints already in its folder, before
    anything there changes; return the final checkpoint of a finished run of this same config,
    which makes training a no-op."""
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        return None
    meta = read_meta(checkpoints[-1])
    if resume:
        check_compatible(meta, digest, None, checkpoints[-1])
        return None
    if meta.get("config_hash") == digest and meta.get("final"):
        return checkpoints[-1]
    refuse_overwrite(run_dir, checkpoints)
    return None


def evaluate_run(config: RunConfig, task: Task, model: torch.nn.Module, console: Console,
                 checkpoint: str, batch_size: int, splits: tuple[str, ...] = ("val", "test")
                 ) -> dict[str, Any]:
    """Score the model (the weights of `checkpoint`) on whole splits, `batch_size` sequences a
    batch (the trainer's `eval_batch_size`), and write eval.json.

    Figures already in eval.json for the same checkpoint (`lmforge eval --data` files) stay;
    those of other checkpoints are dropped, since they describe weights that are gone.
    """
    results = {}
    for split in splits:
        try:
            results[split] = {**task.evaluate(model, split, batch_size), "checkpoint": checkpoint}
        except LmforgeError as exc:
            console.print(f"eval {split}: skipped ({exc})")
            continue
        print_figures(console, split, results[split])
    path = config.run_dir / EVAL_FILE
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    kept = {key: figures for key, figures in earlier.items()
            if isinstance(figures, dict) and figures.get("checkpoint") == checkpoint}
    atomic_write_text(path, json.dumps({**kept, **results}, indent=2))
    task.write_report(config.run_dir, results, console)
    return results


def print_figures(console: Console, split: str, figures: dict[str, Any]) -> None:
    """One line of a split's scalar figures (tables and matrices are the task's report)."""
    console.print(f"eval {split}: " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in figures.items()
        if isinstance(v, (int, float))))


def write_samples(config: RunConfig, task: Task, model: torch.nn.Module, console: Console
                  ) -> list[str]:
    """Continue each of the config's sample prompts, show the texts and save samples.txt."""
    sample = config.sample
    texts = []
    for prompt in sample.prompts:
        pieces = task.generate_text(model, prompt, max_new_tokens=sample.max_new_tokens,
                                    temperature=sample.temperature, top_k=sample.top_k,
                                    top_p=sample.top_p, seed=sample.seed,
                                    repetition_penalty=sample.repetition_penalty)
        text = prompt + "".join(pieces)
        texts.append(text)
        console.rule(f"sample (prompt {prompt!r})")
        console.print(text, markup=False, highlight=False)
    atomic_write_text(config.run_dir / "samples.txt", "\n\n---\n\n".join(texts) + "\n")
    return texts


def load_run(run_dir: Path, registry: Registry, *, with_data: bool = True) -> LoadedRun:
    """Rebuild a trained run from its folder: config, tokenizer, model and weights, and, with
    `with_data`, the task set up on its prepared data (what evaluation needs; generation does
    not, so it works where the training data is gone)."""
    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise LmforgeError(f"{run_dir}: not a run folder (no config.yaml); give the folder "
                           f"`lmforge run` wrote, e.g. runs/NAME")
    # callbacks only watch training: a run whose callback plugin is gone still loads
    config = runnable(load_config(config_file, registry, ("callbacks=[]",)), registry)
    # the folder may have moved since it was written: its own location wins
    config.runs_dir, config.name = run_dir.parent, run_dir.name
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        raise LmforgeError(f"{run_dir}: no complete checkpoint to load; train it with "
                           f"`lmforge run`")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE, registry)
    if with_data:
        task, model, _ = build_parts(config, prepare_data(config), tokenizer)
    else:
        spec = ModelSpec(**json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")))
        factory = config.components["model"].create()
        model = build_model(config, factory, spec)
        task = config.components["task"].create()
        data = TaskData(None, tokenizer, file_hash(run_dir / TOKENIZER_FILE), run_dir / "data",
                        config.metrics)
        task.prepare_inference(data, spec.labels or (), factory.context_length())
    load_model_weights(checkpoints[-1], model)
    model.eval()
    return LoadedRun(config, tokenizer, task, model, checkpoints[-1])
