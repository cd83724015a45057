"""Config loading, overrides, validation errors and the shipped example configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.config import apply_override, load_config, parse_key_path, resolve
from lmforge.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"

VALID = """\
name: tiny
data:
  source:
    type: text
    paths: [corpus.txt]
  preprocess:
    - type: normalize
    - type: filter
      min_chars: 5
  split:
    val: 0.1
"""


def write(tmp_path: Path, text: str, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path, registry, *overrides: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, registry, overrides)
    return str(raised.value)


def test_valid_config_resolves_with_defaults(tmp_path, registry):
    config = load_config(write(tmp_path, VALID), registry)
    assert config.name == "tiny"
    assert config.run_dir == Path("runs/tiny")
    assert config.data.source.entry.name == "text"
    assert config.data.source.settings.errors == "strict"  # a default, filled in
    assert [step.entry.name for step in config.data.preprocess] == ["normalize", "filter"]
    assert config.data.preprocess[1].settings.min_chars == 5
    assert config.data.split.val == 0.1 and config.data.split.test == 0.05


def test_name_defaults_to_the_file_stem(tmp_path, registry):
    path = write(tmp_path, VALID.replace("name: tiny\n", ""), "my-run.yaml")
    assert load_config(path, registry).name == "my-run"


def test_show_output_is_a_config_that_resolves_to_itself(tmp_path, registry):
    config = load_config(write(tmp_path, VALID), registry)
    shown = write(tmp_path, config.to_yaml(), "shown.yaml")
    assert load_config(shown, registry).to_dict() == config.to_dict()
    assert "max_line_bytes" in config.to_yaml()


def test_unknown_source_lists_the_available_names_with_file_and_line(tmp_path, registry):
    path = write(tmp_path, VALID.replace("type: text", "type: txet"))
    message = errors_of(path, registry)
    assert f"{path}:4: data.source.type: unknown data source 'txet'" in message
    for name in ("text", "jsonl", "csv", "tsv", "python-docs"):
        assert name in message


def test_unknown_preprocessor_lists_the_available_names(tmp_path, registry):
    path = write(tmp_path, VALID.replace("type: normalize", "type: normalise"))
    message = errors_of(path, registry)
    assert "data.preprocess[0].type: unknown preprocessor 'normalise'" in message
    assert "normalize" in message and "dedup" in message


def test_bad_type_gives_key_path_and_value_found(tmp_path, registry):
    path = write(tmp_path, VALID.replace("min_chars: 5", "min_chars: many"))
    message = errors_of(path, registry)
    assert f"{path}:9: data.preprocess[1].min_chars:" in message
    assert "valid integer" in message and "'many'" in message


def test_out_of_range_value_says_what_is_allowed(tmp_path, registry):
    path = write(tmp_path, VALID.replace("val: 0.1", "val: 1.5"))
    message = errors_of(path, registry)
    assert "data.split.val: Input should be less than 1 (found 1.5)" in message


def test_data_workers_is_a_number_of_processes_and_shown_with_the_defaults(tmp_path, registry):
    config = load_config(write(tmp_path, VALID), registry)
    assert config.data.workers == 1 and config.to_dict()["data"]["workers"] == 1
    assert load_config(write(tmp_path, VALID + "  workers: 3\n"), registry).data.workers == 3
    for bad in ("0", "two", "1.5", "true"):
        path = write(tmp_path, VALID + f"  workers: {bad}\n")
        assert (f"{path}:12: data.workers: expected a number of processes, at least 1"
                in errors_of(path, registry))


def test_unknown_setting_lists_the_allowed_ones(tmp_path, registry):
    path = write(tmp_path, VALID.replace("min_chars: 5", "min_char: 5"))
    message = errors_of(path, registry)
    assert "data.preprocess[1].min_char: unknown setting; allowed:" in message
    assert "min_chars" in message


def test_unknown_section_and_every_problem_reported_together(tmp_path, registry):
    path = write(tmp_path, VALID + "modle:\n  type: gpt\n")
    message = errors_of(path, registry, "data.split.val=2")
    assert "modle: unknown section" in message
    assert "--set data.split.val=2: data.split.val" in message
    assert message.startswith("2 problems")


def test_duplicate_key_and_yaml_syntax_errors_name_the_line(tmp_path, registry):
    duplicate = write(tmp_path, VALID + "name: again\n", "dup.yaml")
    assert "line 12: key 'name' appears twice in the same mapping (first on line 1)" in errors_of(
        duplicate, registry)
    broken = write(tmp_path, "data:\n  source: [unclosed\n", "broken.yaml")
    assert f"{broken}:3: not valid YAML" in errors_of(broken, registry)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", registry)


@pytest.mark.parametrize("text", [
    "a: &x [*x]\n",  # a node that contains itself
    "a: &a [1, 1]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n",  # fan-out
])
def test_yaml_aliases_are_refused_with_their_line(tmp_path, registry, text):
    path = write(tmp_path, text, "alias.yaml")
    with pytest.raises(ConfigError, match=r"alias\.yaml: line \d+: YAML aliases \(\*\w\) are "
                                          r"not allowed"):
        load_config(path, registry)


def test_a_config_file_name_that_is_no_folder_name_needs_a_run_name(tmp_path, registry):
    path = write(tmp_path, VALID.replace("name: tiny\n", ""), "...yaml")
    with pytest.raises(ConfigError, match=r"'\.\.' is not a folder name .*set `name`"):
        load_config(path, registry)
    assert load_config(path, registry, ["name=ok"]).run_dir.name == "ok"


def test_overrides_parse_values_as_yaml(tmp_path, registry):
    overrides = ("data.source.paths=[a.txt, b.txt]", "data.preprocess[1].min_chars=7",
                 "data.preprocess.0.lowercase=true", "seed=3", "data.split.mode=contiguous")
    config = load_config(write(tmp_path, VALID), registry, overrides)
    assert config.data.source.settings.paths == ["a.txt", "b.txt"]
    assert config.data.preprocess[1].settings.min_chars == 7
    assert config.data.preprocess[0].settings.lowercase is True
    assert config.seed == 3 and config.data.split.mode == "contiguous"


def test_override_errors_are_clear():
    raw = yaml.safe_load(VALID)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override(raw, "seed")
    with pytest.raises(ConfigError, match="cannot descend into name.first: found str 'tiny'"):
        apply_override(raw, "name.first.second=x")
    with pytest.raises(ConfigError, match="name.first does not name a setting"):
        apply_override(raw, "name.first=x")
    with pytest.raises(ConfigError, match="expected a dotted key path"):
        parse_key_path("a..b")


def test_bare_string_names_a_component_with_default_settings(registry):
    raw = {"data": {"source": "python-docs", "preprocess": ["normalize"]}}
    config = resolve(raw, registry)
    assert config.data.source.entry.name == "python-docs"
    assert config.data.preprocess[0].settings.lowercase is False


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, registry):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# lmforge "), "a shipped config starts with its command"
    config = load_config(path, registry)
    # the data they name is in the project, found beside the config from any directory
    for name in getattr(config.data.source.settings, "paths", []):
        assert Path(name).is_file(), f"{path.name}: {name} is not shipped"


def test_relative_files_are_read_from_beside_the_config_first(tmp_path, registry, monkeypatch):
    folder = tmp_path / "conf"
    (folder / "texts").mkdir(parents=True)
    for name in ("beside.txt", "texts/a.txt", "both.txt"):
        (folder / name).write_text("x")
    (tmp_path / "both.txt").write_text("y")
    (tmp_path / "here.txt").write_text("z")
    body = VALID.replace("paths: [corpus.txt]",
                         "paths: [beside.txt, texts/*.txt, both.txt, here.txt, /abs.txt]")
    path = write(folder, body)
    monkeypatch.chdir(tmp_path)
    paths = load_config(path, registry).data.source.settings.paths
    assert paths == [str(folder / "beside.txt"), str(folder / "texts/*.txt"),
                     str(folder / "both.txt"), "here.txt", "/abs.txt"]
    # names given on the command line are the working directory's
    overridden = load_config(path, registry, ["data.source.paths=[both.txt]"])
    assert overridden.data.source.settings.paths == ["both.txt"]
    monkeypatch.chdir(folder)  # run from beside the config: the names stay as written
    assert load_config("conf.yaml", registry).data.source.settings.paths[0] == "beside.txt"


def test_task_metrics_must_be_registered_metrics_of_that_task(registry):
    config = resolve({"task": {"type": "classify", "metrics": ["macro_f1", "accuracy"]}}, registry)
    assert [entry.name for entry in config.metrics] == ["macro_f1", "accuracy"]
    assert [e.name for e in resolve({}, registry).metrics] == ["perplexity", "bits_per_byte"]
    with pytest.raises(ConfigError) as raised:
        resolve({"task": {"type": "classify", "metrics": ["accuracy", "bogus", "perplexity"]}},
                registry)
    message = str(raised.value)
    assert "2 problems" in message
    assert ("task.metrics[1]: unknown metric 'bogus'; metrics for task 'classify': accuracy, "
            "confusion, macro_f1, macro_precision, macro_recall, micro_f1") in message
    assert "task.metrics[2]: a metric of other tasks: 'perplexity'" in message
