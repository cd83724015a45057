"""YAML configs: load, apply `--set` overrides, resolve every component, validate settings."""

from __future__ import annotations

import copy
import glob as globlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from lmforge.data.split import SplitSettings
from lmforge.errors import ConfigError, RegistryError
from lmforge.host.registry import Entry, Registry
from lmforge.settings import Settings

# Top-level sections that name one component, and the registry kind each looks up.
COMPONENT_SECTIONS = {"tokenizer": "tokenizer", "model": "model", "task": "task",
                      "trainer": "trainer", "export": "exporter", "serve": "server"}
# What a section (or `callbacks`) names when the config leaves it out: the schema's defaults,
# shown filled in by `lmforge config show` like every other default.
DEFAULT_COMPONENTS = {"task": "lm", "trainer": "standard"}
DEFAULT_CALLBACKS = ["loss-plot", "progress-bar"]
RUN_KEYS = ("name", "runs_dir", "seed")
# Core sections; plugins add more through `register_config_sections` (e.g. `sweep`).
CORE_SECTIONS = (*RUN_KEYS, "data", *COMPONENT_SECTIONS, "callbacks", "sample")
DATA_KEYS = ("source", "preprocess", "split", "workers")

RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # one folder name: no separators, no leading dot


class RunSettings(Settings):
    """Settings of the run itself."""

    name: str | None = Field(None, pattern=RUN_NAME,
                             description="the run's folder name; default: the config file's stem")
    runs_dir: str = Field("runs", description="where run folders are created")
    seed: int = 0


class SampleSettings(Settings):
    """Text generated at the end of `lmforge run`, to see what the model learned."""

    prompts: list[str] = Field(default_factory=lambda: [""],
                               description="one sample per prompt; an empty prompt starts "
                                           "from the end-of-document token")
    max_new_tokens: int = Field(200, ge=0)
    temperature: float = Field(0.8, ge=0.0, description="0 is greedy decoding")
    top_k: int | None = Field(40, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int = 1


@dataclass
class Component:
    """A component named in a config, with its validated settings."""

    path: str
    entry: Entry
    settings: Settings

    def create(self) -> Any:
        return self.entry.create(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.entry.name, **self.settings.model_dump(mode="json")}


@dataclass
class DataConfig:
    source: Component
    preprocess: list[Component]
    split: SplitSettings
    workers: int = 1  # processes preparing the data; the prepared files do not depend on it

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source.to_dict(),
                "preprocess": [step.to_dict() for step in self.preprocess],
                "split": self.split.model_dump(mode="json"), "workers": self.workers}


@dataclass
class RunConfig:
    """A resolved config: every component looked up, every setting validated, defaults filled."""

    name: str
    runs_dir: Path
    seed: int
    data: DataConfig | None
    components: dict[str, Component] = field(default_factory=dict)
    # Callbacks watch training and never change the weights, so they stay out of the config
    # hash (pipeline.RESUME_SAFE): adding one neither retrains a finished run nor blocks a resume.
    callbacks: list[Component] = field(default_factory=list)
    sample: SampleSettings = field(default_factory=SampleSettings)
    metrics: list[Entry] = field(default_factory=list)  # the registered metrics task.metrics names
    # Sections plugins declared (e.g. `sweep`): read by the plugin's own commands, never by
    # training, so they stay out of the config hash.
    sections: dict[str, Settings] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        resolved: dict[str, Any] = {"name": self.name, "runs_dir": str(self.runs_dir),
                                    "seed": self.seed}
        if self.data is not None:
            resolved["data"] = self.data.to_dict()
        resolved.update({key: c.to_dict() for key, c in self.components.items()})
        resolved["callbacks"] = [c.to_dict() for c in self.callbacks]
        resolved["sample"] = self.sample.model_dump(mode="json")
        resolved.update((key, section.model_dump(mode="json"))
                        for key, section in self.sections.items())
        return resolved

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key_path(key: str) -> list[str | int]:
    """`data.preprocess[2].min_chars` (or `data.preprocess.2.min_chars`) -> parts."""
    parts: list[str | int] = []
    for name, index in _KEY_PART.findall(key):
        parts.append(int(index) if index else int(name) if name.isdigit() else name)
    if not parts or ".." in key:
        raise ConfigError(f"--set {key!r}: expected a dotted key path like model.n_layer")
    return parts


