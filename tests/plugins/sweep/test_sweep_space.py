"""Search specs of `lmforge sweep`, the `sweep:` config section, the random and grid samplers."""

from __future__ import annotations

import pytest
import yaml

from lmforge.config import load_config
from lmforge.errors import ConfigError, LmforgeError
from lmforge.plugins.sweep.space import (
    grid_params,
    grid_size,
    parse_param,
    parse_spec,
    random_params,
    yaml_scalar,
)
from lmforge.run.pipeline import config_hash
from tests.core.test_pipeline import write_config


def test_each_kind_of_spec_parses():
    lr = parse_param("trainer.lr=loguniform(1e-4, 1e-2)")
    assert (lr.key, lr.kind, lr.low, lr.high) == ("trainer.lr", "loguniform", 1e-4, 1e-2)
    dropout = parse_param("model.dropout=uniform(0,0.5)")
    assert (dropout.kind, dropout.low, dropout.high) == ("uniform", 0.0, 0.5)
    layers = parse_param("model.n_layer=int(1,4)")
    assert (layers.kind, layers.low, layers.high, layers.log) == ("int", 1, 4, False)
    assert parse_param("model.n_embd=int(16, 256, log)").log
    choice = parse_param("trainer.schedule=choice(cosine, linear, 'a,b', 3, 1e-3, true)")
    assert choice.choices == ("cosine", "linear", "a,b", 3, 1e-3, True)
    assert parse_spec("k", choice.spec).choices == choice.choices  # the canonical text reads back


@pytest.mark.parametrize(("assignment", "message"), [
    ("trainer.lr", "expected KEY.PATH=SPEC"),
    ("trainer.lr=normal(0,1)", "not a search spec"),
    ("trainer.lr=loguniform(0,1)", "a log range needs low > 0, found low=0"),
    ("trainer.lr=uniform(1,0.5)", "expected low < high, found low=1, high=0.5"),
    ("trainer.lr=uniform(1)", "expected uniform(a,b), found 1 argument(s)"),
    ("trainer.lr=uniform(a,b)", "the bounds must be numbers"),
    ("model.n_layer=int(1.5,4)", "int bounds must be whole numbers"),
    ("model.n_layer=int(1,4,linear)", "expected int(a,b) or int(a,b,log)"),
    ("model.n_layer=choice()", "choice needs at least one value"),
    ("model.n_layer=choice([1,2],3)", "single values"),
])
def test_bad_specs_name_the_parameter_and_the_value(assignment, message):
    with pytest.raises(LmforgeError) as caught:
        parse_param(assignment)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"--param {assignment}: ")


def test_random_draws_are_a_function_of_seed_and_trial_number():
    params = [parse_param(p) for p in ("a=loguniform(1e-4,1e-2)", "b=int(1,8,log)",
                                       "c=choice(x,y,z)", "d=uniform(-1,1)")]
    first = [random_params(params, 7, number) for number in range(1, 30)]
    assert first == [random_params(params, 7, number) for number in range(1, 30)]
    assert random_params(params, 8, 1) != first[0]
    assert len({trial["a"] for trial in first}) == len(first)
    for trial in first:
        assert 1e-4 <= trial["a"] <= 1e-2 and 1 <= trial["b"] <= 8 and -1 <= trial["d"] <= 1
        assert isinstance(trial["b"], int) and trial["c"] in ("x", "y", "z")


def test_grid_enumerates_choices_ints_and_given_points():
    params = [parse_param("a=choice(x,y)"), parse_param("b=int(1,3)")]
    assert grid_size(params, None) == 6
    assert [grid_params(params, None, n) for n in range(1, 7)] == [
        {"a": a, "b": b} for a in ("x", "y") for b in (1, 2, 3)]
    lr = parse_param("lr=loguniform(1e-4,1e-2)")
    assert [round(v, 10) for v in lr.grid(3)] == [1e-4, 1e-3, 1e-2]
    with pytest.raises(LmforgeError, match="--param lr=.*cannot enumerate a continuous range; "
                                           "give --grid-points K"):
        lr.grid(None)


def test_override_text_reads_back_as_the_same_value():
    for value in (1e-5, 0.1, 3, True, "cosine", "a: b", None):
        assert yaml.safe_load(yaml_scalar(value)) == value


def test_sweep_section_is_validated_with_its_line_and_leaves_the_hash_alone(registry, tmp_path):
    path = write_config(tmp_path)
    plain = load_config(path, registry)
    raw = yaml.safe_load(path.read_text())
    raw["sweep"] = {"trials": 4, "params": {"trainer.lr": "loguniform(1e-4,1e-2)"}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with_sweep = load_config(path, registry)
    assert with_sweep.sections["sweep"].trials == 4 and with_sweep.to_dict()["sweep"]["trials"] == 4
    assert config_hash(with_sweep) == config_hash(plain)

    raw["sweep"]["params"]["model.dropout"] = "uniform(0.5,0.1)"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                if "model.dropout" in text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    assert f"{path}:{line}: sweep.params.model.dropout:" in str(caught.value)
    assert "expected low < high, found low=0.5, high=0.1" in str(caught.value)
