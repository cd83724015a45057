"""Plugin discovery, isolation of broken plugins, the switches and strict mode."""

from __future__ import annotations

import io

import pytest

from lmforge.errors import PluginError
from lmforge.plugin_manager import BUILTIN_PLUGINS, load_plugins

from .fake_dists import (
    BROKEN_IMPORT,
    DUPLICATE_NAME,
    GOOD_PLUGIN,
    MISSPELLED_HOOK,
    RAISING_HOOK,
    make_distribution,
)

ALL = {}  # no switches: every installed plugin loads


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install fake distributions on sys.path; returns a function adding one."""

    def install(name, version, module, source, entry_point=None):
        make_distribution(tmp_path, name, version, {entry_point or module: module},
                          {module: source})

    monkeypatch.syspath_prepend(str(tmp_path))
    return install


def test_builtins_load_and_are_labelled():
    host = load_plugins({"LMFORGE_LOAD_PLUGINS": ""})
    assert [p.name for p in host.plugins] == list(BUILTIN_PLUGINS)
    assert all(p.builtin and p.distribution == "lmforge" for p in host.plugins)
    text = host.registry.get("data_source", "text")
    assert text.provider.plugin == "lmforge.plugins.sources"
    assert text.provider.builtin
    assert host.failures == []


def test_third_party_plugin_loads_with_its_distribution(installed):
    installed("lmforge-numbers", "1.2.3", "lmforge_numbers", GOOD_PLUGIN, entry_point="numbers")
    host = load_plugins(ALL)
    entry = host.registry.get("data_source", "numbers")
    assert (entry.provider.plugin, entry.provider.distribution, entry.provider.version) == (
        "numbers", "lmforge-numbers", "1.2.3")
    assert not entry.provider.builtin
    assert [r["text"] for r in entry.create({}).records()] == ["0", "1", "2"]


def test_plugin_that_fails_to_import_is_recorded_and_others_load(installed):
    installed("lmforge-numbers", "1.0", "lmforge_numbers", GOOD_PLUGIN, entry_point="numbers")
    installed("broken-plugin", "0.3", "broken_mod", BROKEN_IMPORT, entry_point="broken")
    host = load_plugins(ALL)
    assert host.registry.get("data_source", "numbers")
    assert host.registry.get("data_source", "text")
    [failure] = host.failures
    assert (failure.name, failure.distribution, failure.version, failure.stage) == (
        "broken", "broken-plugin", "0.3", "import")
    assert failure.entry_point == "broken = broken_mod"
    assert "lmforge_no_such_module" in failure.error
    assert "Traceback" in failure.traceback


def test_failures_are_reported_once(installed):
    installed("broken-plugin", "0.3", "broken_mod", BROKEN_IMPORT, entry_point="broken")
    host = load_plugins(ALL)
    stream = io.StringIO()
    host.warn_failures(stream)
    host.warn_failures(stream)
    assert stream.getvalue().count("plugin 'broken' (broken-plugin 0.3") == 1


def test_registration_hook_that_raises_leaves_nothing_behind(installed):
    installed("half-plugin", "0.1", "half_mod", RAISING_HOOK, entry_point="half")
    host = load_plugins(ALL)
    [failure] = host.failures
    assert failure.stage == "register_data_sources"
    assert "registration exploded" in failure.error
    assert "half" not in host.registry.names("data_source")
    assert "half" not in [p.name for p in host.plugins]


def test_duplicate_name_names_both_plugins(installed):
    installed("shadow-plugin", "2.0", "shadow_mod", DUPLICATE_NAME, entry_point="shadow")
    host = load_plugins(ALL)
    [failure] = host.failures
    assert "'text' is registered twice" in failure.error
    assert "lmforge.plugins.sources" in failure.error and "'shadow'" in failure.error
    assert host.registry.get("data_source", "text").provider.plugin == "lmforge.plugins.sources"


def test_unknown_hook_is_an_error_naming_the_plugin(installed):
    installed("typo-plugin", "0.1", "typo_mod", MISSPELLED_HOOK, entry_point="typo")
    host = load_plugins(ALL)
    [failure] = host.failures
    assert failure.name == "typo" and failure.stage == "hooks"
    assert "'register_datasources'" in failure.error
    assert "did you mean 'register_data_sources'" in failure.error


def test_load_plugins_switch_selects_by_entry_point_or_distribution(installed):
    installed("lmforge-numbers", "1.0", "lmforge_numbers", GOOD_PLUGIN, entry_point="numbers")
    installed("broken-plugin", "0.3", "broken_mod", BROKEN_IMPORT, entry_point="broken")
    none = load_plugins({"LMFORGE_LOAD_PLUGINS": ""})
    assert "numbers" not in none.registry.names("data_source") and not none.failures
    by_entry_point = load_plugins({"LMFORGE_LOAD_PLUGINS": "numbers"})
    assert "numbers" in by_entry_point.registry.names("data_source")
    assert not by_entry_point.failures
    by_distribution = load_plugins({"LMFORGE_LOAD_PLUGINS": " lmforge-numbers ,other"})
    assert "numbers" in by_distribution.registry.names("data_source")


def test_disable_switch_skips_third_party_and_builtin_plugins(installed):
    installed("broken-plugin", "0.3", "broken_mod", BROKEN_IMPORT, entry_point="broken")
    host = load_plugins({"LMFORGE_DISABLE_PLUGINS": "broken,lmforge.plugins.dedup"})
    assert not host.failures
    assert "dedup" not in host.registry.names("preprocessor")
    assert "normalize" in host.registry.names("preprocessor")


def test_strict_mode_makes_a_broken_plugin_fatal(installed):
    installed("broken-plugin", "0.3", "broken_mod", BROKEN_IMPORT, entry_point="broken")
    with pytest.raises(PluginError) as raised:
        load_plugins({"LMFORGE_STRICT_PLUGINS": "1"})
    assert "broken-plugin 0.3" in str(raised.value)
    assert "Traceback" in str(raised.value)
    assert load_plugins({"LMFORGE_STRICT_PLUGINS": "1", "LMFORGE_DISABLE_PLUGINS": "broken"})