def apply_override(raw: dict[str, Any], assignment: str) -> tuple:
    """Apply one `key.path=value` override (the value is YAML) in place; return the key path."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML: {exc}") from None
    parts = parse_key_path(key.strip())
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(node, dict):
            node = node.setdefault(part, [] if isinstance(parts[depth + 1], int) else {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            raise ConfigError(f"--set {assignment!r}: cannot descend into {here}: "
                              f"found {type(node).__name__} {node!r}")
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        node[last:last + 1] = [value]
    else:
        raise ConfigError(f"--set {assignment!r}: {key} does not name a setting: "
                          f"its parent is {type(node).__name__} {node!r}")
    return tuple(parts)


def _line_map(text: str) -> dict[tuple, int | str]:
    """Key path -> 1-based line of each node in a YAML document, for error messages."""
    lines: dict[tuple, int | str] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears "
                                      f"twice in the same mapping (first on line {seen[key]})")
                seen[key] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    # An alias can make a node its own child (`a: &x [*x]`) or fan out exponentially; a config
    # needs neither, and a run folder's config.yaml may come from someone else.
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) "
                              f"are not allowed in a config; write the value out")
    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int | str]]:
    """Parse a config file; returns the mapping and a key-path -> line map."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    try:
        lines = _line_map(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"found {type(raw).__name__}")
    return raw, lines


class _Resolver:
    """Validates a raw config, collecting every problem with its key path and line."""

    def __init__(self, registry: Registry, origin: str, lines: dict[tuple, int | str],
                 config_dir: Path | None = None):
        self.registry = registry
        self.origin = origin
        self.lines = lines
        self.config_dir = config_dir
        self.problems: list[str] = []

    def problem(self, path: tuple, message: str) -> None:
        line = next((self.lines[path[:n]] for n in range(len(path), 0, -1)
                     if path[:n] in self.lines), None)
        # an int is a line of the file; a string names the --set override that put the value there
        where = line if isinstance(line, str) else f"{self.origin}:{line}" if line else self.origin
        key = _format_path(path) or "(top level)"
        self.problems.append(f"{where}: {key}: {message}")

    def settings(self, model: type[Settings], values: Any, path: tuple) -> Settings | None:
        if not isinstance(values, dict):
            self.problem(path, f"expected a mapping of settings, found {values!r}")
            return None
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors():
                self.problem((*path, *error["loc"]), _explain(error, model))
            return None

    def component(self, kind: str, value: Any, path: tuple) -> Component | None:
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            names = ", ".join(self.registry.names(kind)) or "none installed"
            self.problem(path, f"expected a mapping with 'type' naming a {kind.replace('_', ' ')} "
                               f"({names}), found {value!r}")
            return None
        try:
            entry = self.registry.get(kind, value["type"])
        except RegistryError as exc:
            self.problem((*path, "type"), str(exc))
            return None
        settings = self.settings(entry.settings, {k: v for k, v in value.items() if k != "type"},
                                 path)
        if settings is None:
            return None
        return Component(_format_path(path), entry, self.beside_config(settings, path))

    def beside_config(self, settings: Settings, path: tuple) -> Settings:
        """Settings that name files (`config_path` in their field's json_schema_extra): a
        relative name is read from beside the config file when it exists there, else from the
        working directory; names given with --set are the working directory's."""
        if self.config_dir is None or self.config_dir.resolve() == Path.cwd().resolve():
            return settings
        changes = {}
        for name, info in type(settings).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if not extra.get("config_path") or any(
                    isinstance(line, str) and key[:len(path) + 1] == (*path, name)
                    for key, line in self.lines.items()):
                continue
            value = getattr(settings, name)
            names = [self._beside_config(v) for v in ([value] if isinstance(value, str) else value)]
            changes[name] = names[0] if isinstance(value, str) else names
        return settings.model_copy(update=changes)

    def _beside_config(self, name: str) -> str:
        beside = self.config_dir / name
        if Path(name).is_absolute():
            return name
        found = (globlib.glob(str(beside), recursive=True) if any(c in name for c in "*?[")
                 else beside.exists())
        return str(beside.resolve()) if found else name

    def component_list(self, kind: str, value: Any, path: tuple) -> list[Component] | None:
        """A list of components (`data.preprocess`, `callbacks`); None if any is wrong."""
        if not isinstance(value, list):
            self.problem(path, f"expected a list of {kind}s, found {value!r}")
            return None
        found = [self.component(kind, item, (*path, i)) for i, item in enumerate(value)]
        return None if None in found else found

    def metrics(self, task: Component) -> list[Entry]:
        """The registered metrics `task.metrics` names, each one that reads this task's batches."""
        from lmforge.interfaces.task import TaskSettings

        if not isinstance(task.settings, TaskSettings):
            return []
        task_name = task.entry.name
        known = {name: self.registry.get("metric", name) for name in self.registry.names("metric")}
        usable = {name: entry for name, entry in known.items()
                  if not entry.component.tasks or task_name in entry.component.tasks}
        for i, name in enumerate(task.settings.metrics):
            if name not in usable:
                what = "a metric of other tasks:" if name in known else "unknown metric"
                self.problem(("task", "metrics", i),
                             f"{what} {name!r}; metrics for task {task_name!r}: "
                             f"{', '.join(usable) or 'none installed'}")
        return [usable[name] for name in task.settings.metrics if name in usable]

    def data(self, raw: Any) -> DataConfig | None:
        if not isinstance(raw, dict):
            self.problem(("data",),
                         f"expected a mapping with {', '.join(DATA_KEYS)}, found {raw!r}")
            return None
        for key in raw:
            if key not in DATA_KEYS:
                self.problem(("data", key), f"unknown key; data takes {', '.join(DATA_KEYS)}")
        source = None
        if "source" not in raw:
            self.problem(("data",), "missing 'source': the data source to read")
        else:
            source = self.component("data_source", raw["source"], ("data", "source"))
        preprocess = self.component_list("preprocessor", raw.get("preprocess") or [],
                                         ("data", "preprocess"))
        split = self.settings(SplitSettings, raw.get("split") or {}, ("data", "split"))
        workers = raw.get("workers", 1)
        if type(workers) is not int or workers < 1:
            self.problem(("data", "workers"), f"expected a number of processes, at least 1, "
                                              f"found {workers!r}")
            return None
        if source is None or split is None or preprocess is None:
            return None
        return DataConfig(source, preprocess, split, workers)


