"""The installed `lmforge` console script, run as a subprocess the way a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from tests.core.fake_dists import BROKEN_IMPORT, make_distribution

LMFORGE = Path(sys.executable).with_name("lmforge")

COMMAND_PLUGIN = '''
    """A plugin adding a subcommand."""
    import click
    from lmforge import hookimpl


    @hookimpl
    def register_commands(cli):
        @cli.command()
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")
'''


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        input: str | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
    environ.update(env or {})
    return subprocess.run([str(LMFORGE), *args], capture_output=True, text=True, env=environ,
                          cwd=cwd, timeout=120, input=input)


@pytest.fixture
def broken_env(tmp_path):
    make_distribution(tmp_path, "broken-plugin", "0.3", {"broken": "broken_mod"},
                      {"broken_mod": BROKEN_IMPORT})
    return {"PYTHONPATH": str(tmp_path)}


def test_version_from_console_script_and_module():
    assert run("--version").stdout.strip() == "lmforge, version 0.1.0"
    module = subprocess.run([sys.executable, "-m", "lmforge", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert module.stdout.strip() == "lmforge, version 0.1.0"


def test_plugins_list_json_shows_builtins_and_the_installed_example():
    result = run("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert by_name["lmforge.plugins.data.sources"]["builtin"] is True
    assert {"kind": "data_source", "name": "text"} in by_name["lmforge.plugins.data.sources"][
        "components"]
    try:
        distribution("lmforge-sqlite")
    except PackageNotFoundError:
        pytest.skip("the example plugin lmforge-sqlite is not installed")
    sqlite = by_name["sqlite"]
    assert (sqlite["distribution"], sqlite["version"], sqlite["builtin"]) == (
        "lmforge-sqlite", "0.1.0", False)


def test_broken_plugin_warns_once_and_strict_mode_fails(broken_env):
    result = run("plugins", "list", env=broken_env)
    assert result.returncode == 0
    assert result.stderr.count("plugin 'broken' (broken-plugin 0.3") == 1
    assert "text" in result.stdout
    strict = run("plugins", "list", env={**broken_env, "LMFORGE_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0
    assert "Traceback" in strict.stderr and "lmforge_no_such_module" in strict.stderr


def test_plugins_show_gives_doc_settings_and_provider():
    result = run("plugins", "show", "filter")
    assert result.returncode == 0, result.stderr
    assert "lmforge.plugins.data.preprocess" in result.stdout and "built-in" in result.stdout
    assert "min_chars" in result.stdout
    missing = run("plugins", "show", "nope")
    assert missing.returncode == 2 and "no component named 'nope'" in missing.stderr


def test_config_validate_reports_unknown_names_with_the_choices(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  source:\n    type: nope\n  preprocess: [unknown-step]\n")
    result = run("config", "validate", str(config))
    assert result.returncode == 2
    assert "unknown data source 'nope'; available:" in result.stderr
    assert "python-docs" in result.stderr and "jsonl" in result.stderr
    assert "unknown preprocessor 'unknown-step'; available:" in result.stderr
    assert "dedup" in result.stderr


def test_config_show_prints_the_resolved_config(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("data:\n  source: python-docs\n")
    result = run("config", "show", str(config), "--set", "data.split.val=0.2")
    assert result.returncode == 0, result.stderr
    assert "val: 0.2" in result.stdout and "type: python-docs" in result.stdout
    assert "name: ok" in result.stdout and "max_line_bytes" in result.stdout


def test_data_prepare_prints_the_report_then_hits_the_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph number {i} of the corpus." for i in range(60)))
    config = tmp_path / "small.yaml"
    config.write_text("# lmforge data prepare small.yaml\n"
                      f"data:\n  source:\n    type: text\n    paths: [{corpus}]\n"
                      "  preprocess: [normalize, dedup]\n")
    first = run("data", "prepare", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "data preparation" in first.stdout and "splits" in first.stdout
    reports = list((tmp_path / "runs" / "small" / "data").glob("prepared-*/report.json"))
    assert len(reports) == 1
    second = run("data", "prepare", str(config), cwd=tmp_path)
    assert "cached" in second.stdout


def test_data_prepare_with_workers_prints_them_and_shares_the_one_process_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i % 250} of the corpus, told once more."
                                   for i in range(400)))
    config = tmp_path / "small.yaml"
    config.write_text(f"data:\n  source:\n    type: text\n    paths: [{corpus}]\n"
                      "  preprocess: [normalize, {type: dedup, near: true}]\n  workers: 2\n")
    two = run("data", "prepare", str(config), cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "2 worker processes" in two.stdout and "duplicates removed: 150" in two.stdout
    one = run("data", "prepare", str(config), "--workers", "1", "--json", cwd=tmp_path)
    assert json.loads(one.stdout)["cache"]["hit"] is True


def _descendants(pid: int) -> set[int]:
    found, pending = set(), [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found.update(map(int, children))
        pending += map(int, children)
    return found


@pytest.mark.slow  # about 20 s for both: kept out of make test to hold it under 15 minutes
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("stop", ["ctrl-c", "kill"])
def test_a_stopped_prepare_with_workers_leaves_no_process_and_no_prepared_folder(tmp_path, stop):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} in which word{i % 97} meets word{i % 89} and "
                                   f"the rest of the sentence goes on for a while {i * 7}."
                                   for i in range(120_000)))
    config = tmp_path / "big.yaml"
    config.write_text(f"data:\n  source:\n    type: text\n    paths: [{corpus}]\n"
                      "  preprocess: [normalize, clean, {type: dedup, near: true}]\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
    process = subprocess.Popen([str(LMFORGE), "data", "prepare", str(config), "--workers", "2"],
                               cwd=tmp_path, env=environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    data = tmp_path / "runs" / "big" / "data"
    helpers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            helpers |= _descendants(process.pid)
            if len(helpers) >= 3 and list(data.glob(".prepared-*")):  # fork server, 2 workers
                break
            time.sleep(0.02)
        assert process.poll() is None, "prepared before it could be stopped"
        if stop == "ctrl-c":  # as in a terminal: SIGINT to the whole process group
            os.killpg(process.pid, signal.SIGINT)
        else:  # the main process alone dies at once (SIGKILL, the OOM killer)
            process.kill()
        _, stderr = process.communicate(timeout=60)
        if stop == "ctrl-c":
            assert process.returncode == 130 and "aborted" in stderr, stderr
            assert "Traceback" not in stderr  # the workers leave Ctrl-C to the main process
            assert not list(data.glob("*prepared-*"))
        assert not list(data.glob("prepared-*"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in helpers):
            time.sleep(0.05)
        assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists()]
    finally:  # a failure must not leave processes behind (and a reused pid is left alone)
        if process.poll() is None:
            process.kill()
        for pid in helpers:
            with contextlib.suppress(OSError):
                if "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)


def test_data_error_is_one_clear_line(tmp_path):
    config = tmp_path / "missing.yaml"
    config.write_text(f"data:\n  source:\n    type: text\n    paths: [{tmp_path}/none.txt]\n")
    result = run("data", "prepare", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "none.txt" in result.stderr and "Traceback" not in result.stderr


def test_doctor_reports_torch_kernels_and_plugins():
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    assert findings["torch"]["installed"] and findings["torch"]["threads"] >= 1
    kernels = findings["kernels"]
    if kernels["built"]:
        assert (kernels["module"], kernels["simd"]) in (
            ("lmforge._C_avx512", "avx512"), ("lmforge._C", "avx2"), ("lmforge._C", "default"))
        assert set(kernels["auto"]) == {"attention", "lstm", "lstm_step"}
        assert kernels["auto"]["attention"].startswith("fused")
    else:
        assert kernels["error"]
    assert findings["failed_plugins"] == []


def test_plugin_can_add_a_command(tmp_path):
    make_distribution(tmp_path, "hello-plugin", "0.1", {"hello": "hello_mod"},
                      {"hello_mod": COMMAND_PLUGIN})
    result = run("hello", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from a plugin"


def test_a_standalone_command_follows_the_plugin_switches():
    """generate and predict run before the plugin host loads; disabling their plugin still
    removes them."""
    assert run("generate", "--help").returncode == 0
    done = run("generate", "x", env={"LMFORGE_DISABLE_PLUGINS": "lmforge.plugins.tasks.commands"})
    assert done.returncode == 2
    assert "No such command 'generate'" in done.stderr
