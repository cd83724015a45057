"""Plugin discovery, isolation of broken plugins, the switches and strict mode."""

from __future__ import annotations

import io
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from lmforge.errors import PluginError
from lmforge.host import manager
from lmforge.host.manager import load_plugins

from .fake_dists import (
    BROKEN_COMMAND,
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


ROOT = Path(__file__).resolve().parents[2]


def declared_builtins() -> dict[str, str]:
    """The `lmforge` entry points pyproject.toml declares: name -> module."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return project["project"]["entry-points"]["lmforge"]


def test_builtins_load_from_the_entry_points_and_are_labelled():
    host = load_plugins({"LMFORGE_LOAD_PLUGINS": ""})
    assert sorted(p.name for p in host.plugins) == sorted(declared_builtins())
    assert all(p.builtin and p.distribution == "lmforge" for p in host.plugins)
    text = host.registry.get("data_source", "text")
    assert text.provider.plugin == "lmforge.plugins.data.sources"
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
    assert "lmforge.plugins.data.sources" in failure.error and "'shadow'" in failure.error
    text = host.registry.get("data_source", "text")
    assert text.provider.plugin == "lmforge.plugins.data.sources"


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
    host = load_plugins({"LMFORGE_DISABLE_PLUGINS": "broken,lmforge.plugins.data.dedup"})
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


def test_entry_points_and_shipped_plugins_do_not_drift():
    """Every plugins/ module implementing a hook is declared, and every declaration is
    installed: a plugin added without its entry point (or the reverse) fails here."""
    with_hooks = set()
    for path in (ROOT / "plugins").rglob("*.py"):
        if "@hookimpl" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT / "plugins").with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            with_hooks.add(".".join(("lmforge.plugins", *parts)))
    declared = declared_builtins()
    assert set(declared.values()) == with_hooks
    installed_names = {ep.name: ep.value for ep in entry_points(group="lmforge")
                       if ep.dist is not None and ep.dist.name == "lmforge"}
    assert installed_names == declared, "reinstall lmforge: its metadata is stale"


def test_missing_package_metadata_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(manager, "entry_points", lambda group: [])
    with pytest.raises(PluginError, match="declares no 'lmforge' entry points.*make install"):
        load_plugins({"LMFORGE_LOAD_PLUGINS": ""})


def test_a_failing_command_hook_is_reported_and_its_commands_removed(installed):
    installed("cmd-plugin", "0.2", "cmd_mod", BROKEN_COMMAND, entry_point="cmd")
    group = click.Group("lmforge")
    host = load_plugins(ALL, cli=group)
    [failure] = host.failures
    assert (failure.name, failure.stage) == ("cmd", "register_commands")
    assert "commands exploded" in failure.error
    assert "half-added" not in group.commands
    assert "sweep" in group.commands  # the built-in search's command is there
    with pytest.raises(PluginError, match="cmd-plugin 0.2.*register_commands"):
        load_plugins({"LMFORGE_STRICT_PLUGINS": "1"}, cli=click.Group("lmforge"))
