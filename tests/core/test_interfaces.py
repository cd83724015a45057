"""Every registered component implements its kind's interface, and the bases enforce theirs."""

from __future__ import annotations

import inspect

import pytest
from torch import nn

from lmforge.errors import LmforgeError, RegistryError
from lmforge.host.registry import INTERFACES, Provider, Registry, interface
from lmforge.interfaces.data import DataSource
from lmforge.interfaces.model import LanguageModel, Model, ModelSpec
from lmforge.run.pipeline import build_model

TEST_PROVIDER = Provider("test", "test-dist", "0", False)


def test_every_builtin_is_a_concrete_subclass_of_its_interface(registry):
    kinds_seen = set()
    for entry in registry.entries():
        base = interface(entry.kind)
        if base is None:
            continue
        kinds_seen.add(entry.kind)
        assert issubclass(entry.component, base), entry
        assert not inspect.isabstract(entry.component), entry
        assert inspect.getdoc(entry.component), f"{entry.kind} {entry.name} has no docstring"
    # the built-in server comes with the serving stage; every other kind has a built-in
    assert kinds_seen | {"server"} == set(INTERFACES)


def test_every_interface_method_has_a_docstring():
    for kind in INTERFACES:
        base = interface(kind)
        for name, member in vars(base).items():
            if callable(member) and not name.startswith("_"):
                assert inspect.getdoc(member), f"{base.__qualname__}.{name} has no docstring"


class NotASource:
    """Streams nothing, and is no DataSource."""


class HalfSource(DataSource):
    """Forgets to say what its records depend on."""

    def records(self):
        return iter(())


def test_registry_refuses_a_component_outside_its_interface():
    with pytest.raises(RegistryError, match=r"data source 'odd' from plugin 'test': expected a "
                                            r"subclass of lmforge.interfaces.data.DataSource"):
        Registry().add("data_source", "odd", NotASource, None, TEST_PROVIDER)


def test_registry_names_the_methods_a_component_lacks():
    with pytest.raises(RegistryError, match="HalfSource does not implement fingerprint, which "
                                            "DataSource requires"):
        Registry().add("data_source", "half", HalfSource, None, TEST_PROVIDER)


class NoStepModel(LanguageModel):
    """Generates nothing: generate_step is missing."""

    def forward(self, idx):
        return idx

    def flops_per_token(self) -> int:
        return 0


def test_module_bases_enforce_their_abstract_methods():
    with pytest.raises(TypeError, match="generate_step"):
        NoStepModel()


class EchoModel(LanguageModel):
    """Repeats its input, and does not say how it exports."""

    def forward(self, idx):
        return idx

    def generate_step(self, idx, state):
        return idx[:, -1], state

    def flops_per_token(self) -> int:
        return 0


def test_a_module_that_describes_no_graphs_does_not_export():
    with pytest.raises(LmforgeError, match="model EchoModel does not export to ONNX"):
        EchoModel().export_graphs()


class PlainModuleFactory(Model):
    """Builds a bare nn.Module."""

    def build(self, spec: ModelSpec) -> nn.Module:
        return nn.Linear(2, 2)


def test_a_factory_that_builds_a_bare_module_is_refused(registry, tmp_path):
    from lmforge.config import resolve

    config = resolve({"data": {"source": {"type": "text", "paths": [str(tmp_path)]}},
                      "tokenizer": "char", "model": "gpt"}, registry)
    with pytest.raises(LmforgeError, match="model 'gpt' built a Linear, which is not an "
                                           "lmforge.interfaces.model.Module"):
        build_model(config, PlainModuleFactory(PlainModuleFactory.Settings()),
                    ModelSpec(task="lm", vocab_size=4))
    assert isinstance(build_model(config, config.components["model"].create(),
                                  ModelSpec(task="lm", vocab_size=4)), LanguageModel)


class XyzSource(DataSource):
    """Reads .xyz files."""

    suffixes = (".xyz",)

    def records(self):
        return iter(())

    def fingerprint(self) -> str:
        return "xyz"


class OtherCsvSource(XyzSource):
    """Reads .csv files too."""

    suffixes = (".csv",)


def test_a_file_is_read_by_the_source_declaring_its_suffix(registry, tmp_path):
    from lmforge.run.inputs import source_for

    tsv = registry.get("data_source", "tsv")
    assert source_for(tmp_path / "held-out.csv.gz", tsv, registry).name == "csv"
    assert source_for(tmp_path / "held-out.tsv", tsv, registry) is tsv
    assert source_for(tmp_path / "held-out.dat", tsv, registry) is tsv
    mine = Registry()
    for name in registry.names("data_source"):
        entry = registry.get("data_source", name)
        mine.add("data_source", name, entry.component, None, entry.provider)
    mine.add("data_source", "xyz", XyzSource, None, TEST_PROVIDER)
    assert source_for(tmp_path / "more.xyz", tsv, mine).name == "xyz"
    mine.add("data_source", "other-csv", OtherCsvSource, None, TEST_PROVIDER)
    with pytest.raises(LmforgeError, match="sources csv, other-csv all read .csv files"):
        source_for(tmp_path / "more.csv", tsv, mine)