def _format_path(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _explain(error: dict, model: type[Settings]) -> str:
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"unknown setting; allowed: {allowed or 'none'}"
    found = error.get("input")
    message = error["msg"]
    if error["type"] == "missing":
        return "missing required setting"
    return f"{message} (found {found!r})"


def resolve(raw: dict[str, Any], registry: Registry, *, origin: str = "<config>",
            lines: dict[tuple, int | str] | None = None, default_name: str = "run",
            config_dir: Path | None = None) -> RunConfig:
    """Validate a raw config against the registry; raise one ConfigError listing every problem.
    `config_dir`, the config file's folder, is where relative file settings are looked for
    first."""
    resolver = _Resolver(registry, origin, lines or {}, config_dir)
    plugin_sections = registry.names("config_section")
    for key in raw:
        if key not in CORE_SECTIONS and key not in plugin_sections:
            allowed = ", ".join((*CORE_SECTIONS, *plugin_sections))
            resolver.problem((key,), f"unknown section; allowed: {allowed}")
    run = resolver.settings(RunSettings, {k: raw[k] for k in RUN_KEYS if k in raw}, ())
    data = resolver.data(raw["data"]) if "data" in raw else None
    components = {}
    for section, kind in COMPONENT_SECTIONS.items():
        if section in raw or section in DEFAULT_COMPONENTS:
            value = raw[section] if section in raw else DEFAULT_COMPONENTS[section]
            components[section] = resolver.component(kind, value, (section,))
    if run is not None and run.name is None and not re.match(RUN_NAME, default_name):
        resolver.problem(("name",), f"the run is named after the config file, but "
                                    f"{default_name!r} is not a folder name ({RUN_NAME}); "
                                    f"set `name`")
    callbacks = resolver.component_list(
        "callback", (raw["callbacks"] or []) if "callbacks" in raw else DEFAULT_CALLBACKS,
        ("callbacks",))
    sample = resolver.settings(SampleSettings, raw.get("sample") or {}, ("sample",))
    metrics = resolver.metrics(components["task"]) if components["task"] else []
    sections = {key: resolver.settings(registry.get("config_section", key).settings,
                                       raw[key] or {}, (key,))
                for key in plugin_sections if key in raw}
    if resolver.problems:
        count = len(resolver.problems)
        raise ConfigError(f"{count} problem{'s' if count > 1 else ''} in the config:\n  "
                          + "\n  ".join(resolver.problems))
    return RunConfig(name=run.name or default_name, runs_dir=Path(run.runs_dir), seed=run.seed,
                     data=data, components=components, callbacks=callbacks, sample=sample,
                     metrics=metrics,
                     sections=sections)


def load_config(path: str | Path, registry: Registry,
                overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """Read a YAML config, apply `--set` overrides, and resolve it against `registry`."""
    raw, lines = read_yaml(path)
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        overridden = apply_override(raw, assignment)
        for key in [k for k in lines if k[:len(overridden)] == overridden]:
            del lines[key]
        lines[overridden] = f"--set {assignment}"
    return resolve(raw, registry, origin=str(path), lines=lines, default_name=Path(path).stem,
                   config_dir=Path(path).parent)
